"""Metric dispatch: turn what a component produced per item into recorded metrics.

Every metric is looked up in the registry (``metrics/catalogue.py``); the scorers and definitions
of generation and perplexity metrics come from their entries, so there is no branch per metric.
"""

from __future__ import annotations

import math
from typing import Any, cast

from services.evaluator import fewshot, perplexity
from services.evaluator.data import EvalItem
from services.evaluator.metrics import catalogue
from services.evaluator.metrics.catalogue import MetricSpec, ScoreOptions
from services.evaluator.results import ItemResult, MetricResult, Role, SubjectResult
from services.evaluator.subjects import Subject


def new_subject(role: str, subject: Subject, items: list[EvalItem]) -> SubjectResult:
    return SubjectResult(
        role=cast(Role, role),
        model=subject.label,
        identity=subject.identity(),
        fewshot=fewshot.describe(subject) if subject.shots else None,
        items=[ItemResult(item_id=i.item_id, item_hash=i.item_hash) for i in items],
    )


def generation_metrics(
    result: SubjectResult,
    items: list[EvalItem],
    outputs: list[str],
    metrics: list[str],
    settings: dict[str, Any],
    *,
    rouge_stemmer: bool,
    confidence: float,
) -> None:
    by_id = result.item_map()
    for item, out in zip(items, outputs, strict=True):
        by_id[item.item_id].output = out
    options = ScoreOptions(rouge_stemmer=rouge_stemmer)
    for name in metrics:
        spec = catalogue.spec(name)
        assert spec.score is not None and spec.definition is not None  # test_registry checks it
        values = {i.item_id: spec.score(o, i, options) for i, o in zip(items, outputs, strict=True)}
        definition = spec.definition(options)
        result.add_metric(spec, values, {**definition, **settings}, confidence=confidence)


def perplexity_metrics(
    result: SubjectResult,
    items: list[EvalItem],
    scores: list[perplexity.ItemNLL],
    settings: dict[str, Any],
    confidence: float,
) -> None:
    pairs = list(zip(items, scores, strict=True))
    for item, s in pairs:
        rec = result.item_map()[item.item_id]
        rec.extra["nll"] = s.nll
        rec.extra["n_tokens"] = s.n_tokens
        rec.extra["n_bytes"] = s.n_bytes
    options = ScoreOptions()
    for name in catalogue.metrics_of("perplexity"):
        spec = catalogue.spec(name)
        assert spec.score is not None and spec.definition is not None  # test_registry checks it
        values = {i.item_id: spec.score(s, options) for i, s in pairs}
        definition = spec.definition(options)
        result.add_metric(spec, values, {**definition, **settings}, confidence=confidence)


def scalar_metric(spec: MetricSpec, value: float, n: int, settings: dict[str, Any]) -> MetricResult:
    """A metric measured once for the run (the judge's flip rate), not from per-item values."""
    return MetricResult(
        name=spec.name,
        value=value if math.isfinite(value) else None,
        higher_is_better=spec.higher_is_better,
        kind=spec.kind,
        statistic=spec.statistic,
        paired=spec.paired,
        n=n,
        settings=settings,
        error=None if math.isfinite(value) else "NaN",
    )
