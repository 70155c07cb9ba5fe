"""`shared.registry.models`: the ORM matches the migrations, and refuses to change a version row."""

from __future__ import annotations

import pytest

from shared.registry import adapters as reg
from shared.registry.db import Registry
from shared.registry.models import AdapterVersionRow
from tests.shared.registry.seed import SHA_A, SHA_C, add_version, seed_base


def test_models_match_the_migrations(registry: Registry) -> None:
    """What the ORM declares is what the migrations build (a column added to one and not the
    other fails here)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from shared.registry.models import Base

    with registry.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_version_rows_refuse_changes_through_the_orm(registry: Registry) -> None:
    seed_base(registry)
    vid = add_version(registry, SHA_A)
    with pytest.raises(PermissionError, match="immutable"), registry.session() as s:
        s.get(AdapterVersionRow, vid).sha256 = SHA_C  # type: ignore[union-attr]
    with registry.session() as s:
        assert reg.get_version(s, vid).sha256 == SHA_A
