"""Run results: a metric's value, interval and errors from its per-item values, paired arrays over
items both subjects scored on identical content, and which subject a metric is compared with."""

from __future__ import annotations

import math

import numpy as np
import pytest

from services.evaluator.metrics import catalogue
from services.evaluator.results import (
    ItemResult,
    MetricResult,
    RunResult,
    SubjectResult,
    paired_arrays,
)


def subject(role: str = "candidate", n: int = 4, **identity: str | None) -> SubjectResult:
    return SubjectResult(
        role=role,
        model=role,
        identity=dict(identity),
        items=[ItemResult(item_id=f"i{k}", item_hash=f"h{k}") for k in range(n)],
    )


def test_binary_metric_is_the_share_of_passes_with_a_wilson_interval() -> None:
    res = subject()
    metric = res.add_metric(
        catalogue.spec("exact_match"), {"i0": 1, "i1": 0, "i2": True, "i3": None}, {"k": 1}
    )
    assert metric.ok and metric.value == pytest.approx(2 / 3) and metric.n == 3
    assert metric.ci_low is not None and metric.ci_high is not None
    assert 0 < metric.ci_low < 2 / 3 < metric.ci_high < 1
    assert metric.settings == {"k": 1} and res.metrics["exact_match"] is metric
    assert res.item_map()["i2"].values["exact_match"] == 1.0
    assert isinstance(res.item_map()["i2"].values["exact_match"], float)
    assert res.item_map()["i3"].values["exact_match"] is None


def test_continuous_metric_uses_its_statistic_and_a_bootstrap_interval() -> None:
    res = subject()
    metric = res.add_metric(catalogue.spec("token_f1"), {f"i{k}": k / 4 for k in range(4)}, {})
    assert metric.value == pytest.approx(np.mean([0, 0.25, 0.5, 0.75]))
    assert metric.value is not None and metric.ci_low is not None and metric.ci_high is not None
    assert metric.ci_low <= metric.value <= metric.ci_high and metric.ci_low < metric.ci_high
    # Perplexity rows are (nll, tokens): the corpus value is token-weighted.
    ppl = res.add_metric(catalogue.spec("perplexity"), {"i0": [2.0, 2.0], "i1": [10.0, 10.0]}, {})
    assert ppl.value == pytest.approx(math.e)
    assert res.item_map()["i0"].values["perplexity"] == [2.0, 2.0]


def test_a_metric_without_usable_values_is_kept_with_its_error() -> None:
    res = subject()
    empty = res.add_metric(catalogue.spec("token_f1"), {"i0": None}, {})
    assert empty.error == "no item produced a value" and empty.value is None and not empty.ok
    nan = res.add_metric(catalogue.spec("token_f1"), {"i0": 0.5, "i1": math.nan}, {})
    assert nan.error == "NaN or infinite per-item value"
    assert nan.value is None and nan.ci_low is None and nan.ci_high is None
    res.add_error(catalogue.spec("judge.score"), "judge unreachable", {"endpoint": "x"})
    err = res.metrics["judge.score"]
    assert err.error == "judge unreachable" and err.value is None and not err.ok
    assert err.settings == {"endpoint": "x"} and err.kind == "continuous"


def test_a_metric_knows_its_spec_even_when_the_harness_named_it() -> None:
    known = MetricResult(name="exact_match", value=1.0, higher_is_better=True, kind="binary")
    assert known.ok and known.spec() is catalogue.spec("exact_match")
    harness = MetricResult(
        name="lmeval.t.acc", value=0.5, higher_is_better=True, kind="binary", paired=False
    )
    assert harness.spec().name == "lmeval.t.acc" and not harness.spec().paired
    assert not MetricResult(name="x", value=math.inf, higher_is_better=True, kind="binary").ok


def test_paired_arrays_keep_items_both_scored_on_identical_content() -> None:
    cand, base = subject(), subject("baseline")
    cand.add_metric(catalogue.spec("token_f1"), {"i0": 0.1, "i1": 0.2, "i2": 0.3, "i3": 0.4}, {})
    base.add_metric(catalogue.spec("token_f1"), {"i0": 0.5, "i1": 0.6, "i2": None, "i3": 0.8}, {})
    base.items[1].item_hash = "changed"  # the baseline saw other content for i1
    ids, c, b = paired_arrays(cand, base, "token_f1")
    assert ids == ["i0", "i3"]
    assert c.tolist() == [[0.1], [0.4]] and b.tolist() == [[0.5], [0.8]]
    assert paired_arrays(cand, base, "exact_match")[0] == []


def test_compared_with_is_the_baseline_or_for_forgetting_the_bare_base() -> None:
    cand = subject(base_model="m", adapter="a@v2")
    prod = subject("baseline", base_model="m", adapter="a@v1")
    bare = subject("base", base_model="m", adapter=None)
    run = RunResult(run_id="r", candidate=cand, baseline=prod, reference=bare)
    assert run.subjects() == [cand, prod]
    assert run.compared_with("exact_match") is prod
    assert run.compared_with("lmeval.t.acc") is prod
    assert run.compared_with("forgetting.accuracy") is bare
    base_line = subject("baseline", base_model="m", adapter=None)
    assert (
        RunResult(run_id="r", candidate=cand, baseline=base_line).compared_with(
            "forgetting.accuracy"
        )
        is base_line
    )
    other_base = subject("base", base_model="other", adapter=None)
    assert (
        RunResult(run_id="r", candidate=cand, reference=other_base).compared_with(
            "forgetting.accuracy"
        )
        is None
    )
    # No identity recorded: never taken for the base model.
    anonymous = RunResult(run_id="r", candidate=subject(), reference=subject("base"))
    assert anonymous.compared_with("forgetting.accuracy") is None
    assert anonymous.subjects() == [anonymous.candidate]
