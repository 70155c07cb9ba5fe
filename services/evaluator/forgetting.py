"""Forgetting check: general multiple-choice questions scored for base and candidate.

A LoRA adapter trained on a narrow task can lose general abilities (catastrophic forgetting). The
check scores a general question set by log-likelihood, the way lm-eval scores multiple choice: the
choice whose continuation ``" <choice>"`` after ``"Question: ...\\nAnswer:"`` has the highest
total log-probability is the model's answer. Per item pass/fail, so the gate can compare candidate
and baseline with McNemar on the same questions (``forgetting.accuracy``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from services.evaluator import perplexity
from services.evaluator.local_model import LocalModels
from services.evaluator.metrics import catalogue
from services.evaluator.results import ItemResult, SubjectResult
from services.evaluator.subjects import Subject
from shared.errors import NotFoundError, ValidationError

PROMPT = "Question: {question}\nAnswer:"


@cache
def load(path: str) -> tuple[dict[str, Any], ...]:
    p = Path(path)
    if not p.is_file():
        raise NotFoundError(f"forgetting question set {p} does not exist", param="forgetting")
    rows = []
    for n, line in enumerate(p.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not {"question", "choices", "answer"} <= set(row) or not (
            0 <= int(row["answer"]) < len(row["choices"])
        ):
            raise ValidationError(f"{p} line {n}: need question, choices and a valid answer index")
        row.setdefault("id", f"line-{n}")
        rows.append(row)
    return tuple(rows)


def count(path: str) -> int:
    return len(load(path))


def run(
    models: LocalModels,
    subject: Subject,
    result: SubjectResult,
    path: str,
    progress: Callable[[int], None],
    confidence: float,
) -> None:
    rows = load(path)
    tok = models.tokenizer
    seqs: list[perplexity.TokenSeq] = []
    owners: list[tuple[int, int]] = []
    for r, row in enumerate(rows):
        ctx = tok(PROMPT.format(question=row["question"]), add_special_tokens=False)["input_ids"]
        for c, choice in enumerate(row["choices"]):
            cont = tok(" " + str(choice), add_special_tokens=False)["input_ids"]
            seqs.append(perplexity.TokenSeq([*ctx, *cont], len(ctx), 0))
            owners.append((r, c))
    windows = perplexity.plan_windows(seqs, 4096, 4096)
    per_row = len(seqs) / max(len(rows), 1)
    with models.activate(subject) as model:
        nll = perplexity.score_windows(
            model,
            seqs,
            windows,
            pad_id=int(tok.pad_token_id),
            batch_tokens=4096,
            progress=lambda k: progress(max(1, round(k / per_row))),
        )
    best: dict[int, tuple[float, int]] = {}
    for (r, c), value in zip(owners, nll, strict=True):
        if r not in best or value < best[r][0]:
            best[r] = (value, c)
    values: dict[str, Any] = {}
    for r, row in enumerate(rows):
        item_id = f"forgetting:{row['id']}"
        values[item_id] = float(best[r][1] == int(row["answer"]))
        result.items.append(
            ItemResult(
                item_id=item_id, item_hash=_hash(row), output=str(row["choices"][best[r][1]])
            )
        )
    result.add_metric(
        catalogue.spec("forgetting.accuracy"),
        values,
        {
            "set": Path(path).name,
            "n_questions": len(rows),
            "prompt": PROMPT,
            "scoring": "sum log-prob of ' <choice>' (lm-eval multiple_choice acc)",
        },
        confidence=confidence,
    )


def _hash(row: dict[str, Any]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(row, sort_keys=True).encode()).hexdigest()
