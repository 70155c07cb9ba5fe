"""Revision 0001 on SQLite and PostgreSQL: every table, and version rows the database itself keeps
immutable and unique."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from shared.registry import adapters as reg
from shared.registry.db import Registry
from tests.shared.registry.seed import SHA_A, SHA_C, add_version, seed_base


def test_migrations_from_empty_create_every_table(registry: Registry) -> None:
    tables = set(sa.inspect(registry.engine).get_table_names())
    assert {
        "base_models",
        "datasets",
        "training_jobs",
        "job_events",
        "adapters",
        "adapter_versions",
        "aliases",
        "alias_events",
        "pins",
        "evaluation_runs",
        "metric_results",
        "item_records",
        "gate_policies",
        "protected_aliases",
        "protection_events",
        "alembic_version",
    } <= tables


@pytest.mark.parametrize(
    "statement", ["UPDATE adapter_versions SET sha256 = :sha", "DELETE FROM adapter_versions"]
)
def test_version_rows_refuse_changes_in_the_database(registry: Registry, statement: str) -> None:
    seed_base(registry)
    vid = add_version(registry, SHA_A)
    with pytest.raises(DBAPIError, match="immutable"), registry.engine.begin() as conn:
        conn.execute(sa.text(statement), {"sha": SHA_C})
    with registry.session() as s:
        assert reg.get_version(s, vid).sha256 == SHA_A


def test_second_write_of_a_version_number_with_other_content_is_refused(
    registry: Registry,
) -> None:
    seed_base(registry)
    add_version(registry, SHA_A)
    with pytest.raises(DBAPIError), registry.engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO adapter_versions (id, adapter_name, version, sha256, base_model, "
                "base_model_sha256, rank, size_bytes, manifest, created_at) VALUES "
                "('bot@v1b', 'bot', 1, :sha, 'tiny', :sha, 8, 1, '{}', CURRENT_TIMESTAMP)"
            ),
            {"sha": SHA_C},
        )
