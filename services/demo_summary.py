"""What the demo reports of a release: one line per version, each gate line's minimum detectable
difference against its margin, and the record ``summary.json`` keeps (read by bench/demo_time.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def release_line(outcome: dict[str, Any]) -> str:
    """One line per release: the task metric for candidate and baseline, the decision."""
    run = outcome.get("run") or {}
    results = run.get("results") or {}
    cand, base = results.get("candidate") or {}, results.get("baseline") or {}
    scores = ", ".join(
        f"{m} {cand[m]:.3f} vs {base.get(m, float('nan')):.3f}"
        for m in ("json_match", "json_valid")
        if isinstance(cand.get(m), float | int)
    )
    promoted = "promoted to prod" if outcome.get("decision") == "pass" else "not promoted"
    return (
        f"{outcome.get('version')}: {scores} (baseline {run.get('baseline') or 'base model'}); "
        f"gate {outcome.get('decision')}, {promoted}"
    )


def gate_lines(outcome: dict[str, Any], policy: dict[str, Any]) -> list[dict[str, Any]]:
    """The gate's comparison lines with their margins: metric, rule, margin, mdd, n, status."""
    gate = ((outcome.get("run") or {}).get("results") or {}).get("gate") or {}
    out = []
    for line in gate.get("lines") or []:
        rule = (policy.get("metrics") or {}).get(line.get("metric")) or {}
        for key in ("min_improvement", "max_regression"):
            if rule.get(key) is None or line.get("mdd") is None:
                continue
            out.append(
                {
                    "metric": line["metric"],
                    "rule": key,
                    "margin": rule[key],
                    "mdd": round(float(line["mdd"]), 4),
                    "n": (line.get("comparison") or {}).get("n"),
                    "status": line.get("status"),
                }
            )
    return out


def decidability(outcome: dict[str, Any], policy: dict[str, Any]) -> list[str]:
    """Each comparison line of the gate: its minimum detectable difference against its margin."""
    out = []
    for ln in gate_lines(outcome, policy):
        verdict = "decidable" if ln["mdd"] < ln["margin"] else "NOT decidable with this data"
        out.append(
            f"{ln['metric']} {ln['rule']} {ln['margin']:g}: minimum detectable difference "
            f"{ln['mdd']:.3f} with {ln['n']} items ({ln['mdd'] / ln['margin']:.0%} of the margin, "
            f"{verdict})"
        )
    return out


def release_summary(outcome: dict[str, Any], policy: dict[str, Any]) -> dict[str, Any]:
    """What bench/demo_time.py records of one release (``summary.json``)."""
    run = outcome.get("run") or {}
    results = run.get("results") or {}
    cand, base = results.get("candidate") or {}, results.get("baseline") or {}
    return {
        "version": outcome.get("version"),
        "baseline": run.get("baseline") or "base model",
        "json_match": [cand.get("json_match"), base.get("json_match")],
        "decision": outcome.get("decision"),
        "lines": gate_lines(outcome, policy),
    }


def report_paths(evaluations: Path) -> list[Path]:
    """The HTML reports of the demo's evaluations; each evaluation keeps its outputs per attempt
    (``<evaluation>/attempt-<n>/report.html``), so they are found at any depth."""
    return sorted(evaluations.rglob("report.html"))
