"""`shared.registry.db`: opening migrates once, and a read session writes nothing."""

from __future__ import annotations

import sqlalchemy as sa

from shared.registry import adapters as reg
from shared.registry.db import Registry, open_registry
from shared.registry.models import BaseModelRow
from shared.settings import SharedSettings
from tests.shared.registry.seed import SHA_A, add_version, seed_base


def test_migrating_twice_is_a_no_op(registry_settings: SharedSettings) -> None:
    open_registry(registry_settings).dispose()
    again = open_registry(registry_settings)
    with again.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == "0003"
    again.dispose()


def test_read_session_sees_commits_and_writes_nothing(registry: Registry) -> None:
    seed_base(registry)
    vid = add_version(registry, SHA_A)
    with registry.read_session() as s:
        assert reg.get_version(s, vid).sha256 == SHA_A
        s.add(BaseModelRow(name="ghost", weights_sha256="0" * 64, path="/", source="x"))
        s.flush()
    with registry.session() as s:
        assert s.get(BaseModelRow, "ghost") is None
