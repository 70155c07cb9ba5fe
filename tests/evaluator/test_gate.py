"""Gate decisions on synthetic results: pass, fail with reasons, fail-closed, inconclusive."""

from __future__ import annotations

import math

from services.evaluator import gate
from services.evaluator.policy import Policy, parse_policy
from services.evaluator.results import JudgeReliability
from tests.evaluator.helpers import run

N = 60


def _policy(text: str) -> Policy:
    return parse_policy(text, "p.yaml")


def test_pass_when_floors_hold_and_no_regression() -> None:
    policy = _policy(
        """
metrics:
  exact_match: {min: 0.5, max_regression: 0.05}
  token_f1: {min: 0.5, max_regression: 0.05}
"""
    )
    res = run(
        {"exact_match": [1] * 50 + [0] * 10, "token_f1": [0.9] * N},
        {"exact_match": [0] * 50 + [0] * 10, "token_f1": [0.2] * N},
    )
    out = gate.decide(policy, res)
    assert out.decision == "pass", out.reasons
    assert out.exit_code == 0
    assert any("minimum detectable difference" in r for r in out.reasons)


def test_fail_names_the_metrics_that_failed() -> None:
    policy = _policy(
        """
metrics:
  exact_match: {min: 0.5, max_regression: 0.02}
  json_valid: {min: 0.9}
  token_f1: {min: 0.1}
"""
    )
    res = run(
        {
            "exact_match": [0] * 50 + [1] * 10,
            "json_valid": [1] * 30 + [0] * 30,
            "token_f1": [0.5] * N,
        },
        {"exact_match": [1] * 50 + [1] * 10, "json_valid": [1] * N, "token_f1": [0.5] * N},
    )
    out = gate.decide(policy, res)
    assert out.decision == "fail" and out.exit_code == 1
    failed = {ln.metric for ln in out.lines if ln.status == "fail"}
    assert failed == {"exact_match", "json_valid"}
    text = "\n".join(out.reasons)
    assert "exact_match: 0.1667 < min 0.5" in text
    assert "exact_match: worse than baseline by more than 0.02" in text
    assert "json_valid: 0.5 < min 0.9" in text


def test_metric_not_computed_fails_closed() -> None:
    policy = _policy("metrics:\n  perplexity: {max: 20}\n  exact_match: {min: 0.1}\n")
    out = gate.decide(policy, run({"exact_match": [1] * N}))
    assert out.decision == "fail"
    line = next(ln for ln in out.lines if ln.metric == "perplexity")
    assert line.status == "fail" and "was not computed" in line.reasons[0]
    assert "fails closed" in line.reasons[0]


def test_optional_missing_metric_is_skipped() -> None:
    policy = _policy("metrics:\n  perplexity: {max: 20, required: false}\n  exact_match: {}\n")
    out = gate.decide(policy, run({"exact_match": [1] * N}))
    assert out.decision == "pass"
    assert [ln.status for ln in out.lines] == ["skipped", "pass"]


def test_nan_metric_fails_closed() -> None:
    policy = _policy("metrics:\n  token_f1: {min: 0.1}\n")
    res = run({"token_f1": [0.5] * (N - 1) + [math.nan]})
    out = gate.decide(policy, res)
    assert out.decision == "fail"
    assert "NaN" in out.lines[0].reasons[0]


def test_missing_baseline_fails_closed_for_comparisons() -> None:
    policy = _policy("metrics:\n  exact_match: {max_regression: 0.1}\n")
    out = gate.decide(policy, run({"exact_match": [1] * N}))
    assert out.decision == "fail"
    assert "no baseline" in out.lines[0].reasons[0]


def test_inconclusive_when_too_few_items_to_tell() -> None:
    policy = _policy("min_items: 5\nmetrics:\n  exact_match: {max_regression: 0.05}\n")
    out = gate.decide(
        policy, run({"exact_match": [1, 0, 1, 0, 1, 1]}, {"exact_match": [1, 1, 0, 0, 1, 1]})
    )
    assert out.decision == "inconclusive" and out.exit_code == 2
    assert "cannot tell" in out.lines[0].reasons[0]
    assert "minimum detectable difference" in out.lines[0].reasons[0]
    out = gate.decide(
        _policy("metrics:\n  exact_match: {max_regression: 0.05}\n"),
        run({"exact_match": [1] * 6}, {"exact_match": [1] * 6}),
    )
    assert out.decision == "inconclusive" and "min_items" in out.lines[0].reasons[0]


def test_lower_is_better_metrics_are_oriented() -> None:
    policy = _policy("metrics:\n  perplexity: {max: 50, max_regression: 0.5}\n")
    # (nll_sum, tokens) per item: candidate ppl e^1.0, baseline e^2.0 -> candidate better.
    good = run({"perplexity": [[10.0, 10.0]] * N}, {"perplexity": [[20.0, 10.0]] * N})
    assert gate.decide(policy, good).decision == "pass"
    bad = run({"perplexity": [[20.0, 10.0]] * N}, {"perplexity": [[10.0, 10.0]] * N})
    out = gate.decide(policy, bad)
    assert out.decision == "fail"
    assert any("worse than baseline" in r for r in out.reasons)


def test_min_improvement_superiority() -> None:
    policy = _policy("metrics:\n  token_f1: {min_improvement: 0.0}\n")
    same = run({"token_f1": [0.5] * N}, {"token_f1": [0.5] * N})
    assert gate.decide(policy, same).decision == "fail"


def test_binary_superiority_is_not_passed_against_exact_mcnemar() -> None:
    # 5 of 30 items flip to pass, none back: exact McNemar p = 0.0625, not significant at 95%.
    policy = _policy("metrics:\n  exact_match: {min_improvement: 0.0}\nmin_items: 10\n")
    res = run({"exact_match": [1] * 15 + [0] * 15}, {"exact_match": [1] * 10 + [0] * 20})
    out = gate.decide(policy, res)
    assert out.decision == "inconclusive", out.reasons
    assert any("McNemar p=0.0625" in r for r in out.reasons)


def _judge(flip: float, anchors: float) -> JudgeReliability:
    return JudgeReliability(
        judge_model="j",
        endpoint="http://x",
        prompt_version="v1",
        prompt_sha256="0" * 64,
        pairs=N,
        flips=int(flip * N),
        flip_rate=flip,
        anchors=8,
        anchor_accuracy=anchors,
    )


def test_unreliable_judge_makes_judge_lines_inconclusive() -> None:
    policy = _policy("metrics:\n  judge.win_rate: {min: 0.5}\n  exact_match: {min: 0.1}\n")
    res = run({"judge.win_rate": [0.5] * N, "exact_match": [1] * N}, judge=_judge(1.0, 0.5))
    out = gate.decide(policy, res)
    assert out.decision == "inconclusive"
    assert "judge not trusted" in out.lines[0].reasons[0]
    assert "flip rate 100%" in out.lines[0].reasons[0]
    reliable = run({"judge.win_rate": [1.0] * N, "exact_match": [1] * N}, judge=_judge(0.0, 1.0))
    assert gate.decide(policy, reliable).decision == "pass"
