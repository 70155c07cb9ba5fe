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
