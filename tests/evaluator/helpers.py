"""Builders for synthetic evaluation results (no model needed), and a row counter for the
registry."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select

from services.evaluator.metrics.catalogue import CATALOGUE
from services.evaluator.results import (
    ItemResult,
    ItemValue,
    JudgeReliability,
    RunResult,
    SubjectResult,
)
from shared.registry.db import Registry


def subject(role: str, model: str, per_item: dict[str, Sequence[ItemValue]]) -> SubjectResult:
    n = len(next(iter(per_item.values())))
    items = [
        ItemResult(item_id=f"i{k}", item_hash=hashlib.sha256(f"i{k}".encode()).hexdigest())
        for k in range(n)
    ]
    subj = SubjectResult(role=role, model=model, items=items)
    for name, values in per_item.items():
        subj.add_metric(CATALOGUE[name], {f"i{k}": v for k, v in enumerate(values)}, {})
    return subj


def run(
    cand: dict[str, Sequence[ItemValue]],
    base: dict[str, Sequence[ItemValue]] | None = None,
    judge: JudgeReliability | None = None,
) -> RunResult:
    return RunResult(
        run_id="test",
        candidate=subject("candidate", "a@v2", cand),
        baseline=subject("baseline", "base", base) if base is not None else None,
        judge=judge,
    )


def count_rows(registry: Registry, model: Any) -> int:
    """How many rows the table of ``model`` holds."""
    with registry.session() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)
