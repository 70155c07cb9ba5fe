"""`services.release`: an in-process release trains, then gates the version it trained with the
config's evaluation and promotes on pass; a half-given service pair is refused."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from services import release
from services.release import load_config, run_in_process
from shared.verdicts import ExitCode

V1 = Path(__file__).resolve().parents[2] / "examples" / "release" / "v1.yaml"


def test_in_process_release_gates_the_version_it_trained(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, root = load_config(V1)
    calls: list[list[str]] = []

    def fake_run(cmd: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        if cmd[3:5] == ["train", "run"]:
            return subprocess.CompletedProcess(cmd, 0, stdout='{"version_id": "shop@v7"}\n')
        return subprocess.CompletedProcess(cmd, ExitCode.PASS)

    monkeypatch.setattr(subprocess, "run", fake_run)
    said: list[str] = []
    assert run_in_process(cfg, root, said.append) == ExitCode.PASS
    train, gate = calls
    assert train[-2:] == ["--adapter-name", cfg.adapter]
    assert gate[3:5] == ["gate", "run"]
    assert gate[gate.index("--candidate") + 1] == "shop@v7"
    assert gate[gate.index("--promote") + 1] == cfg.promote
    assert said[-1].endswith(f"{cfg.adapter}:{cfg.promote} -> shop@v7")


def test_a_trainer_url_without_an_evaluator_url_is_an_error() -> None:
    result = CliRunner().invoke(release.app, [str(V1), "--trainer-url", "http://x"])
    assert result.exit_code == ExitCode.ERROR
    assert "give both --trainer-url and --evaluator-url" in result.output


def _best_of(path: Path = V1) -> tuple[release.ReleaseConfig, Path]:
    cfg, root = load_config(path)
    cfg.evaluation.baseline = ["base", "base+fewshot:4"]
    return cfg, root


@pytest.mark.parametrize(("first", "runs"), [(ExitCode.PASS, 2), (ExitCode.FAIL, 1)])
def test_a_list_of_baselines_gates_against_each_and_only_the_last_promotes(
    monkeypatch: pytest.MonkeyPatch, first: ExitCode, runs: int
) -> None:
    cfg, root = _best_of()
    gates: list[list[str]] = []

    def fake_run(cmd: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        if cmd[3:5] == ["train", "run"]:
            return subprocess.CompletedProcess(cmd, 0, stdout='{"version_id": "shop@v7"}\n')
        gates.append(cmd)
        return subprocess.CompletedProcess(cmd, first if len(gates) == 1 else ExitCode.PASS)

    monkeypatch.setattr(subprocess, "run", fake_run)
    assert run_in_process(cfg, root, lambda _: None) == (first if runs == 1 else ExitCode.PASS)
    assert len(gates) == runs  # a fail against the first stops the release there
    assert [g[g.index("--baseline") + 1] for g in gates] == ["base", "base+fewshot:4"][:runs]
    assert ["--promote" in g for g in gates] == [False, True][:runs]


def test_the_http_release_asks_for_the_promotion_only_on_the_last_evaluation() -> None:
    cfg, root = _best_of()
    cfg.services = release.Services(trainer_url="http://t", evaluator_url="http://e")
    flow = release.HttpRelease(cfg, root, lambda _: None)
    asked: list[tuple[str | None, str | None]] = []

    def fake(version: str, baseline: str | None, promote: str | None) -> dict[str, Any]:
        asked.append((baseline, promote))
        return {"id": f"run-{len(asked)}", "status": "succeeded", "decision": "pass"}

    flow._evaluate = fake  # type: ignore[method-assign]
    assert flow.evaluate("shop@v7")["id"] == "run-2"
    assert asked == [("base", None), ("base+fewshot:4", cfg.promote)]
    asked.clear()

    def failing(version: str, baseline: str | None, promote: str | None) -> dict[str, Any]:
        asked.append((baseline, promote))
        return {"id": "run-1", "status": "succeeded", "decision": "inconclusive"}

    flow._evaluate = failing  # type: ignore[method-assign]
    assert flow.evaluate("shop@v7")["decision"] == "inconclusive"
    assert asked == [("base", None)]


@pytest.mark.parametrize("baseline", [[], ["base", "base"]])
def test_a_baseline_list_must_name_different_baselines(baseline: list[str]) -> None:
    cfg, _ = load_config(V1)
    body = cfg.evaluation.model_dump() | {"baseline": baseline}
    with pytest.raises(ValueError, match="a list of different ones"):
        type(cfg.evaluation).model_validate(body)
