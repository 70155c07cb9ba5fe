"""Dataset formats, loading, cleaning, validation and chat rendering with label masks.

Typical use::

    loaded = load_examples("train.jsonl")                 # raises ValidationError listing all problems
    renderer = ChatRenderer(tokenizer)                    # the base model's own chat template
    data = prepare(loaded, None, renderer, kind="sft", max_length=1024, seed=42)
    data.raise_for_errors()                                # semantic validation (stop tokens, ...)
    data.train_rendered[0].input_ids, data.train_rendered[0].labels
"""

from shared.datasets.cleaning import clean_text, near_duplicates
from shared.datasets.loading import LoadedFile, Problems, load_examples, parse_file
from shared.datasets.prepare import PreparedData, prepare, split_validation
from shared.datasets.records import Example, Location, Message
from shared.datasets.render import (
    IGNORE_INDEX,
    ChatRenderer,
    RenderedExample,
    RenderedPair,
    stop_token_ids,
)

__all__ = [
    "IGNORE_INDEX",
    "ChatRenderer",
    "Example",
    "LoadedFile",
    "Location",
    "Message",
    "PreparedData",
    "Problems",
    "RenderedExample",
    "RenderedPair",
    "clean_text",
    "load_examples",
    "near_duplicates",
    "parse_file",
    "prepare",
    "split_validation",
    "stop_token_ids",
]
