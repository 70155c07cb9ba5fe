"""Render examples with the base model's own chat template and compute label masks.

The mask is found by diffing token ids, not by searching strings, so it works for any template:
for every assistant message ``i`` the conversation is rendered up to ``i`` with the generation
prompt and up to ``i + 1`` without it; the tokens between the two renderings are that assistant
turn. Inside the turn everything up to and including the last stop token (``<|im_end|>`` for ChatML)
is trained; what the template appends after it (a newline) belongs to the next turn's framing and
is not. A template that renders a prefix differently from the whole conversation is reported, never
silently masked wrong.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Protocol

from shared.datasets.records import Example, Message

IGNORE_INDEX = -100


class Tokenizer(Protocol):
    """The part of a transformers tokenizer the renderer uses."""

    chat_template: Any
    eos_token: Any
    eos_token_id: Any
    all_special_tokens: list[str]

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...
    def __call__(self, text: str, **kwargs: Any) -> Any: ...
    def convert_ids_to_tokens(self, ids: Any) -> Any: ...


@dataclass
class AssistantTurn:
    index: int
    start: int
    end: int  # exclusive; the trained span is [start, end)
    trained: bool
    has_stop: bool


@dataclass
class RenderedExample:
    """Token ids and labels of one supervised example (``labels`` is -100 where not trained)."""

    example_id: str
    input_ids: list[int]
    labels: list[int]
    turns: list[AssistantTurn] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    truncated: bool = False

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def n_trained(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


@dataclass
class RenderedPair:
    """Token counts of one preference example, rendered as DPO will see it."""

    example_id: str
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    problems: list[str] = field(default_factory=list)

    @property
    def n_tokens(self) -> int:
        return len(self.prompt_ids) + max(len(self.chosen_ids), len(self.rejected_ids))


def stop_token_ids(tokenizer: Any, generation_config: Any = None) -> set[int]:
    """The ids that end an assistant turn: the tokenizer's EOS plus the generation config's."""
    ids: set[int] = set()
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    eos = getattr(generation_config, "eos_token_id", None) if generation_config else None
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, list | tuple):
        ids.update(int(i) for i in eos)
    return ids


class ChatRenderer:
    """Renders conversations exactly as the serving engine will (template + tokenizer)."""

    def __init__(self, tokenizer: Any, stop_ids: set[int] | None = None) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("the tokenizer has no chat template; a chat model is required")
        self.tokenizer = tokenizer
        self.stop_ids = stop_ids or stop_token_ids(tokenizer)
        if not self.stop_ids:
            raise ValueError("the tokenizer defines no end-of-turn (EOS) token")
        specials = set(getattr(tokenizer, "all_special_tokens", []) or [])
        added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        specials.update(str(t) for t in added.values() if getattr(t, "special", False))
        self.special_tokens = sorted((s for s in specials if s), key=len, reverse=True)

    @property
    def template_sha256(self) -> str:
        return hashlib.sha256(str(self.tokenizer.chat_template).encode()).hexdigest()

    @property
    def stop_tokens(self) -> list[str]:
        return [str(t) for t in self.tokenizer.convert_ids_to_tokens(sorted(self.stop_ids))]

    def text(self, messages: list[Message], *, add_generation_prompt: bool) -> str:
        rendered = self.tokenizer.apply_chat_template(
            [m.to_dict() for m in messages],
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )
        return str(rendered)

    def encode(self, text: str) -> list[int]:
        # The template already writes every special token; vLLM's chat endpoint tokenizes the
        # rendered text the same way (no extra BOS), which keeps training and serving identical.
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def ids(self, messages: list[Message], *, add_generation_prompt: bool = False) -> list[int]:
        return self.encode(self.text(messages, add_generation_prompt=add_generation_prompt))

    def special_token_problems(self, example: Example) -> list[str]:
        """Special tokens typed into the text would be read as control tokens and break masks."""
        problems = []
        fields: list[tuple[str, str]] = [
            (f"messages[{i}].content", m.content) for i, m in enumerate(example.messages)
        ]
        fields += [
            (n, t) for n, t in (("chosen", example.chosen), ("rejected", example.rejected)) if t
        ]
        for name, text in fields:
            found = [tok for tok in self.special_tokens if tok in text]
            if found:
                problems.append(f"`{name}` contains the special token {found[0]!r}")
        return problems

    def render_sft(self, example: Example) -> RenderedExample:
        messages = list(example.messages)
        problems = self.special_token_problems(example)
        full = self.ids(messages)
        labels = [IGNORE_INDEX] * len(full)
        turns: list[AssistantTurn] = []
        for i, message in enumerate(messages):
            if message.role != "assistant":
                continue
            before = self.ids(messages[:i], add_generation_prompt=True)
            upto = self.ids(messages[: i + 1])
            if upto[: len(before)] != before or full[: len(upto)] != upto:
                problems.append(
                    f"`messages[{i}]`: the chat template renders this turn differently inside the "
                    "whole conversation, so its tokens cannot be masked reliably"
                )
                continue
            span = upto[len(before) :]
            stops = [j for j, tok in enumerate(span) if tok in self.stop_ids]
            end = len(before) + (stops[-1] + 1 if stops else len(span))
            turns.append(AssistantTurn(i, len(before), end, message.train, bool(stops)))
            if message.train:
                labels[len(before) : end] = full[len(before) : end]
        return RenderedExample(example.id, full, labels, turns, problems)

    def render_pair(self, example: Example) -> RenderedPair:
        assert example.chosen is not None and example.rejected is not None
        prompt = list(example.messages)
        problems = self.special_token_problems(example)
        prompt_ids = self.ids(prompt, add_generation_prompt=True)
        sides: list[list[int]] = []
        for name, reply in (("chosen", example.chosen), ("rejected", example.rejected)):
            ids = self.ids([*prompt, Message("assistant", reply)])
            if ids[: len(prompt_ids)] != prompt_ids:
                problems.append(f"`{name}`: the template renders the prompt differently with it")
            rest = ids[len(prompt_ids) :]
            if not any(tok in self.stop_ids for tok in rest):
                problems.append(f"`{name}` does not end with a stop token once rendered")
            sides.append(rest)
        return RenderedPair(example.id, prompt_ids, sides[0], sides[1], problems)
