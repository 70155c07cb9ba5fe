"""Revision 0002 (the trust model): down to 0001 and back up keeps the immutability triggers."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from shared.registry import adapters as reg
from shared.registry.db import open_registry
from shared.settings import SharedSettings
from tests.shared.registry.seed import SHA_A, add_version, seed_base


def test_trust_model_migration_downgrades_and_upgrades_keeping_triggers(
    registry_settings: SharedSettings,
) -> None:
    from alembic import command

    from shared.registry.db import alembic_config

    open_registry(registry_settings).dispose()
    config = alembic_config(registry_settings.database_url)
    command.downgrade(config, "0001")
    command.upgrade(config, "head")
    registry = open_registry(registry_settings)
    try:
        tables = set(sa.inspect(registry.engine).get_table_names())
        assert {"gate_policies", "protected_aliases", "protection_events"} <= tables
        seed_base(registry)
        v1 = add_version(registry, SHA_A)
        with registry.session() as s:
            reg.set_alias(s, "bot", "prod", v1)
        # alias_events was altered (forced column) twice: its immutability triggers survived.
        for statement in ("UPDATE alias_events SET actor = 'x'", "DELETE FROM alias_events"):
            with pytest.raises(DBAPIError, match="immutable"), registry.engine.begin() as conn:
                conn.execute(sa.text(statement))
    finally:
        registry.dispose()
