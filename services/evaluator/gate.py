"""The release gate: a policy applied to a run's results gives pass, fail or inconclusive.

Each policy line is checked on its own and yields one or more reasons. A line *fails* when the
candidate is below a floor, or when the paired interval shows it worse than the allowed margin; it
is *inconclusive* when the interval straddles the margin (not enough items to tell), when too few
items are shared, or when the metric comes from a judge that failed its own reliability checks.
Missing, NaN or errored metrics fail closed unless the line says ``required: false``. Every line,
floors included, is inconclusive when its metric rests on fewer than ``min_items`` items.

The run is ``fail`` if any line fails, or if no line could be checked at all (every line optional
and skipped); else ``inconclusive`` if any line is; else ``pass``.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, Field

from services.evaluator import stats
from services.evaluator.metrics import catalogue
from services.evaluator.policy import MetricRule, Policy
from services.evaluator.results import MetricResult, RunResult, paired_arrays
from services.evaluator.statuses import Decision as Decision
from services.evaluator.statuses import ExitCode
from services.evaluator.statuses import LineStatus as Status

_RANK = {"skipped": 0, "pass": 1, "inconclusive": 2, "fail": 3}


class LineResult(BaseModel):
    metric: str
    status: Status
    reasons: list[str]
    candidate: float | None = None
    baseline: float | None = None
    comparison: dict[str, object] | None = None
    mdd: float | None = None
    # The base model's name when the line compared with it instead of the baseline (forgetting).
    compared_with: str | None = None


class GateResult(BaseModel):
    decision: Decision
    lines: list[LineResult]
    reasons: list[str] = Field(default_factory=list)
    confidence: float
    policy_sha256: str
    policy_name: str = ""

    @property
    def exit_code(self) -> int:
        return int(ExitCode.of(self.decision))


def _fmt(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:.4g}"


def _worst(statuses: list[Status]) -> Status:
    return max(statuses, key=lambda s: _RANK[s]) if statuses else "pass"


def _judge_refusal(policy: Policy, run: RunResult) -> str | None:
    judge = run.judge
    if judge is None:
        return "no judge reliability was recorded for this run"
    limits = policy.judge
    problems = []
    # Rubric-only runs have no order to flip; anchors still test the judge.
    if judge.flip_rate is not None and judge.flip_rate > limits.max_flip_rate:
        problems.append(
            f"order flip rate {_fmt_pct(judge.flip_rate)} > limit {_fmt_pct(limits.max_flip_rate)}"
        )
    if judge.anchor_accuracy is None or judge.anchor_accuracy < limits.min_anchor_accuracy:
        problems.append(
            f"anchor accuracy {_fmt_pct(judge.anchor_accuracy)} < limit "
            f"{_fmt_pct(limits.min_anchor_accuracy)}"
        )
    rate = judge.parse_failure_rate
    if rate is not None and rate > limits.max_parse_failure_rate:
        problems.append(
            f"unparseable replies {_fmt_pct(rate)} ({judge.parse_failures} of {judge.replies}) > "
            f"limit {_fmt_pct(limits.max_parse_failure_rate)}"
        )
    return "; ".join(problems) or None


def _fmt_pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def _check_line(name: str, rule: MetricRule, policy: Policy, run: RunResult) -> LineResult:
    metric: MetricResult | None = run.candidate.metrics.get(name)
    if metric is None or not metric.ok:
        why = (
            "was not computed by this run"
            if metric is None
            else f"has no valid value ({metric.error or 'NaN'})"
        )
        if rule.required:
            return LineResult(
                metric=name,
                status="fail",
                reasons=[f"[fail] {name}: {why}; required, so it fails closed"],
            )
        return LineResult(
            metric=name, status="skipped", reasons=[f"[skipped] {name}: {why}; not required"]
        )

    if catalogue.is_judged(name) and (refusal := _judge_refusal(policy, run)):
        return LineResult(
            metric=name,
            status="inconclusive",
            candidate=metric.value,
            reasons=[f"[inconclusive] {name}: judge not trusted ({refusal})"],
        )

    value = float(metric.value)  # type: ignore[arg-type]
    statuses: list[Status] = []
    reasons: list[str] = []
    if rule.min is not None:
        ok = value >= rule.min
        statuses.append("pass" if ok else "fail")
        reasons.append(
            f"[{statuses[-1]}] {name}: {_fmt(value)} {'>=' if ok else '<'} min {_fmt(rule.min)}"
        )
    if rule.max is not None:
        ok = value <= rule.max
        statuses.append("pass" if ok else "fail")
        reasons.append(
            f"[{statuses[-1]}] {name}: {_fmt(value)} {'<=' if ok else '>'} max {_fmt(rule.max)}"
        )

    if metric.n < policy.min_items:
        # Every line, floors included: a floor met by one item says nothing (``limit: 1``).
        statuses.append("inconclusive")
        reasons.append(
            f"[inconclusive] {name}: computed on {metric.n} items (policy min_items "
            f"{policy.min_items}); not enough to tell"
        )
    line = LineResult(metric=name, status="pass", reasons=reasons, candidate=value)
    if rule.compares:
        status, more = _compare(name, rule, policy, run, line)
        statuses.append(status)
        reasons.extend(more)
    line.status = _worst(statuses)
    line.reasons = reasons
    return line


def _compare(
    name: str, rule: MetricRule, policy: Policy, run: RunResult, line: LineResult
) -> tuple[Status, list[str]]:
    base_subject = run.compared_with(name)
    to_base = run.candidate.metrics[name].spec().compare_with == "base"
    # Forgetting lines are held against the bare base model whatever the run's baseline.
    against = f"the base model {base_subject.model}" if to_base and base_subject else "baseline"
    base_metric = base_subject.metrics.get(name) if base_subject else None
    if base_subject is None or base_metric is None or not base_metric.ok:
        what = "the base model" if to_base else "the baseline"
        why = (
            f"there is no {what.removeprefix('the ')}"
            if base_subject is None
            else f"{what} has no valid value"
        )
        status: Status = "fail" if rule.required else "skipped"
        return status, [f"[{status}] {name}: cannot compare with {what} ({why})"]
    line.baseline = base_metric.value
    line.compared_with = base_subject.model if to_base else None
    ids, cand, base = paired_arrays(run.candidate, base_subject, name)
    if len(ids) < policy.min_items:
        return "inconclusive", [
            f"[inconclusive] {name}: only {len(ids)} items shared with {against} (policy "
            f"min_items {policy.min_items}); not enough to tell"
        ]
    confidence = rule.confidence or policy.confidence
    metric = run.candidate.metrics[name]
    if metric.kind == "binary":
        cmp = stats.compare_binary(
            cand[:, 0], base[:, 0], confidence=confidence, power=policy.power
        )
    else:
        cmp = stats.paired_bootstrap(
            cand,
            base,
            statistic=metric.statistic,
            confidence=confidence,
            n_resamples=policy.bootstrap_resamples,
            power=policy.power,
        )
    line.comparison = cmp.to_dict()
    line.mdd = cmp.mdd
    # Orient so that positive always means "candidate better".
    sign = 1.0 if metric.higher_is_better else -1.0
    low, high = sorted((sign * cmp.ci_low, sign * cmp.ci_high))
    pct = f"{100 * confidence:g}%"
    ci_text = (
        f"delta {_fmt(cmp.delta)} ({pct} CI {_fmt(cmp.ci_low)} to {_fmt(cmp.ci_high)}, "
        f"{cmp.method}, n={cmp.n}"
        + (f", McNemar p={cmp.p_value:.3g}" if cmp.p_value is not None else "")
        + ")"
    )
    mdd_text = f"minimum detectable difference {_fmt(cmp.mdd)} with {cmp.n} items"
    if to_base:  # a non-inferiority line against the base: say what it could have detected
        ci_text += f"; {mdd_text}"
    direction = "higher" if metric.higher_is_better else "lower"
    statuses: list[Status] = []
    reasons: list[str] = []
    if rule.max_regression is not None:
        m = rule.max_regression
        if low >= -m:
            statuses.append("pass")
            reasons.append(
                f"[pass] {name}: not worse than {against} by more than {_fmt(m)}: {ci_text}"
            )
        elif high < -m:
            statuses.append("fail")
            reasons.append(f"[fail] {name}: worse than {against} by more than {_fmt(m)}: {ci_text}")
        else:
            statuses.append("inconclusive")
            reasons.append(
                f"[inconclusive] {name}: cannot tell whether it regressed by more than "
                f"{_fmt(m)}"
                + (f" from {against}" if to_base else "")
                + f": {ci_text}"
                + ("" if to_base else f"; {mdd_text}")
            )
    if rule.min_improvement is not None:
        g = rule.min_improvement
        if low > g:
            statuses.append("pass")
            reasons.append(
                f"[pass] {name}: better than {against} by more than {_fmt(g)}: {ci_text}"
            )
        elif high <= g:
            statuses.append("fail")
            reasons.append(
                f"[fail] {name}: not better than {against} by more than {_fmt(g)} ({direction} is "
                f"better): {ci_text}"
            )
        else:
            statuses.append("inconclusive")
            reasons.append(
                f"[inconclusive] {name}: cannot tell whether it beats {against} by "
                f"{_fmt(g)}: {ci_text}" + ("" if to_base else f"; {mdd_text}")
            )
    return _worst(statuses), reasons


def decide(policy: Policy, run: RunResult) -> GateResult:
    lines = [_check_line(name, rule, policy, run) for name, rule in policy.metrics.items()]
    statuses = [ln.status for ln in lines]
    checked_nothing = all(status == "skipped" for status in statuses)
    if "fail" in statuses or checked_nothing:
        decision: Decision = "fail"
    elif "inconclusive" in statuses:
        decision = "inconclusive"
    else:
        decision = "pass"
    reasons = [r for ln in lines for r in ln.reasons]
    if checked_nothing:
        # Fail closed: optional lines that were all skipped would otherwise pass on no evidence.
        reasons.append(
            "[fail] no policy line could be checked: every metric is optional and none was "
            "computed; a gate that checks nothing does not pass"
        )
    mdds = [f"{ln.metric} {_fmt(ln.mdd)}" for ln in lines if ln.mdd is not None]
    if mdds:
        n = max((int(ln.comparison["n"]) for ln in lines if ln.comparison), default=0)  # type: ignore[call-overload]
        reasons.append(
            f"minimum detectable difference at {100 * policy.confidence:g}% confidence and "
            f"{100 * policy.power:g}% power with {n} items: " + ", ".join(mdds)
        )
    return GateResult(
        decision=decision,
        lines=lines,
        reasons=reasons,
        confidence=policy.confidence,
        policy_sha256=policy.sha256(),
        policy_name=policy.name,
    )
