"""The demo's summary (``services/demo_summary.py``), without running the demo: the decidability
line each gate gets, the scores and margins kept, and the reports listed."""

from __future__ import annotations

from pathlib import Path

from services.demo_summary import decidability, release_summary, report_paths

OUTCOME = {
    "version": "extraction@v2",
    "decision": "pass",
    "run": {
        "baseline": "extraction@v1",
        "results": {
            "candidate": {"json_match": 0.9},
            "baseline": {"json_match": 0.88},
            "gate": {
                "lines": [
                    {
                        "metric": "json_match",
                        "status": "pass",
                        "mdd": 0.05,
                        "comparison": {"n": 400},
                    },
                    {"metric": "json_valid", "status": "pass", "mdd": None, "comparison": None},
                ]
            },
        },
    },
}
POLICY = {
    "metrics": {"json_match": {"min": 0.5, "max_regression": 0.1}, "json_valid": {"min": 0.8}}
}


def test_each_comparison_line_reports_its_mdd_against_its_margin() -> None:
    (line,) = decidability(OUTCOME, POLICY)
    assert "max_regression 0.1" in line and "0.050 with 400 items" in line
    assert "50% of the margin, decidable" in line


def test_a_gate_that_cannot_decide_says_so() -> None:
    run = OUTCOME["run"]["results"]["gate"]["lines"][0]  # type: ignore[index]
    worse = {**OUTCOME, "run": {"results": {"gate": {"lines": [{**run, "mdd": 0.16}]}}}}
    (line,) = decidability(worse, POLICY)
    assert "NOT decidable" in line


def test_release_summary_keeps_scores_and_margins() -> None:
    summary = release_summary(OUTCOME, POLICY)
    assert summary["json_match"] == [0.9, 0.88] and summary["decision"] == "pass"
    assert summary["lines"] == [
        {
            "metric": "json_match",
            "rule": "max_regression",
            "margin": 0.1,
            "mdd": 0.05,
            "n": 400,
            "status": "pass",
        }
    ]


def test_the_summary_lists_the_reports_kept_per_attempt(tmp_path: Path) -> None:
    # Evaluations keep outputs per attempt; a one-level glob listed none after every demo run.
    for run, attempt in (("eval-b", 1), ("eval-a", 2)):
        (tmp_path / run / f"attempt-{attempt}").mkdir(parents=True)
        (tmp_path / run / f"attempt-{attempt}" / "report.html").write_text("<html></html>")
    (tmp_path / "eval-a" / "attempt-2" / "result.json").write_text("{}")
    assert report_paths(tmp_path) == [
        tmp_path / "eval-a" / "attempt-2" / "report.html",
        tmp_path / "eval-b" / "attempt-1" / "report.html",
    ]
