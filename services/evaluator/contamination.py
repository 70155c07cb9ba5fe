"""Contamination check: which evaluation items the candidate already saw in its training data.

A gate on memorised items measures recall, not skill. The trainer keeps its own validation split
clean, but a user's evaluation set is never checked against the candidate's training rows, so this
component compares every evaluation item with the training data named in the candidate's lineage
and reports ``contamination.rate``, the share of items that overlap (lower is better; a policy
bounds it with ``max: 0``). It describes the candidate's data, so it is not paired with a baseline.

Text is normalised the same way on both sides: NFKC, casefold, punctuation dropped and whitespace
collapsed (the word tokens of ``metrics.task.words``; CJK characters count as words). System
messages are left out: they are shared instructions, not the content an item tests. An item is

* ``exact``: its normalised text (prompt turns + reference) equals a training row's (hash lookup);
* ``exact_prompt``: its prompt equals a training row's prompt (the model saw the input, with
  whatever answer it was trained on);
* ``ngram``: at least ``threshold`` of its words lie inside word ``n``-grams it shares with one
  training row. Defaults: ``n = 8`` and ``threshold = 0.8``. 8-grams as in PaLM's contamination
  study: fine-tuning items are often 20-60 words, too short for GPT-3's 13-grams, where one changed
  word removes up to 13 of an item's few 13-grams. Counting covered *words* rather than shared
  n-grams (Llama 2's "dirty" rule: 80% of tokens inside matched spans) keeps a copy with one word
  changed flagged (only that word is uncovered), while a paraphrase that keeps a phrase or two
  covers far less. Items shorter than ``n`` words can only match exactly; the run records how many.

The training side is indexed once: a dict from normalised-text hash to row (exact), and a sorted
array of n-gram hashes with the row holding each (n-grams). Each item looks up its own n-grams,
counts hits per row, and computes the exact coverage only for the few rows with most hits, so 10k
rows x 1k items costs about the time to read the rows once (``bench/contamination.py``), not a
scan of every pair.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from services.evaluator.data import EvalItem
from services.evaluator.metrics import catalogue
from services.evaluator.metrics.task import _CJK_CLASS, words
from shared.datasets.records import Example, Message

if TYPE_CHECKING:  # results.py stores this module's report, so it imports this one
    from services.evaluator.results import SubjectResult

NGRAM = 8
THRESHOLD = 0.8
# An n-gram held by more training rows than this is a template (a shared instruction), not evidence
# that an item was copied; it is still counted in coverage, but not used to find candidate rows.
COMMON_ROWS = 256
CANDIDATES = 4  # rows per item whose coverage is computed exactly (those sharing most n-grams)
METRIC = "contamination.rate"

MatchKind = Literal["exact", "exact_prompt", "ngram"]


@dataclass(frozen=True)
class TrainingRow:
    """One training row as the check sees it: where it is, and its prompt and full text."""

    row_id: str
    location: str
    prompt: str
    text: str


@dataclass(frozen=True)
class TrainingData:
    """The rows the candidate was trained on, and how the run names their source."""

    source: dict[str, Any]
    rows: list[TrainingRow]


class Overlap(BaseModel):
    """One evaluation item that overlaps a training row."""

    item_id: str
    item_index: int
    kind: MatchKind
    overlap: float  # share of the item's words covered by shared n-grams (1.0 for exact)
    shared_ngrams: int = 0
    training_row: str
    training_location: str
    item_text: str = ""  # the start of the item's normalised text, for the report


class ContaminationReport(BaseModel):
    """What the check did and found; stored with the run and shown in its reports."""

    training: dict[str, Any] = Field(default_factory=dict)
    n_items: int = 0
    n_training_rows: int = 0
    n_short_items: int = 0  # fewer words than n: only an exact match can flag them
    ngram: int = NGRAM
    threshold: float = THRESHOLD
    rate: float | None = None
    overlaps: list[Overlap] = Field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None


_WORDS = re.compile(r"\w+")
_CJK = re.compile(_CJK_CLASS)


def normalise(text: str) -> list[str]:
    """NFKC, casefold, punctuation dropped, whitespace collapsed: the words both sides compare.

    The same tokens as ``metrics.task.words``; text without CJK characters (nearly all of it) takes
    one plain pass for runs of word characters, several times faster than that pattern's
    per-character CJK test.
    """
    folded = unicodedata.normalize("NFKC", text).casefold()
    if _CJK.search(folded) is None:
        return _WORDS.findall(folded)
    return words(text)


def _key(tokens: Sequence[str]) -> bytes:
    return hashlib.blake2b(" ".join(tokens).encode(), digest_size=16).digest()


def _content(messages: Sequence[Message]) -> list[str]:
    # System turns are shared instructions; comparing them would flag every templated item.
    return [m.content for m in messages if m.role != "system"]


def item_texts(item: EvalItem) -> tuple[str, str]:
    """(prompt, full text) of an evaluation item: its non-system turns, then its reference."""
    prompt = _content(item.messages)
    return "\n".join(prompt), "\n".join([*prompt, item.reference])


def training_row(example: Example) -> TrainingRow:
    """A training example's prompt (turns before the last reply) and its full text."""
    turns = list(example.messages)
    if example.chosen is None and turns and turns[-1].role == "assistant":
        prompt = _content(turns[:-1])
    else:
        prompt = _content(turns)
    # The rejected reply of a preference pair is trained on too (pushed down), so it counts.
    replies = [t for t in (example.chosen, example.rejected) if t is not None]
    return TrainingRow(
        example.id,
        str(example.location),
        "\n".join(prompt),
        "\n".join([*_content(turns), *replies]),
    )


def _tokens(row: TrainingRow, prompt: list[str]) -> list[str]:
    # The text is the prompt, a newline (not a word character), then the replies: its words are
    # the prompt's words and then the rest's, so the prompt is not normalised twice.
    if row.text.startswith(row.prompt):
        return prompt + normalise(row.text[len(row.prompt) :])
    return normalise(row.text)


def _shingles(tokens: Sequence[str], n: int) -> list[int]:
    # zip over shifted views builds the n-gram tuples in C (stopping at the shortest view is the
    # point); Python's tuple hash is stable within the process, all an in-memory index needs.
    return list(map(hash, zip(*(tokens[k:] for k in range(n)), strict=False)))


class Index:
    """The training rows, indexed for exact and n-gram lookups.

    Exact keys live in dicts. The n-grams are one sorted int64 array of hashes with the row of each
    beside it (12 bytes per row n-gram, about 8 MB for 10k rows of 70 words): an item finds the
    rows holding each of its n-grams with ``searchsorted``, and a row's own n-grams are a slice of
    the unsorted array, so nothing per n-gram is a Python object.
    """

    def __init__(self, rows: Sequence[TrainingRow], n: int = NGRAM) -> None:
        if n < 1:
            raise ValueError("n must be at least 1")
        self.rows = list(rows)
        self.n = n
        self.exact: dict[bytes, int] = {}
        self.prompts: dict[bytes, int] = {}
        per_row: list[list[int]] = []
        for r, row in enumerate(self.rows):
            prompt = normalise(row.prompt)
            if prompt:
                self.prompts.setdefault(_key(prompt), r)
            tokens = _tokens(row, prompt)
            if tokens:
                self.exact.setdefault(_key(tokens), r)
            per_row.append(list(set(_shingles(tokens, n))))
        sizes = np.fromiter((len(h) for h in per_row), dtype=np.int64, count=len(per_row))
        self._offsets = np.concatenate([[0], np.cumsum(sizes)])
        self._row_hashes = np.fromiter(
            (h for hs in per_row for h in hs), dtype=np.int64, count=int(sizes.sum())
        )
        owners = np.repeat(np.arange(len(per_row), dtype=np.int32), sizes)
        order = np.argsort(self._row_hashes, kind="stable")
        self._hashes = self._row_hashes[order]
        self._owners = owners[order]

    @property
    def n_ngrams(self) -> int:
        """Distinct n-grams in the training rows."""
        return int(np.unique(self._hashes).size)

    def row_shingles(self, r: int) -> set[int]:
        return set(self._row_hashes[self._offsets[r] : self._offsets[r + 1]].tolist())

    def _candidates(self, grams: list[int]) -> list[int]:
        """The rows sharing most of the item's rare n-grams, best first."""
        keys = np.unique(np.array(grams, dtype=np.int64))
        left = np.searchsorted(self._hashes, keys, "left")
        right = np.searchsorted(self._hashes, keys, "right")
        held = right - left
        rare = (held > 0) & (held <= COMMON_ROWS)
        if rare.any():
            rows = np.concatenate(
                [self._owners[a:b] for a, b in zip(left[rare], right[rare], strict=True)]
            )
        elif held.any():
            # Only template n-grams: still look at a few of the rows holding the rarest one.
            k = int(np.argmin(np.where(held > 0, held, np.iinfo(np.int64).max)))
            rows = self._owners[left[k] : left[k] + CANDIDATES]
        else:
            return []
        found, counts = np.unique(rows, return_counts=True)
        best = np.argsort(-counts, kind="stable")[:CANDIDATES]
        return [int(r) for r in found[best]]

    def match(
        self, tokens: list[str], prompt: list[str]
    ) -> tuple[MatchKind, int, float, int] | None:
        """The best overlap of one item: (kind, training row, coverage, shared n-grams)."""
        if tokens and (r := self.exact.get(_key(tokens))) is not None:
            return "exact", r, 1.0, max(len(tokens) - self.n + 1, 0)
        if prompt and (r := self.prompts.get(_key(prompt))) is not None:
            return "exact_prompt", r, 1.0, 0
        grams = _shingles(tokens, self.n)
        if not grams:
            return None
        best: tuple[MatchKind, int, float, int] | None = None
        for r in self._candidates(grams):
            held = self.row_shingles(r)
            covered = [False] * len(tokens)
            shared = 0
            for i, h in enumerate(grams):
                if h in held:
                    shared += 1
                    covered[i : i + self.n] = [True] * self.n
            coverage = sum(covered) / len(tokens)
            if best is None or coverage > best[2]:
                best = ("ngram", r, coverage, shared)
        return best


def check(
    items: Sequence[EvalItem],
    index: Index,
    threshold: float = THRESHOLD,
    progress: Callable[[int], None] | None = None,
) -> tuple[dict[str, float], list[Overlap], int]:
    """Per-item 1.0 (overlaps) / 0.0 (clean), the overlapping items, and how many were too short
    for the n-gram test."""
    values: dict[str, float] = {}
    found: list[Overlap] = []
    short = 0
    for k, item in enumerate(items):
        prompt_text, full_text = item_texts(item)
        tokens = normalise(full_text)
        if len(tokens) < index.n:
            short += 1
        hit = index.match(tokens, normalise(prompt_text))
        flagged = hit is not None and (hit[0] != "ngram" or hit[2] >= threshold)
        values[item.item_id] = float(flagged)
        if hit is not None and flagged:
            kind, r, coverage, shared = hit
            row = index.rows[r]
            found.append(
                Overlap(
                    item_id=item.item_id,
                    item_index=k,
                    kind=kind,
                    overlap=round(coverage, 4),
                    shared_ngrams=shared,
                    training_row=row.row_id,
                    training_location=row.location,
                    item_text=" ".join(tokens)[:160],
                )
            )
        if progress is not None:
            progress(1)
    return values, found, short


def load_rows(path: Path, name: str) -> list[TrainingRow]:
    from shared.datasets.loading import load_examples

    return [training_row(e) for e in load_examples(path, source=name).examples]


def describe(n: int, threshold: float) -> dict[str, Any]:
    """The definition recorded with every value of the metric."""
    return {
        "normalize": "NFKC, casefold, punctuation dropped, whitespace collapsed; system turns left out",
        "exact": "normalised item text (prompt + reference) or prompt equals a training row's",
        "ngram": n,
        "threshold": threshold,
        "near_duplicate": f"at least {threshold:g} of the item's words inside word {n}-grams "
        "shared with one training row",
    }


def run(
    result: SubjectResult,
    items: Sequence[EvalItem],
    training: TrainingData | str,
    *,
    n: int = NGRAM,
    threshold: float = THRESHOLD,
    confidence: float = 0.95,
    progress: Callable[[int], None] | None = None,
) -> ContaminationReport:
    """Check ``items`` against the candidate's training rows and record ``contamination.rate``.

    ``training`` is the rows, or why there are none (no lineage, file not in the store): then the
    metric is recorded as an error, so a policy that bounds it fails closed instead of passing.
    """
    import time

    spec = catalogue.spec(METRIC)
    settings = describe(n, threshold)
    if isinstance(training, str):
        result.add_error(spec, training, settings)
        return ContaminationReport(n_items=len(items), ngram=n, threshold=threshold, error=training)
    started = time.perf_counter()
    index = Index(training.rows, n)
    values, found, short = check(items, index, threshold, progress)
    settings = {
        **settings,
        "training": training.source,
        "training_rows": len(training.rows),
        "short_items": short,
    }
    metric = result.add_metric(spec, values, settings, confidence=confidence)
    by_id = result.item_map()
    for overlap in found:
        if overlap.item_id in by_id:
            by_id[overlap.item_id].extra["contamination"] = overlap.model_dump(
                exclude={"item_id", "item_index", "item_text"}
            )
    return ContaminationReport(
        training=training.source,
        n_items=len(items),
        n_training_rows=len(training.rows),
        n_short_items=short,
        ngram=n,
        threshold=threshold,
        rate=metric.value,
        overlaps=found,
        seconds=round(time.perf_counter() - started, 3),
        error=metric.error,
    )
