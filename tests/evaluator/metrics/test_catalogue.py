"""The metric catalogue is complete: every metric scores, the runner and shipped files use it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from services.evaluator.data import EvalItem
from services.evaluator.metrics import catalogue
from services.evaluator.metrics.catalogue import (
    CATALOGUE,
    COMPONENTS,
    ScoreOptions,
)
from services.evaluator.perplexity import ItemNLL
from services.evaluator.results import ItemResult, SubjectResult
from services.evaluator.scoring import generation_metrics, perplexity_metrics
from services.evaluator.suite import SUITES_DIR, load_suite
from shared.datasets.records import Message
from shared.errors import ValidationError

ROOT = Path(__file__).resolve().parents[3]
SHIPPED_POLICIES = sorted(
    [
        *(ROOT / "services" / "evaluator" / "policies").glob("*.yaml"),
        *(ROOT / "examples").rglob("policy*.yaml"),
    ]
)
ITEMS = [
    EvalItem("a", (Message("user", "give json"),), '{"name": "Ada", "age": 36}', "t:1"),
    EvalItem("b", (Message("user", "say hi"),), "hello there", "t:2"),
]
OUTPUTS = ['{"name": "Ada", "age": 36}', "hello"]


def test_the_registry_is_complete() -> None:
    assert catalogue.problems() == []


def _usable(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, list) and all(isinstance(x, float) for x in value)


@pytest.mark.parametrize(
    "name", [n for n, s in CATALOGUE.items() if COMPONENTS[s.component].scores_per_item]
)
def test_each_scored_metric_scores_an_item(name: str) -> None:
    spec = CATALOGUE[name]
    assert spec.score is not None and spec.definition is not None
    options = ScoreOptions()
    if spec.component == "generation":
        values = [spec.score(o, i, options) for i, o in zip(ITEMS, OUTPUTS, strict=True)]
    else:
        values = [spec.score(ItemNLL(nll=12.0, n_tokens=6, n_bytes=20), options)]
    assert all(_usable(v) for v in values), values
    json.dumps(spec.definition(options))  # recorded with every value: must be JSON


def test_the_runner_dispatches_every_scored_metric_through_the_registry() -> None:
    result = SubjectResult(
        role="candidate",
        model="m",
        items=[ItemResult(item_id=i.item_id, item_hash=i.item_hash) for i in ITEMS],
    )
    names = catalogue.metrics_of("generation")
    generation_metrics(result, ITEMS, OUTPUTS, names, {}, rouge_stemmer=False, confidence=0.95)
    nll = [ItemNLL(nll=12.0, n_tokens=6, n_bytes=20), ItemNLL(nll=9.0, n_tokens=3, n_bytes=12)]
    perplexity_metrics(result, ITEMS, nll, {}, 0.95)
    assert set(result.metrics) == set(names) | set(catalogue.metrics_of("perplexity"))
    assert all(m.ok for m in result.metrics.values()), result.metrics


@pytest.mark.parametrize("path", sorted(SUITES_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_suites_name_registered_metrics(path: Path) -> None:
    suite = load_suite(str(path))
    for name in suite.generation.metrics:
        assert CATALOGUE[name].component == "generation"


@pytest.mark.parametrize("path", SHIPPED_POLICIES, ids=lambda p: p.name)
def test_shipped_policies_name_registered_metrics(path: Path) -> None:
    names = yaml.safe_load(path.read_text())["metrics"]
    assert names and all(catalogue.is_known(name) for name in names)


def test_an_unknown_metric_is_a_clear_error_naming_the_valid_ones() -> None:
    with pytest.raises(
        ValidationError, match=r"unknown metric 'bleurt'; known metrics: .*exact_match"
    ):
        catalogue.spec("bleurt")
    with pytest.raises(ValidationError, match="known generation metrics: exact_match"):
        raise catalogue.unknown_metric("perplexity", "generation")
    assert catalogue.component_of("lmeval.mmlu.acc") == "lmeval"
