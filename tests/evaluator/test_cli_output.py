"""`services.evaluator.cli_output`: the progress lines of ``eval run`` / ``gate run`` and the
summary it prints (metrics beside the baseline's, contamination, gate, promotion, report)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from services.evaluator import cli_output, report
from services.evaluator.contamination import ContaminationReport, Overlap
from services.evaluator.gate import GateResult
from services.evaluator.results import RunResult
from services.evaluator.service import Outcome
from tests.evaluator.helpers import run as synthetic_run


def _stages(plan: Any) -> list[tuple[str, int]]:
    return [("generation (candidate)", 2), ("judge", 1)]


def test_quiet_progress_is_one_line_per_stage_on_stderr(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli_output, "stages", _stages)
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)  # quiet wins even on a terminal
    tracker = cli_output.tracker_factory(quiet=True)(None)
    with tracker.stage("generation (candidate)", 2) as advance:
        advance()
        advance()
    with tracker.stage("judge", 1) as advance:
        advance()
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == ["[  0.0%] generation (candidate)", "[ 66.7%] judge"]


def test_progress_without_a_terminal_is_plain_lines_too(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli_output, "stages", _stages)
    monkeypatch.setattr("sys.stderr.isatty", lambda: False)
    tracker = cli_output.tracker_factory(quiet=False)(None)
    with tracker.stage("judge", 1) as advance:
        advance()
    assert capsys.readouterr().err.splitlines() == ["[  0.0%] judge"]


def _result() -> RunResult:
    result = synthetic_run(
        {"exact_match": [1, 0, 1], "token_f1": [0.5, math.nan, 0.2]},
        {"exact_match": [0, 0, 1]},
    )
    result.run_id = "eval-out"
    result.data = {"n_used": 3}
    result.contamination = ContaminationReport(
        overlaps=[
            Overlap(
                item_id=f"i{k}",
                item_index=k,
                kind="exact",
                overlap=1.0,
                training_row="row",
                training_location=f"train.jsonl:{k + 1}",
            )
            for k in range(7)
        ]
    )
    return result


def _outcome(tmp_path: Path, gate: GateResult | None, promotion: dict[str, Any] | None) -> Outcome:
    folder = tmp_path / "run"
    folder.mkdir()
    paths = {}
    for key, name in (("html", "report.html"), ("json", "result.json"), ("junit", "junit.xml")):
        paths[key] = folder / name
        paths[key].write_text(key)
    return Outcome("eval-out", _result(), gate, paths, promotion)


def test_the_summary_shows_metrics_contamination_gate_promotion_and_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gate = GateResult(
        decision="fail",
        lines=[],
        reasons=["exact_match 0.6667 < 0.9"],
        confidence=0.95,
        policy_sha256="0" * 64,
    )
    promotion = {"alias": "shop:prod", "state": "skipped", "moved": False}
    outcome = _outcome(tmp_path, gate, promotion)
    cli_output.print_outcome(outcome, as_json=False, out=None)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "run eval-out: a@v2 vs base (3 items)"
    exact = next(line for line in lines if line.strip().startswith("exact_match"))
    assert exact.split() == ["exact_match", "0.6667", "baseline", "0.3333"]
    f1 = next(line for line in lines if line.strip().startswith("token_f1"))
    assert "error:" in f1 and f1.split()[-2:] == ["baseline", "-"]
    found = next(line for line in lines if line.startswith("contamination:"))
    assert found.startswith("contamination: 7 items found in the training data: i0 (exact, ")
    assert "i4 (exact, train.jsonl:5)" in found and "i5 " not in found
    assert found.endswith(" and 2 more")
    assert "gate: FAIL" in lines
    assert "  exact_match 0.6667 < 0.9" in lines
    assert f"promotion: {json.dumps(promotion)}" in lines
    assert lines[-1] == f"report: {outcome.paths['html']}"


def test_no_gate_no_baseline_and_nothing_found_print_no_such_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outcome = _outcome(tmp_path, None, None)
    outcome.result.baseline = None
    outcome.result.contamination = None
    cli_output.print_outcome(outcome, as_json=False, out=None)
    text = capsys.readouterr().out
    assert text.startswith("run eval-out: a@v2 vs no baseline (3 items)\n")
    for absent in ("contamination", "gate:", "promotion:"):
        assert absent not in text


def test_json_output_is_the_result_json_and_out_gets_copies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gate = GateResult(decision="pass", lines=[], confidence=0.95, policy_sha256="1" * 64)
    outcome = _outcome(tmp_path, gate, None)
    out = tmp_path / "ci" / "artifacts"
    cli_output.print_outcome(outcome, as_json=True, out=out)
    printed = json.loads(capsys.readouterr().out)
    want = json.loads(json.dumps(report.result_json(outcome.result, gate), default=str))
    assert printed == want and printed["exit_code"] == 0
    assert sorted(p.name for p in out.iterdir()) == ["junit.xml", "report.html", "result.json"]
    assert (out / "junit.xml").read_text() == "junit"
