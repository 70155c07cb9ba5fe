"""Metric dispatch: a subject's empty result, generation and perplexity metrics from what was
produced per item, and a metric measured once for the run."""

from __future__ import annotations

import math

import pytest

from services.evaluator.metrics import catalogue
from services.evaluator.perplexity import ItemNLL
from services.evaluator.scoring import (
    generation_metrics,
    new_subject,
    perplexity_metrics,
    scalar_metric,
)
from tests.evaluator import planning


def test_new_subject_holds_every_item_and_the_subjects_identity() -> None:
    items = planning.items(3)
    res = new_subject("candidate", planning.CANDIDATE, items)
    assert res.role == "candidate" and res.model == "a@v2"
    assert res.identity == planning.CANDIDATE.identity() and res.fewshot is None
    assert [(i.item_id, i.item_hash) for i in res.items] == [
        (i.item_id, i.item_hash) for i in items
    ]
    assert res.metrics == {}


def test_generation_metrics_record_outputs_and_each_asked_metric_with_its_settings() -> None:
    items = planning.items(4)
    res = new_subject("candidate", planning.CANDIDATE, items)
    outputs = ["answer 0", "answer 1", "wrong", "answer 3 and more"]
    generation_metrics(
        res,
        items,
        outputs,
        ["exact_match", "token_f1"],
        {"backend": "canned"},
        rouge_stemmer=False,
        confidence=0.9,
    )
    assert [i.output for i in res.items] == outputs
    assert set(res.metrics) == {"exact_match", "token_f1"}
    exact = res.metrics["exact_match"]
    assert exact.value == pytest.approx(0.5) and exact.n == 4
    assert [i.values["exact_match"] for i in res.items] == [1.0, 1.0, 0.0, 0.0]
    assert exact.settings["backend"] == "canned"
    definition = catalogue.spec("exact_match").definition
    assert definition is not None
    assert exact.settings.items() >= definition(catalogue.ScoreOptions()).items()
    f1 = res.metrics["token_f1"].value
    assert f1 is not None and 0.5 < f1 < 1.0
    # The confidence reaches the interval: 0.9 is narrower than 0.99.
    wide = new_subject("candidate", planning.CANDIDATE, items)
    generation_metrics(
        wide, items, outputs, ["exact_match"], {}, rouge_stemmer=False, confidence=0.99
    )
    low90, low99 = exact.ci_low, wide.metrics["exact_match"].ci_low
    assert low90 is not None and low99 is not None and low99 < low90


def test_perplexity_metrics_keep_the_counts_per_item_and_weight_by_tokens() -> None:
    items = planning.items(2)
    res = new_subject("baseline", planning.BARE, items)
    scores = [ItemNLL(nll=2.0, n_tokens=2, n_bytes=8), ItemNLL(nll=10.0, n_tokens=10, n_bytes=40)]
    perplexity_metrics(res, items, scores, {"window": 1024}, 0.95)
    assert set(res.metrics) == set(catalogue.metrics_of("perplexity"))
    assert res.metrics["perplexity"].value == pytest.approx(math.e)
    assert res.metrics["bits_per_byte"].value == pytest.approx(12 / 48 / math.log(2))
    assert res.metrics["perplexity"].settings["window"] == 1024
    assert res.item_map()["q1"].extra == {"nll": 10.0, "n_tokens": 10, "n_bytes": 40}


def test_a_scalar_metric_is_recorded_once_and_a_nan_is_an_error() -> None:
    spec = catalogue.spec("judge.flip_rate")
    ok = scalar_metric(spec, 0.25, 8, {"judge_model": "j"})
    assert ok.ok and ok.value == 0.25 and ok.n == 8 and ok.settings == {"judge_model": "j"}
    assert ok.higher_is_better == spec.higher_is_better and not ok.paired
    bad = scalar_metric(spec, math.nan, 8, {})
    assert bad.value is None and bad.error == "NaN" and not bad.ok
