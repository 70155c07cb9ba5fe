"""`shared.registry.pins`: pinning is idempotent, and unpinning removes it."""

from __future__ import annotations

from shared.registry import adapters as reg
from shared.registry.db import Registry
from tests.shared.registry.seed import SHA_A, add_version, seed_base


def test_pins(registry: Registry) -> None:
    seed_base(registry)
    v1 = add_version(registry, SHA_A)
    with registry.session() as s:
        reg.pin(s, v1)
        reg.pin(s, v1)
    with registry.session() as s:
        assert reg.list_pins(s) == [v1]
        reg.unpin(s, v1)
    with registry.session() as s:
        assert reg.list_pins(s) == []
