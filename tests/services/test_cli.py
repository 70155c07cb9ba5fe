"""`services.cli` (the ``loraplex`` command): every service's group is mounted, and base models are
registered and listed by name and weights hash."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from services.cli import SERVICE_GROUPS, app
from tests.server.fakes import make_base


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key in [k for k in os.environ if k.startswith("LORAPLEX_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("LORAPLEX_DATA_DIR", str(tmp_path / "data"))
    return tmp_path


def test_every_service_group_is_mounted() -> None:
    groups = get_command(app).commands  # type: ignore[attr-defined]
    assert {"model", "doctor", "migrate"} <= set(groups)
    assert {name for _, _, name, _ in SERVICE_GROUPS} <= set(groups)


def test_a_registered_base_model_is_listed_with_its_hash(data_dir: Path) -> None:
    runner = CliRunner()
    folder = make_base(data_dir / "tiny-base")
    assert runner.invoke(app, ["migrate"]).exit_code == 0
    registered = runner.invoke(app, ["model", "register", str(folder), "--name", "tiny"])
    assert registered.exit_code == 0, registered.output
    sha = registered.output.split("weights sha256 ")[1].strip()
    listed = runner.invoke(app, ["model", "list"])
    assert listed.exit_code == 0
    assert listed.output.split("\t")[:2] == ["tiny", sha[:16]]
