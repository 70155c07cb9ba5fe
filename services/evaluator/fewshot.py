"""Few-shot base baseline: the base model prompted with K worked examples before every prompt.

The curriculum's first red flag before fine-tuning is "you haven't tried few-shot prompting
first". A first release compared only with the zero-shot base can pass on what a prompt alone
would have given; ``baseline: base+fewshot:K`` asks the gate whether the adapter beats the base
model shown K examples of the task.

The examples are drawn, seeded, from the candidate's own training rows (the rows it was trained
on, not a split held out of them), and never from the evaluation set: a row the contamination
check would match with any evaluation item (same text or prompt after normalisation, or most of
its words in shared n-grams) is not drawn. Each example's turns go before the item's own turns,
after the item's system message, so the base sees the task's instruction once and then K solved
cases as earlier turns of the same conversation (the shape a chat model was tuned on).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from services.evaluator import contamination
from services.evaluator.data import EvalItem
from services.evaluator.subjects import Subject
from shared.datasets.records import Example, Message
from shared.errors import ValidationError
from shared.registry.names import BASE_BASELINE, parse_fewshot

# One seed for every run, so a baseline's examples (and its cached answers) are the same from
# run to run of one candidate; a policy that wants others names another K.
SEED = 0


@dataclass(frozen=True)
class Request:
    """``<base>+fewshot:K`` resolved to its bare base model, before examples are drawn (they need
    the evaluation items, loaded later)."""

    base: Subject
    k: int

    @property
    def token(self) -> str:
        return label(self.base.base.name, self.k)


def label(base_name: str, k: int) -> str:
    return f"{base_name}+fewshot:{k}"


def parse(name: str, param: str = "baseline") -> tuple[str, int] | None:
    """(base name or ``base``, K) of a few-shot name, else None."""
    return parse_fewshot(name, param)


def _shot(example: Example) -> tuple[Message, ...]:
    """The example's non-system turns, ending with its answer (a preference pair's chosen)."""
    turns = tuple(m for m in example.messages if m.role != "system")
    if example.chosen is not None:
        turns += (Message("assistant", example.chosen),)
    return turns


def _usable(example: Example) -> bool:
    turns = _shot(example)
    return len(turns) >= 2 and turns[-1].role == "assistant" and turns[0].role == "user"


def draw(
    examples: Sequence[Example], k: int, items: Sequence[EvalItem], seed: int = SEED
) -> tuple[tuple[Message, ...], ...]:
    """K training examples as turns, none overlapping an evaluation item."""
    index = contamination.Index(
        [
            contamination.TrainingRow(i.item_id, i.location, *contamination.item_texts(i))
            for i in items
        ]
    )
    pool = []
    for example in examples:
        if not _usable(example):
            continue
        row = contamination.training_row(example)
        prompt = contamination.normalise(row.prompt)
        hit = index.match(contamination.normalise(row.text), prompt)
        if hit is None or (hit[0] == "ngram" and hit[2] < contamination.THRESHOLD):
            pool.append(example)
    if len(pool) < k:
        raise ValidationError(
            f"a {k}-shot baseline needs {k} training examples of the candidate that are not in the "
            f"evaluation data and end with an assistant reply; {len(pool)} of {len(examples)} are",
            param="baseline",
        )
    chosen = random.Random(seed).sample(sorted(pool, key=lambda e: e.id), k)
    return tuple(_shot(e) for e in chosen)


def subject(request: Request, shots: tuple[tuple[Message, ...], ...]) -> Subject:
    return replace(
        request.base,
        label=request.token,
        requested=label(BASE_BASELINE, request.k),
        shots=shots,
    )


def prompted(subject: Subject, items: Sequence[EvalItem]) -> list[EvalItem]:
    """The items as this subject is asked them: the examples' turns after the item's system
    message (if any) and before its own turns. Ids stay, so answers pair with the candidate's."""
    if not subject.shots:
        return list(items)
    context = tuple(m for shot in subject.shots for m in shot)
    out = []
    for item in items:
        if item.is_text:
            out.append(item)
            continue
        head = tuple(m for m in item.messages[:1] if m.role == "system")
        messages = (*head, *context, *item.messages[len(head) :])
        out.append(replace(item, messages=messages))
    return out


def describe(subject: Subject) -> dict[str, Any]:
    """What the report shows about the examples a few-shot subject was given."""
    return {
        "k": len(subject.shots),
        "seed": SEED,
        "sha256": subject.shots_sha256,
        "examples": [[m.to_dict() for m in shot] for shot in subject.shots],
    }
