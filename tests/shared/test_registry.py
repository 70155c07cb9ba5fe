"""Registry on SQLite and PostgreSQL: migrations, immutable versions, alias compare-and-set."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from shared.errors import ConflictError, NotFoundError, ValidationError
from shared.registry import adapters as reg
from shared.registry.db import Registry, open_registry
from shared.registry.models import AdapterVersionRow, BaseModelRow
from shared.settings import SharedSettings

SHA_A = "a" * 64
SHA_B = "b" * 64
SHA_C = "c" * 64


def _seed_base(registry: Registry) -> None:
    with registry.session() as s:
        s.add(BaseModelRow(name="tiny", weights_sha256="f" * 64, path="/m", source="test"))


def _version(registry: Registry, sha: str, name: str = "bot") -> str:
    with registry.session() as s:
        row, _ = reg.register_version(
            s,
            reg.NewVersion(
                adapter_name=name, sha256=sha, base_model="tiny", rank=8, size_bytes=1, manifest={}
            ),
        )
        return row.id


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


def test_models_match_the_migrations(registry: Registry) -> None:
    """What the ORM declares is what the migrations build (a column added to one and not the
    other fails here)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from shared.registry.models import Base

    with registry.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


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
        _seed_base(registry)
        v1 = _version(registry, SHA_A)
        with registry.session() as s:
            reg.set_alias(s, "bot", "prod", v1)
        # alias_events was altered (forced column) twice: its immutability triggers survived.
        for statement in ("UPDATE alias_events SET actor = 'x'", "DELETE FROM alias_events"):
            with pytest.raises(DBAPIError, match="immutable"), registry.engine.begin() as conn:
                conn.execute(sa.text(statement))
    finally:
        registry.dispose()


def test_migrating_twice_is_a_no_op(registry_settings: SharedSettings) -> None:
    open_registry(registry_settings).dispose()
    again = open_registry(registry_settings)
    with again.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == "0003"
    again.dispose()


def test_versions_are_numbered_and_content_addressed(registry: Registry) -> None:
    _seed_base(registry)
    assert _version(registry, SHA_A) == "bot@v1"
    assert _version(registry, SHA_B) == "bot@v2"
    # Same content again: the existing version, not a third one.
    assert _version(registry, SHA_A) == "bot@v1"
    with registry.session() as s:
        assert [v.id for v in reg.list_versions(s, "bot")] == ["bot@v1", "bot@v2"]
        assert reg.get_version(s, "bot@v1").base_model_sha256 == "f" * 64


def test_version_rows_refuse_changes_through_the_orm(registry: Registry) -> None:
    _seed_base(registry)
    vid = _version(registry, SHA_A)
    with pytest.raises(PermissionError, match="immutable"), registry.session() as s:
        s.get(AdapterVersionRow, vid).sha256 = SHA_C  # type: ignore[union-attr]
    with registry.session() as s:
        assert reg.get_version(s, vid).sha256 == SHA_A


@pytest.mark.parametrize(
    "statement", ["UPDATE adapter_versions SET sha256 = :sha", "DELETE FROM adapter_versions"]
)
def test_version_rows_refuse_changes_in_the_database(registry: Registry, statement: str) -> None:
    _seed_base(registry)
    vid = _version(registry, SHA_A)
    with pytest.raises(DBAPIError, match="immutable"), registry.engine.begin() as conn:
        conn.execute(sa.text(statement), {"sha": SHA_C})
    with registry.session() as s:
        assert reg.get_version(s, vid).sha256 == SHA_A


def test_second_write_of_a_version_number_with_other_content_is_refused(
    registry: Registry,
) -> None:
    _seed_base(registry)
    _version(registry, SHA_A)
    with pytest.raises(DBAPIError), registry.engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO adapter_versions (id, adapter_name, version, sha256, base_model, "
                "base_model_sha256, rank, size_bytes, manifest, created_at) VALUES "
                "('bot@v1b', 'bot', 1, :sha, 'tiny', :sha, 8, 1, '{}', CURRENT_TIMESTAMP)"
            ),
            {"sha": SHA_C},
        )


def test_unknown_base_model_is_refused(registry: Registry) -> None:
    with pytest.raises(NotFoundError, match="base model 'nope'"), registry.session() as s:
        reg.register_version(
            s, reg.NewVersion("bot", SHA_A, "nope", rank=8, size_bytes=1, manifest={})
        )


def test_alias_compare_and_set_and_history(registry: Registry) -> None:
    _seed_base(registry)
    v1, v2 = _version(registry, SHA_A), _version(registry, SHA_B)
    with registry.session() as s:
        reg.set_alias(s, "bot", "prod", v1, expected=None, reason="first")
    with pytest.raises(ConflictError, match="expected nothing"), registry.session() as s:
        reg.set_alias(s, "bot", "prod", v2, expected=None)
    with registry.session() as s:
        reg.set_alias(s, "bot", "prod", v2, expected=v1, evaluation_run_id="eval-1")
    with registry.session() as s:
        assert reg.resolve(s, "bot").id == v2
        assert reg.resolve(s, "bot:prod").id == v2
        history = reg.alias_history(s, "bot", "prod")
        assert [(e.from_version, e.to_version) for e in history] == [(v1, v2), (None, v1)]
        assert history[0].evaluation_run_id == "eval-1"


def test_stale_compare_and_set_changes_nothing(registry: Registry) -> None:
    _seed_base(registry)
    v1, v2, v3 = (_version(registry, sha) for sha in (SHA_A, SHA_B, SHA_C))
    with registry.session() as s:
        reg.set_alias(s, "bot", "prod", v1)
    with registry.session() as s:
        reg.set_alias(s, "bot", "prod", v2, expected=v1)
    with (
        pytest.raises(ConflictError, match="is at bot@v2, expected bot@v1"),
        registry.session() as s,
    ):
        reg.set_alias(s, "bot", "prod", v3, expected=v1)
    with registry.session() as s:
        assert reg.get_alias(s, "bot", "prod").version_id == v2  # type: ignore[union-attr]
        assert len(reg.alias_history(s, "bot", "prod")) == 2


def test_two_concurrent_promoters_one_wins_one_conflicts(registry: Registry) -> None:
    _seed_base(registry)
    v1, v2, v3 = (_version(registry, sha) for sha in (SHA_A, SHA_B, SHA_C))
    with registry.session() as s:
        reg.set_alias(s, "bot", "prod", v1)
    barrier = threading.Barrier(2)
    outcomes: dict[str, str] = {}

    def promote(target: str) -> None:
        barrier.wait()
        try:
            with registry.session() as s:
                reg.set_alias(s, "bot", "prod", target, expected=v1, actor=target)
            outcomes[target] = "won"
        except ConflictError:
            outcomes[target] = "conflict"

    threads = [threading.Thread(target=promote, args=(v,)) for v in (v2, v3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(outcomes.values()) == ["conflict", "won"]
    winner = next(v for v, o in outcomes.items() if o == "won")
    with registry.session() as s:
        assert reg.get_alias(s, "bot", "prod").version_id == winner  # type: ignore[union-attr]
        assert len(reg.alias_history(s, "bot", "prod")) == 2


def test_rollback_puts_the_previous_version_back(registry: Registry) -> None:
    _seed_base(registry)
    v1, v2 = _version(registry, SHA_A), _version(registry, SHA_B)
    with registry.session() as s:
        reg.set_alias(s, "bot", "prod", v1)
    with registry.session() as s:
        reg.set_alias(s, "bot", "prod", v2, expected=v1)
    with registry.session() as s:
        reg.rollback_alias(s, "bot", "prod", actor="oncall")
    with registry.session() as s:
        assert reg.resolve(s, "bot").id == v1
        assert reg.alias_history(s, "bot", "prod")[0].reason == f"rollback from {v2}"


def test_rollback_without_history_is_a_clear_conflict(registry: Registry) -> None:
    _seed_base(registry)
    v1 = _version(registry, SHA_A)
    with registry.session() as s:
        reg.set_alias(s, "bot", "prod", v1)
    with pytest.raises(ConflictError, match="no earlier version"), registry.session() as s:
        reg.rollback_alias(s, "bot", "prod")


def test_names_are_validated(registry: Registry) -> None:
    _seed_base(registry)
    v1 = _version(registry, SHA_A)
    with pytest.raises(ValidationError, match="alias 'Prod!'"), registry.session() as s:
        reg.set_alias(s, "bot", "Prod!", v1)
    with pytest.raises(ValidationError, match=r"adapter name '\.\./x'"):
        reg.check_adapter_name("../x")
    with pytest.raises(NotFoundError, match="no adapter version or alias"), registry.session() as s:
        reg.resolve(s, "ghost:prod")


def test_pins(registry: Registry) -> None:
    _seed_base(registry)
    v1 = _version(registry, SHA_A)
    with registry.session() as s:
        reg.pin(s, v1)
        reg.pin(s, v1)
    with registry.session() as s:
        assert reg.list_pins(s) == [v1]
        reg.unpin(s, v1)
    with registry.session() as s:
        assert reg.list_pins(s) == []


def test_read_session_sees_commits_and_writes_nothing(registry: Registry) -> None:
    _seed_base(registry)
    vid = _version(registry, SHA_A)
    with registry.read_session() as s:
        assert reg.get_version(s, vid).sha256 == SHA_A
        s.add(BaseModelRow(name="ghost", weights_sha256="0" * 64, path="/", source="x"))
        s.flush()
    with registry.session() as s:
        assert s.get(BaseModelRow, "ghost") is None
