"""Builders for run plans without a model: a base model that is never loaded, subjects on it,
chat items and a :class:`RunPlan` over them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.evaluator.data import EvalData, EvalItem
from services.evaluator.plan import RunPlan
from services.evaluator.subjects import Subject
from services.evaluator.suite import Suite
from shared.basemodel import ResolvedBaseModel
from shared.datasets.records import Message

BASE = ResolvedBaseModel("m", Path("/nonexistent"), "0" * 64, "test")
CANDIDATE = Subject(label="a@v2", base=BASE, version_id="a@v2", adapter_sha256="1" * 64)
BARE = Subject(label="m", base=BASE, requested="base")


def items(n: int, prefix: str = "q") -> list[EvalItem]:
    return [
        EvalItem(f"{prefix}{k}", (Message("user", f"question {k}"),), f"answer {k}", f"t:{k}")
        for k in range(n)
    ]


def plan(
    suite: Suite | dict[str, Any] | None = None,
    *,
    n: int = 4,
    baseline: Subject | None = BARE,
    data: list[EvalItem] | None = None,
    **extra: Any,
) -> RunPlan:
    return RunPlan(
        run_id="t",
        candidate=CANDIDATE,
        baseline=baseline,
        data=EvalData("t.jsonl", "0" * 64, data if data is not None else items(n)),
        suite=suite if isinstance(suite, Suite) else Suite.model_validate(suite or {}),
        **extra,
    )
