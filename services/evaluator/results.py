"""What an evaluation produces: per-subject metrics with their settings, and per-item records.

These models are the contract between the metric code, the gate, the reports and the registry. A
metric that could not be computed is still present, with ``error`` set and ``value`` None, so the
gate can fail closed on it instead of never hearing of it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from services.evaluator import stats
from services.evaluator.contamination import ContaminationReport
from services.evaluator.metrics import catalogue
from services.evaluator.metrics.catalogue import (
    ItemValue as ItemValue,  # re-exported: the per-item value type lives with the registry
)
from services.evaluator.metrics.catalogue import Kind, MetricSpec

# "base": the bare base model, scored only for metrics compared with it (``RunResult.reference``).
Role = Literal["candidate", "baseline", "base"]


class MetricResult(BaseModel):
    name: str
    value: float | None
    higher_is_better: bool
    kind: Kind
    statistic: str = "mean"
    paired: bool = True
    n: int = 0
    ci_low: float | None = None
    ci_high: float | None = None
    settings: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.value is not None and math.isfinite(self.value)

    def spec(self) -> MetricSpec:
        return catalogue.lookup(self.name) or catalogue.lmeval_spec(
            self.name, self.higher_is_better, self.kind, self.statistic, self.paired
        )


class ItemResult(BaseModel):
    item_id: str
    item_hash: str
    output: str = ""
    values: dict[str, ItemValue] = Field(default_factory=dict)
    extra: dict[str, Any] = Field(default_factory=dict)


class SubjectResult(BaseModel):
    role: Role
    model: str
    identity: dict[str, Any] = Field(default_factory=dict)
    # A few-shot base: its K examples, seed and their hash (fewshot.describe).
    fewshot: dict[str, Any] | None = None
    metrics: dict[str, MetricResult] = Field(default_factory=dict)
    items: list[ItemResult] = Field(default_factory=list)

    def item_map(self) -> dict[str, ItemResult]:
        return {item.item_id: item for item in self.items}

    def add_metric(
        self,
        spec: MetricSpec,
        values: Mapping[str, ItemValue],
        settings: dict[str, Any],
        *,
        confidence: float = 0.95,
    ) -> MetricResult:
        """Record a metric from per-item values; its corpus value and CI come from the items."""
        ids = [i for i, v in values.items() if v is not None]
        arr = np.array([_as_row(values[i]) for i in ids], dtype=np.float64) if ids else None
        value: float | None = None
        low = high = None
        error = None
        if arr is None or arr.size == 0:
            error = "no item produced a value"
        elif not np.all(np.isfinite(arr)):
            error = "NaN or infinite per-item value"
        else:
            if spec.kind == "binary":
                succ = int(arr[:, 0].sum())
                value = succ / len(ids)
                low, high = stats.wilson_interval(succ, len(ids), confidence)
            else:
                value, low, high = stats.bootstrap_interval(
                    arr, statistic=spec.statistic, confidence=confidence
                )
            if not math.isfinite(value):
                error = "metric value is NaN or infinite"
        items = self.item_map()
        for item_id, v in values.items():
            if item_id in items:
                items[item_id].values[spec.name] = _normalise(v)
        result = MetricResult(
            name=spec.name,
            value=value if error is None else None,
            higher_is_better=spec.higher_is_better,
            kind=spec.kind,
            statistic=spec.statistic,
            paired=spec.paired,
            n=len(ids),
            ci_low=low if error is None else None,
            ci_high=high if error is None else None,
            settings=settings,
            error=error,
        )
        self.metrics[spec.name] = result
        return result

    def add_error(self, spec: MetricSpec, error: str, settings: dict[str, Any]) -> None:
        self.metrics[spec.name] = MetricResult(
            name=spec.name,
            value=None,
            higher_is_better=spec.higher_is_better,
            kind=spec.kind,
            statistic=spec.statistic,
            paired=spec.paired,
            settings=settings,
            error=error,
        )


def _normalise(value: ItemValue) -> ItemValue:
    if isinstance(value, list):
        return [float(x) for x in value]
    return None if value is None else float(value)


def _as_row(value: ItemValue) -> list[float]:
    if isinstance(value, list):
        return [float(x) for x in value]
    return [float(value)] if value is not None else [math.nan]


def paired_arrays(
    candidate: SubjectResult, baseline: SubjectResult, metric: str
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Per-item values of ``metric`` for items both subjects scored on identical content."""
    base_items = baseline.item_map()
    ids: list[str] = []
    cand_rows: list[list[float]] = []
    base_rows: list[list[float]] = []
    for item in candidate.items:
        other = base_items.get(item.item_id)
        if other is None or other.item_hash != item.item_hash:
            continue
        cv, bv = item.values.get(metric), other.values.get(metric)
        if cv is None or bv is None:
            continue
        ids.append(item.item_id)
        cand_rows.append(_as_row(cv))
        base_rows.append(_as_row(bv))
    return ids, np.array(cand_rows, dtype=np.float64), np.array(base_rows, dtype=np.float64)


class JudgeReliability(BaseModel):
    judge_model: str
    endpoint: str
    prompt_version: str
    prompt_sha256: str
    pairs: int = 0
    flips: int = 0
    flip_rate: float | None = None
    first_position_rate: float | None = None
    anchors: int = 0
    anchor_accuracy: float | None = None
    # Judge replies read (both orders of each pair, each rubric score, both orders of each anchor)
    # and those that held no rating or verdict; old summaries without them read as zero / None.
    replies: int = 0
    parse_failures: int = 0
    parse_failure_rate: float | None = None
    parse_failures_by_mode: dict[str, int] = Field(default_factory=dict)


class RunResult(BaseModel):
    """Everything a run produced; stored as the run's summary (items go to their own table)."""

    run_id: str
    candidate: SubjectResult
    baseline: SubjectResult | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    suite: dict[str, Any] = Field(default_factory=dict)
    judge: JudgeReliability | None = None
    loss_curve: list[dict[str, Any]] = Field(default_factory=list)
    timings: dict[str, float] = Field(default_factory=dict)
    gate: dict[str, Any] | None = None
    versions: dict[str, str] = Field(default_factory=dict)
    # Set when the contamination check ran: the evaluation items found in the training data.
    contamination: ContaminationReport | None = None
    # The candidate's bare base model, for metrics whose catalogue entry says
    # ``compare_with="base"``; scored only when neither candidate nor baseline is that model.
    reference: SubjectResult | None = None

    def subjects(self) -> list[SubjectResult]:
        return [s for s in (self.candidate, self.baseline) if s is not None]

    def compared_with(self, metric: str) -> SubjectResult | None:
        """The subject the gate holds ``metric`` against: the baseline, or the bare base model."""
        spec = catalogue.lookup(metric)
        if spec is None or spec.compare_with == "baseline":
            return self.baseline
        base = self.candidate.identity.get("base_model")
        # Same known base, no adapter: a result without identity is never taken for the base.
        bare = [
            s
            for s in (self.reference, self.baseline, self.candidate)
            if s is not None and base and s.identity.get("base_model") == base
        ]
        return next((s for s in bare if s.identity.get("adapter") is None), None)
