"""`shared.registry.versions`: versions numbered per adapter, content-addressed, read back."""

from __future__ import annotations

from shared.registry import adapters as reg
from shared.registry.db import Registry
from tests.shared.registry.seed import SHA_A, SHA_B, add_version, seed_base


def test_versions_are_numbered_and_content_addressed(registry: Registry) -> None:
    seed_base(registry)
    assert add_version(registry, SHA_A) == "bot@v1"
    assert add_version(registry, SHA_B) == "bot@v2"
    # Same content again: the existing version, not a third one.
    assert add_version(registry, SHA_A) == "bot@v1"
    with registry.session() as s:
        assert [v.id for v in reg.list_versions(s, "bot")] == ["bot@v1", "bot@v2"]
        assert reg.get_version(s, "bot@v1").base_model_sha256 == "f" * 64
