"""`shared.registry.adapters` on SQLite and PostgreSQL: alias compare-and-set, history and rollback."""

from __future__ import annotations

import threading

import pytest

from shared.errors import ConflictError, NotFoundError
from shared.registry import adapters as reg
from shared.registry.db import Registry
from tests.shared.registry.seed import SHA_A, SHA_B, SHA_C, add_version, seed_base


def test_unknown_base_model_is_refused(registry: Registry) -> None:
    with pytest.raises(NotFoundError, match="base model 'nope'"), registry.session() as s:
        reg.register_version(
            s, reg.NewVersion("bot", SHA_A, "nope", rank=8, size_bytes=1, manifest={})
        )


def test_alias_compare_and_set_and_history(registry: Registry) -> None:
    seed_base(registry)
    v1, v2 = add_version(registry, SHA_A), add_version(registry, SHA_B)
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
    seed_base(registry)
    v1, v2, v3 = (add_version(registry, sha) for sha in (SHA_A, SHA_B, SHA_C))
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
    seed_base(registry)
    v1, v2, v3 = (add_version(registry, sha) for sha in (SHA_A, SHA_B, SHA_C))
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
    seed_base(registry)
    v1, v2 = add_version(registry, SHA_A), add_version(registry, SHA_B)
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
    seed_base(registry)
    v1 = add_version(registry, SHA_A)
    with registry.session() as s:
        reg.set_alias(s, "bot", "prod", v1)
    with pytest.raises(ConflictError, match="no earlier version"), registry.session() as s:
        reg.rollback_alias(s, "bot", "prod")
