"""``loraplex adapters alias|protect|unprotect`` (services.server.cli_aliases): a malformed
NAME:ALIAS is refused with exit 2; a protection may list several first
baselines, stored as one normalised list and shown by ``alias history``; a bad list is refused
with nothing stored. (The move rules behind these commands: tests/security/.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from services.server.cli import adapters_app
from tests.server.fakes import make_base


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    for key in [k for k in __import__("os").environ if k.startswith("LORAPLEX_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("LORAPLEX_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LORAPLEX_BASE_MODEL", str(make_base(tmp_path / "tiny-base")))
    runner = CliRunner()
    return lambda *args: runner.invoke(adapters_app, list(args), catch_exceptions=False)


@pytest.mark.parametrize(
    "command", [["alias", "history", "bot"], ["protect", "prod", "--policy", "p"]]
)
def test_an_alias_reference_without_a_colon_is_refused(cli: Any, command: list[str]) -> None:
    result = cli(*command)
    assert result.exit_code == 2
    assert "is not NAME:ALIAS" in result.output


def test_a_protection_may_list_first_baselines_and_history_shows_them(cli: Any) -> None:
    from shared.registry.db import open_registry
    from shared.registry.policies import register_policy
    from shared.settings import SharedSettings

    registry = open_registry(SharedSettings())
    with registry.session() as session:
        register_policy(session, "gate", {"metrics": {}}, "e" * 64, actor="test")
    registry.dispose()
    first = "base, base+fewshot:4"
    result = cli("protect", "bot:prod", "--policy", "gate", "--first-baseline", first)
    assert result.exit_code == 0, result.output
    shown = json.loads(cli("alias", "history", "bot:prod", "--json").output)
    assert shown["protection"]["first_baseline"] == "base,base+fewshot:4"
    result = cli("protect", "bot:canary", "--policy", "gate", "--first-baseline", "base,base")
    assert result.exit_code == 3 and "several different ones" in result.output
    none = json.loads(cli("alias", "history", "bot:canary", "--json").output)
    assert none["protection"] is None
