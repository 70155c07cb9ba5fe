"""`services.server.importer`: the base identity takes the configured aliases."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.server.config import ServerSettings
from services.server.declared_base import match_declared
from services.server.importer import base_identity
from shared.registry.db import open_registry


def test_base_identity_takes_the_configured_aliases(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LORAPLEX_BASE_MODEL_ALIASES", "org/tiny-base-hub, other-name")
    settings = ServerSettings()
    registry = open_registry(settings)
    try:
        base = base_identity(settings, registry)
    finally:
        registry.dispose()
    assert base.name == "tiny-base"
    assert {"org/tiny-base-hub", "other-name"} <= set(base.aliases)
    assert match_declared("ORG/tiny-base-hub", base) == "alias"
