"""Outputs: JSON, JUnit XML, and the HTML report opened in headless Chromium with a screenshot."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from services.evaluator import gate, report
from services.evaluator.policy import parse_policy
from services.evaluator.results import JudgeReliability, RunResult
from tests.evaluator.helpers import run

N = 40


def _result() -> tuple[RunResult, gate.GateResult]:
    res = run(
        {
            "exact_match": [1] * 30 + [0] * 10,
            "json_valid": [1] * 38 + [0] * 2,
            "token_f1": [0.8] * N,
            "perplexity": [[10.0, 10.0]] * N,
            "judge.win_rate": [1.0] * 20 + [0.5] * 20,
        },
        {
            "exact_match": [0] * 10 + [1] * 20 + [0] * 10,
            "json_valid": [1] * N,
            "token_f1": [0.5] * N,
            "perplexity": [[15.0, 10.0]] * N,
        },
        judge=JudgeReliability(
            judge_model="smollm2",
            endpoint="http://127.0.0.1:8000",
            prompt_version="pairwise-v1",
            prompt_sha256="a" * 64,
            pairs=N,
            flips=4,
            flip_rate=0.1,
            anchors=8,
            anchor_accuracy=0.9,
        ),
    )
    res.loss_curve = [{"step": s, "loss": 2.0 / s} for s in range(1, 11)]
    res.candidate.items[0].output = "<script>alert('x')</script>"
    policy = parse_policy(
        "min_items: 10\nmetrics:\n  exact_match: {max_regression: 0.05}\n"
        "  json_valid: {min: 0.99}\n  judge.win_rate: {min: 0.5}\n  perplexity: {max: 2}\n"
    )
    return res, gate.decide(policy, res)


def test_json_and_junit(tmp_path: Path) -> None:
    res, decision = _result()
    paths = report.write_outputs(tmp_path, res, decision)
    data = json.loads(paths["json"].read_text())
    assert data["gate"]["decision"] == "fail" and data["exit_code"] == 1
    assert "items" not in data["candidate"]
    suite = ET.parse(paths["junit"]).getroot().find("testsuite")
    assert suite is not None
    assert suite.get("tests") == "4" and suite.get("failures") == "2"
    failed = {c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None}
    assert failed == {"json_valid", "perplexity"}
    lines = paths["items"].read_text().splitlines()
    assert len(lines) == 2 * N


def test_flipped_items_both_directions() -> None:
    res, _ = _result()
    flips = report.flipped_items(res)
    exact = [f for f in flips if f["metric"] == "exact_match"]
    assert sum(f["direction"] == "fail → pass" for f in exact) == 10
    assert sum(f["direction"] == "pass → fail" for f in exact) == 0
    assert sum(f["metric"] == "json_valid" for f in flips) == 2


def test_html_escapes_model_output(tmp_path: Path) -> None:
    res, decision = _result()
    html = report.html_report(res, decision)
    assert "<script>alert" not in html and "&lt;script&gt;" in html
    assert html.count("data:image/png;base64,") == 3  # scores, loss curve, judge


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="Debian chromium is not installed")
def test_html_report_opens_in_headless_chromium(tmp_path: Path) -> None:
    res, decision = _result()
    paths = report.write_outputs(
        tmp_path / "out", res, decision, {"max_flip_rate": 0.2, "min_anchor_accuracy": 0.8}
    )
    shot = tmp_path / "report.png"
    profile = tmp_path / "profile"
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
    ]
    url = paths["html"].resolve().as_uri()
    shot_run = subprocess.run(
        [_chromium(), *flags, f"--screenshot={shot}", "--window-size=1200,2400", url],  # type: ignore[list-item]
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert shot_run.returncode == 0, shot_run.stderr[-2000:]
    assert shot.is_file() and shot.stat().st_size > 20_000
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The DOM chromium built must contain the decision badge and the figures: the page parsed.
    dom = subprocess.run(
        [_chromium(), *flags, "--dump-dom", url],  # type: ignore[list-item]
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'id="decision"' in dom.stdout and ">FAIL<" in dom.stdout
    assert dom.stdout.count("<img") == 3
    artifacts = Path(__file__).resolve().parents[2] / ".loraplex" / "test-artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, artifacts / "evaluator-report.png")


def test_the_title_says_when_the_candidate_is_a_full_fine_tune() -> None:
    res, decision = _result()
    assert "(full fine-tune)" not in report.html_report(res, decision)
    res.candidate.identity = {"adapter": "a@v2", "kind": "full", "weights_sha256": "7" * 64}
    html = report.html_report(res, decision)
    assert f"{res.candidate.model} (full fine-tune) vs" in html
