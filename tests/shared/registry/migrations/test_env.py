"""`shared.registry.migrations.env`: Alembic runs it against the URL the caller put in the config."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from shared.registry.db import MIGRATIONS_DIR, alembic_config


def test_upgrade_builds_the_schema_at_the_configured_url(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    command.upgrade(alembic_config(url), "head")
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
        assert "adapter_versions" in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_a_config_without_a_url_is_refused() -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with pytest.raises(AssertionError, match=r"sqlalchemy\.url must be set"):
        command.upgrade(config, "head")
