"""Forgetting check: general multiple-choice questions scored for each subject and the base model.

A LoRA adapter trained on a narrow task can lose general abilities (catastrophic forgetting). The
check scores a general question set by log-likelihood, the way lm-eval scores multiple choice: the
choice whose continuation ``" <choice>"`` after ``"Question: ...\\nAnswer:"`` has the highest
total log-probability is the model's answer. Per item pass/fail, so the gate compares with McNemar
on the same questions (``forgetting.accuracy``). What was lost is measured against the candidate's
bare base model whatever the run's baseline (catalogue ``compare_with="base"``): the runner scores
the base too when no subject is the base (``RunResult.reference``), and the gate's line is then a
non-inferiority line against it, printed with its minimum detectable difference.

The shipped set (``tasks/general_mc.jsonl``, 418 items) was written for this project by
``tasks/build_general_mc.py`` from templates and hand-written facts; no external dataset.
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
    per_row = len(seqs) / max(len(rows), 1)
    with models.activate(subject) as model:
        nll = continuation_nll(
            model,
            seqs,
            pad_id=int(tok.pad_token_id),
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


def continuation_nll(
    model: Any,
    seqs: list[perplexity.TokenSeq],
    *,
    pad_id: int,
    batch_rows: int = 64,
    progress: Callable[[int], None] | None = None,
) -> list[float]:
    """Sum of NLL (nats) of each sequence's tokens from ``score_from`` on: what
    ``perplexity.score_windows`` gives for short sequences, several times faster here. Rows are
    left-padded so every continuation ends the row, and the model computes logits only for the
    last positions (``logits_to_keep``): the full-vocabulary logits of every prompt token were most
    of the time and memory of scoring a multiple-choice set."""
    import torch

    totals = [0.0] * len(seqs)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i].ids), reverse=True)
    for start in range(0, len(order), batch_rows):
        batch = order[start : start + batch_rows]
        width = len(seqs[batch[0]].ids)
        keep = max(len(seqs[i].ids) - seqs[i].score_from for i in batch) + 1
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, i in enumerate(batch):
            n = len(seqs[i].ids)
            ids[r, width - n :] = torch.tensor(seqs[i].ids)
            mask[r, width - n :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: count real tokens only
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep)
        logp = torch.log_softmax(out.logits.float(), dim=-1)  # (rows, keep, vocab)
        for r, i in enumerate(batch):
            n_cont = len(seqs[i].ids) - seqs[i].score_from
            # Token at column width-n_cont+j is predicted by the logits one column before it.
            cols = torch.arange(keep - 1 - n_cont, keep - 1)
            target = ids[r, width - n_cont :]
            totals[i] = -float(logp[r, cols, target].double().sum())
        if progress is not None:
            progress(len(batch))
    return totals


def _hash(row: dict[str, Any]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(row, sort_keys=True).encode()).hexdigest()
