"""``loraplex adapters import`` and ``list`` on a tiny local base model (no engine)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.server.cli import adapters_app
from tests.server.fakes import make_adapter, make_base


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key in [k for k in __import__("os").environ if k.startswith("LORAPLEX_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("LORAPLEX_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LORAPLEX_BASE_MODEL", str(make_base(tmp_path / "tiny-base")))
    return tmp_path


def test_import_validates_registers_and_lists(env: Path) -> None:
    runner = CliRunner()
    good = make_adapter(env / "good")
    result = runner.invoke(adapters_app, ["import", str(good), "--name", "bot"])
    assert result.exit_code == 0, result.output
    assert "registered bot@v1" in result.output
    again = runner.invoke(adapters_app, ["import", str(good), "--name", "bot"])
    assert "already registered as bot@v1" in again.output
    bad = make_adapter(env / "bad", use_dora=True, r=64)
    result = runner.invoke(adapters_app, ["import", str(bad), "--name", "bot"])
    assert result.exit_code == 3
    assert "DoRA" in result.output and "max LoRA rank" in result.output
    listed = runner.invoke(adapters_app, ["list", "--json"])
    assert listed.exit_code == 0
    rows = json.loads(listed.output)
    assert [r["id"] for r in rows] == ["bot@v1"] and rows[0]["base_model"] == "tiny-base"


def test_list_shows_each_version_s_kind_and_export_copies_a_full_one(env: Path) -> None:
    import shutil

    from services.server.config import ServerSettings
    from shared.basemodel import resolve_base_model
    from tests.full_models import register_full_version

    runner = CliRunner()
    assert runner.invoke(adapters_app, ["import", str(make_adapter(env / "a")), "--name", "bot"])
    folder = env / "full"
    shutil.copytree(env / "tiny-base", folder)  # a model folder; never loaded here
    settings = ServerSettings()
    full = register_full_version(settings, resolve_base_model(settings), folder, name="ft")
    rows = json.loads(runner.invoke(adapters_app, ["list", "--json"]).output)
    assert {r["id"]: r["kind"] for r in rows} == {"bot@v1": "lora", full: "full"}
    text = runner.invoke(adapters_app, ["list"]).output
    assert any(line.split()[:2] == [full, "full"] for line in text.splitlines()), text
    out = env / "exported"
    result = runner.invoke(adapters_app, ["export", full, "--merged", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output
    assert (out / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
    assert json.loads((out / "loraplex_export.json").read_text())["kind"] == "full"
