"""spec.check (through catalogue.problems): control cases, an entry that lacks a piece is reported."""

from __future__ import annotations

from dataclasses import replace

from services.evaluator.metrics import catalogue
from services.evaluator.metrics.catalogue import CATALOGUE, COMPONENTS, ComponentSpec, MetricSpec


def test_a_metric_without_its_scorer_is_reported() -> None:
    broken = {
        **CATALOGUE,
        "fake": MetricSpec("fake", "generation", True, "binary", description="x"),
    }
    assert catalogue.problems(broken) == [
        "metric fake: a generation metric needs a score and a definition"
    ]


def test_broken_pieces_are_each_reported() -> None:
    base = CATALOGUE["exact_match"]
    broken = {
        "a": replace(base, name="a", component="nowhere"),
        "b": replace(base, name="b", statistic="median"),
        "c": replace(base, name="c", description=""),
        "d": replace(CATALOGUE["judge.score"], name="d", score=lambda o, i, opt: 1.0),
        "e": replace(base, name="e", judge_mode="rubric"),
    }
    found = "\n".join(catalogue.problems(broken))
    for expected in (
        "metric a: unknown component 'nowhere'",
        "metric b: statistic 'median'",
        "metric c: key, name and description",
        "metric d: judge computes its metrics itself",
        "metric e: judge_mode 'rubric' is for judge metrics only",
    ):
        assert expected in found


def test_a_component_without_metrics_or_module_is_reported() -> None:
    ghost = ComponentSpec("ghost", "a component nobody wrote", "services.evaluator.no_such_module")
    found = catalogue.problems(CATALOGUE, {**COMPONENTS, "ghost": ghost})
    assert found == [
        "component ghost: needs a stage label and a units function",
        "component ghost: module services.evaluator.no_such_module does not exist",
        "component ghost: produces no registered metric",
    ]
