"""Protected aliases and safe alias moves: each test performs the attack on the registry's move
transaction (the one every path goes through) and asserts it fails with a 4xx and nothing stored
changed; then the same through the server's admin API and the CLI.

Runs on SQLite and PostgreSQL (the ``registry`` fixture).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner

from shared.errors import ConflictError, ForbiddenError, LoraplexError, ValidationError
from shared.registry import adapters as reg
from shared.registry import policies
from shared.registry.db import Registry
from shared.registry.models import (
    AdapterVersionRow,
    AliasEventRow,
    BaseModelRow,
    EvaluationRunRow,
    GatePolicyRow,
    ProtectionEventRow,
)
from tests.server.conftest import Stack, build_stack, stop_stack

BASE, BASE_SHA = "tiny", "f" * 64
OTHER, OTHER_SHA = "other", "e" * 64
POLICY_SHA = "1" * 64  # what the evaluator's Policy.sha256() gave for the registered policy
CALLER_SHA = "2" * 64  # a caller-written policy's hash
GATE_POLICY = {"metrics": {"json_match": {"min_delta": 0.3}}, "min_items": 100}


def _sha(n: int) -> str:
    return f"{n:064x}"


def _version(
    registry: Registry, n: int, *, name: str = "bot", rank: int = 8, manifest: Any = None
) -> str:
    with registry.session() as s:
        row, _ = reg.register_version(
            s, reg.NewVersion(name, _sha(n), BASE, rank, 1, manifest or {})
        )
        return row.id


def _run(
    registry: Registry,
    run_id: str,
    candidate: str,
    baseline: str | None,
    *,
    policy_sha: str = POLICY_SHA,
    status: str = "succeeded",
    decision: str = "pass",
) -> str:
    """An evaluation row as the evaluator stores it (its worker fills these columns)."""
    with registry.session() as s:
        s.add(
            EvaluationRunRow(
                id=run_id,
                status=status,
                candidate=candidate,
                baseline=baseline,
                decision=decision,
                candidate_version=candidate,
                baseline_version=baseline,
                policy_sha256=policy_sha,
            )
        )
    return run_id


@pytest.fixture
def world(registry: Registry) -> dict[str, str]:
    """bot@v1..v3 on ``tiny``; ``bot:prod`` on v1, protected by ``extraction-gate@1``."""
    with registry.session() as s:
        s.add(BaseModelRow(name=BASE, weights_sha256=BASE_SHA, path="/m", source="test"))
        s.add(BaseModelRow(name=OTHER, weights_sha256=OTHER_SHA, path="/o", source="test"))
    v1, v2, v3 = (_version(registry, n) for n in (1, 2, 3))
    with registry.session() as s:
        reg.set_alias(s, "bot", "prod", v1, actor="setup")
        policies.register_policy(s, "extraction-gate", GATE_POLICY, POLICY_SHA, actor="admin")
        policies.protect_alias(s, "bot", "prod", "extraction-gate", actor="admin")
    return {"v1": v1, "v2": v2, "v3": v3}


def _state(registry: Registry) -> tuple[str | None, int, int, int]:
    """What an attack must leave as it was: where prod points, its revision, events, versions."""
    with registry.session() as s:
        alias = reg.get_alias(s, "bot", "prod")
        events = s.scalar(sa.select(sa.func.count()).select_from(AliasEventRow))
        versions = s.scalar(sa.select(sa.func.count()).select_from(AdapterVersionRow))
        return (
            alias.version_id if alias else None,
            alias.revision if alias else 0,
            int(events or 0),
            int(versions or 0),
        )


def _refused(
    registry: Registry,
    error: type[LoraplexError],
    match: str,
    attack: Callable[[Any], object],
) -> LoraplexError:
    before = _state(registry)
    with pytest.raises(error, match=match) as info, registry.session() as s:
        attack(s)
    assert 400 <= info.value.status_code < 500
    assert _state(registry) == before, "a refused move changed what is stored"
    return info.value


def _move(to: str, **kwargs: Any) -> Callable[[Any], object]:
    return lambda s: reg.set_alias(s, "bot", "prod", to, actor="mallory", **kwargs)


# -- rule (b): a protected alias moves only on evidence ---------------------------------------


def test_protected_alias_refuses_a_move_without_evidence(
    registry: Registry, world: dict[str, str]
) -> None:
    err = _refused(registry, ForbiddenError, "no evaluation_run_id", _move(world["v2"]))
    assert err.status_code == 403 and "extraction-gate@1" in err.message


def test_protected_alias_refuses_evidence_under_a_caller_written_policy(
    registry: Registry, world: dict[str, str]
) -> None:
    # The evaluator registers whatever policy a caller sent (here: one that passes anything),
    # even under the protection's own name: it becomes extraction-gate@2, with another hash.
    with registry.session() as s:
        row = policies.register_policy(
            s, "extraction-gate", {"metrics": {"json_valid": {"min": 0}}}, CALLER_SHA, actor="ci"
        )
        assert row.version == 2
    run = _run(registry, "eval-caller", world["v2"], world["v1"], policy_sha=CALLER_SHA)
    _refused(
        registry,
        ForbiddenError,
        "gated under policy sha256 222222222222, not the protection's",
        _move(world["v2"], evaluation_run_id=run),
    )


def test_protected_alias_refuses_evidence_against_the_wrong_baseline(
    registry: Registry, world: dict[str, str]
) -> None:
    # v2 beat the bare base model, not v1 (which prod serves): no evidence it is no worse than v1.
    run = _run(registry, "eval-vs-base", world["v2"], "base")
    _refused(
        registry,
        ForbiddenError,
        f"compared with base, not {world['v1']}",
        _move(world["v2"], evaluation_run_id=run),
    )


def test_protected_alias_refuses_evidence_for_another_version(
    registry: Registry, world: dict[str, str]
) -> None:
    run = _run(registry, "eval-v3", world["v3"], world["v1"])
    _refused(
        registry,
        ForbiddenError,
        f"evaluated {world['v3']}, not {world['v2']}",
        _move(world["v2"], evaluation_run_id=run),
    )


@pytest.mark.parametrize(
    ("status", "decision", "match"),
    [
        ("succeeded", "inconclusive", "decided inconclusive, not pass"),
        ("succeeded", "fail", "decided fail, not pass"),
        ("running", "pass", "is running, not succeeded"),
    ],
)
def test_protected_alias_refuses_evidence_that_did_not_pass(
    registry: Registry, world: dict[str, str], status: str, decision: str, match: str
) -> None:
    run = _run(registry, "eval-x", world["v2"], world["v1"], status=status, decision=decision)
    _refused(registry, ForbiddenError, match, _move(world["v2"], evaluation_run_id=run))


def test_protected_alias_refuses_an_unknown_evaluation(
    registry: Registry, world: dict[str, str]
) -> None:
    _refused(
        registry, ForbiddenError, "does not exist", _move(world["v2"], evaluation_run_id="eval-?")
    )


def test_force_without_a_reason_is_refused(registry: Registry, world: dict[str, str]) -> None:
    for reason in ("", "   "):
        _refused(
            registry,
            ValidationError,
            "force needs a reason",
            _move(world["v2"], force=True, reason=reason),
        )


def test_rollback_of_a_protected_alias_needs_a_reason(
    registry: Registry, world: dict[str, str]
) -> None:
    with registry.session() as s:
        reg.set_alias(s, "bot", "prod", world["v2"], force=True, reason="hotfix", actor="oncall")
    _refused(
        registry,
        ForbiddenError,
        "a rollback needs a reason",
        lambda s: reg.rollback_alias(s, "bot", "prod", actor="mallory"),
    )


# -- rule (a): every move, protected or not ---------------------------------------------------


def _foreign_version(registry: Registry) -> str:
    """A ``bot`` version on another base, as a row written before the binding rule (or by a raw
    SQL client): register_version itself refuses to make one."""
    with registry.session() as s:
        s.add(
            AdapterVersionRow(
                id="bot@v9",
                adapter_name="bot",
                version=9,
                sha256=_sha(9),
                base_model=OTHER,
                base_model_sha256=OTHER_SHA,
                rank=8,
                size_bytes=1,
                manifest={},
            )
        )
    return "bot@v9"


@pytest.mark.parametrize("protected", [True, False])
def test_a_move_to_another_base_is_refused_even_forced_with_evidence(
    registry: Registry, world: dict[str, str], protected: bool
) -> None:
    foreign = _foreign_version(registry)
    if not protected:
        with registry.session() as s:
            policies.unprotect_alias(s, "bot", "prod", actor="admin", reason="test")
    run = _run(registry, "eval-foreign", foreign, world["v1"])
    for kwargs in ({}, {"evaluation_run_id": run}, {"force": True, "reason": "trust me"}):
        err = _refused(registry, ConflictError, "base model 'other'", _move(foreign, **kwargs))
        assert err.code == "base_model_mismatch"
        assert any("bound to 'tiny'" in d for d in err.details)
        assert any(f"the alias serves {world['v1']}" in d for d in err.details)


@pytest.mark.parametrize(
    ("rank", "manifest", "match"),
    [
        (1024, {}, "above the server's max LoRA rank 512"),
        (8, {"config": {"spec": {"lora": {"r": 8, "use_dora": True}}}}, "DoRA"),
        (8, {"adapter_config": {"r": 8, "bias": "all"}}, "bias"),
    ],
)
@pytest.mark.parametrize("protected", [True, False])
def test_a_move_to_an_unservable_version_is_refused_even_forced(
    registry: Registry,
    world: dict[str, str],
    protected: bool,
    rank: int,
    manifest: dict[str, Any],
    match: str,
) -> None:
    bad = _version(registry, 7, rank=rank, manifest=manifest)
    if not protected:
        with registry.session() as s:
            policies.unprotect_alias(s, "bot", "prod", actor="admin", reason="test")
    run = _run(registry, "eval-bad", bad, world["v1"])
    for kwargs in ({"evaluation_run_id": run}, {"force": True, "reason": "trust me"}):
        err = _refused(registry, ValidationError, match, _move(bad, **kwargs))
        assert err.code == "adapter_not_servable"


def test_a_foreign_base_under_an_existing_name_is_refused(
    registry: Registry, world: dict[str, str]
) -> None:
    err = _refused(
        registry,
        ConflictError,
        "adapter name 'bot' is bound to base model 'tiny'",
        lambda s: reg.register_version(s, reg.NewVersion("bot", _sha(8), OTHER, 8, 1, {})),
    )
    assert err.code == "base_model_mismatch"
    # The same content under a new name is fine: a name is bound, not a base.
    with registry.session() as s:
        _row, created = reg.register_version(
            s, reg.NewVersion("bot-other", _sha(8), OTHER, 8, 1, {})
        )
        assert created and reg.bound_base_model(s, "bot-other") == OTHER


# -- what is allowed, and recorded ------------------------------------------------------------


def test_passing_evidence_moves_a_protected_alias_and_is_recorded(
    registry: Registry, world: dict[str, str]
) -> None:
    run = _run(registry, "eval-ok", world["v2"], world["v1"])
    with registry.session() as s:
        reg.set_alias(
            s,
            "bot",
            "prod",
            world["v2"],
            expected=world["v1"],
            evaluation_run_id=run,
            actor="loraplex-gate",
            reason="gate pass",
        )
    with registry.session() as s:
        assert reg.resolve(s, "bot:prod").id == world["v2"]
        last = reg.alias_history(s, "bot", "prod")[0]
        assert (last.actor, last.evaluation_run_id, last.forced) == ("loraplex-gate", run, False)
    # The next move needs evidence against v2 now: the same run no longer fits.
    _refused(
        registry,
        ForbiddenError,
        f"evaluated {world['v2']}, not {world['v3']}",
        _move(world["v3"], evaluation_run_id=run),
    )


def test_force_with_a_reason_moves_and_is_recorded_as_forced(
    registry: Registry, world: dict[str, str]
) -> None:
    with registry.session() as s:
        reg.set_alias(
            s,
            "bot",
            "prod",
            world["v3"],
            force=True,
            reason="incident 42: v1 leaks PII",
            actor="oncall",
        )
    with registry.session() as s:
        reg.rollback_alias(s, "bot", "prod", actor="oncall", reason="v3 is slower")
    with registry.session() as s:
        assert reg.resolve(s, "bot:prod").id == world["v1"]
        rollback, forced, first = reg.alias_history(s, "bot", "prod")
        assert (forced.actor, forced.reason, forced.forced) == (
            "oncall",
            "incident 42: v1 leaks PII",
            True,
        )
        assert forced.evaluation_run_id is None
        assert rollback.forced and rollback.reason == f"rollback from {world['v3']}: v3 is slower"
        assert first.forced is False  # before the protection


def test_first_release_of_a_protected_alias_needs_evidence_against_its_first_baseline(
    registry: Registry, world: dict[str, str]
) -> None:
    with registry.session() as s:
        policies.protect_alias(s, "bot", "canary", "extraction-gate", actor="admin")
    wrong = _run(registry, "eval-v1", world["v2"], world["v1"])
    with (
        pytest.raises(ForbiddenError, match="compared with bot@v1, not base"),
        registry.session() as s,
    ):
        reg.set_alias(s, "bot", "canary", world["v2"], evaluation_run_id=wrong)
    # The evaluator's token for the bare base model, or the base model's registry name.
    for run_id, baseline in (("eval-base", "base"), ("eval-tiny", BASE)):
        _run(registry, run_id, world["v2"], baseline)
    with registry.session() as s:
        reg.set_alias(s, "bot", "canary", world["v2"], evaluation_run_id="eval-tiny")
        assert reg.get_alias(s, "bot", "canary") is not None
    # A first baseline no evaluation could name (a typo) is refused up front.
    with pytest.raises(ValidationError, match="first_baseline 'bsae'"), registry.session() as s:
        policies.protect_alias(
            s, "bot", "beta", "extraction-gate", first_baseline="bsae", actor="a"
        )
    # A protection may name another first baseline (here: an adapter version).
    with registry.session() as s:
        policies.protect_alias(
            s, "bot", "beta", "extraction-gate", first_baseline=world["v1"], actor="admin"
        )
    with pytest.raises(ForbiddenError, match="not bot@v1"), registry.session() as s:
        reg.set_alias(s, "bot", "beta", world["v2"], evaluation_run_id="eval-base")
    with registry.session() as s:
        reg.set_alias(s, "bot", "beta", world["v2"], evaluation_run_id="eval-v1")


def test_a_few_shot_first_baseline_moves_only_on_that_comparison(
    registry: Registry, world: dict[str, str]
) -> None:
    with pytest.raises(ValidationError, match="bsae\\+fewshot:4"), registry.session() as s:
        policies.protect_alias(
            s, "bot", "gamma", "extraction-gate", first_baseline="bsae+fewshot:4", actor="a"
        )
    with registry.session() as s:
        policies.protect_alias(
            s, "bot", "gamma", "extraction-gate", first_baseline="base+fewshot:4", actor="admin"
        )
    # The zero-shot base and another number of examples are not the comparison it asks for.
    for run_id, baseline in (("eval-zero", BASE), ("eval-two", f"{BASE}+fewshot:2")):
        _run(registry, run_id, world["v2"], baseline)
        with pytest.raises(ForbiddenError, match="not base\\+fewshot:4"), registry.session() as s:
            reg.set_alias(s, "bot", "gamma", world["v2"], evaluation_run_id=run_id)
    assert _state(registry)[0] == world["v1"]
    _run(registry, "eval-four", world["v2"], f"{BASE}+fewshot:4")
    with registry.session() as s:
        reg.set_alias(s, "bot", "gamma", world["v2"], evaluation_run_id="eval-four")
        alias = reg.get_alias(s, "bot", "gamma")
        assert alias is not None and alias.version_id == world["v2"]


def test_a_best_of_first_release_does_not_move_on_one_of_its_baselines(
    registry: Registry, world: dict[str, str]
) -> None:
    # delta must first beat the better of the zero-shot and the few-shot base: the attacker holds
    # a pass against the zero-shot base only (the easier bar), then one under another policy.
    with registry.session() as s:
        policies.protect_alias(
            s, "bot", "delta", "extraction-gate", first_baseline="base,base+fewshot:4", actor="a"
        )

    def move(s: Any) -> object:
        return reg.set_alias(s, "bot", "delta", world["v2"], actor="m", evaluation_run_id="e0")

    _run(registry, "e0", world["v2"], BASE)
    for other_policy in (None, "9" * 64):
        if other_policy:
            _run(registry, "e1", world["v2"], f"{BASE}+fewshot:4", policy_sha=other_policy)
        error = _refused(registry, ForbiddenError, "passed against base\\+fewshot:4", move)
        assert "against base and against base+fewshot:4" in error.message
        with registry.session() as s:
            assert reg.get_alias(s, "bot", "delta") is None
    _run(registry, "e2", world["v2"], f"{BASE}+fewshot:4")
    with registry.session() as s:
        move(s)
        alias = reg.get_alias(s, "bot", "delta")
        assert alias is not None and alias.version_id == world["v2"]


def test_protection_pins_one_policy_version_and_unprotect_is_recorded(
    registry: Registry, world: dict[str, str]
) -> None:
    with registry.session() as s:
        # Registering the same body again is the same version; another body is the next one.
        again = policies.register_policy(s, "extraction-gate", GATE_POLICY, POLICY_SHA, actor="x")
        assert again.version == 1
        newer = policies.register_policy(s, "extraction-gate", {"v": 2}, CALLER_SHA, actor="x")
        assert (newer.version, policies.get_policy(s, "extraction-gate").version) == (2, 2)
        assert policies.get_policy(s, "extraction-gate", 1).sha256 == POLICY_SHA
        protection = policies.get_protection(s, "bot", "prod")
        assert protection is not None
        assert (protection.policy_version, protection.policy_sha256) == (1, POLICY_SHA)
    with pytest.raises(ValidationError, match="needs a reason"), registry.session() as s:
        policies.unprotect_alias(s, "bot", "prod", actor="mallory", reason=" ")
    with registry.session() as s:
        policies.unprotect_alias(s, "bot", "prod", actor="admin", reason="retiring the gate")
    with registry.session() as s:
        assert policies.get_protection(s, "bot", "prod") is None
        events = policies.protection_history(s, "bot", "prod")
        assert [(e.action, e.actor, e.reason) for e in events] == [
            ("unprotect", "admin", "retiring the gate"),
            ("protect", "admin", ""),
        ]
        reg.set_alias(s, "bot", "prod", world["v2"], actor="anyone")  # unprotected again


@pytest.mark.parametrize("table", ["gate_policies", "protection_events", "alias_events"])
@pytest.mark.parametrize("action", ["UPDATE {t} SET actor = 'mallory'", "DELETE FROM {t}"])
def test_policies_and_histories_cannot_be_rewritten_in_the_database(
    registry: Registry, world: dict[str, str], table: str, action: str
) -> None:
    with pytest.raises(DBAPIError, match="immutable"), registry.engine.begin() as conn:
        conn.execute(sa.text(action.format(t=table)))
    with registry.session() as s:
        row = s.scalars(sa.select(GatePolicyRow)).one()
        assert row.actor == "admin"
        with pytest.raises(PermissionError, match="immutable"):
            row.sha256 = CALLER_SHA
            s.flush()
        s.rollback()
    with registry.session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(ProtectionEventRow)) == 1


# -- the same rules through the server's admin API and the CLI --------------------------------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Stack]:
    s = build_stack(tmp_path, engines=1)
    try:
        s.wait_ready()
        yield s
    finally:
        stop_stack(s)


def test_admin_api_protect_move_force_rollback_history(server: Stack) -> None:
    v1 = server.register(server.adapter(), "support")
    v2 = server.register(server.adapter(), "support")
    server.set_alias("support", "prod", v1)
    with server.registry.session() as s:
        policies.register_policy(s, "gate", GATE_POLICY, POLICY_SHA, actor="evaluator")
    path = "/admin/aliases/support/prod"
    with server.client() as c:
        r = c.put(f"{path}/protection", json={"policy": "gate@1", "actor": "alice"})
        assert r.status_code == 200, r.text
        assert r.json()["policy"] == "gate@1" and r.json()["policy_sha256"] == POLICY_SHA
        assert c.put(f"{path}/protection", json={"policy": "nope"}).status_code == 404
        assert c.put(f"{path}/protection", json={"policy": "gate@0"}).status_code == 422
        assert c.get("/admin/aliases/Bad%00/prod/history").status_code == 422

        def unchanged() -> None:
            history = c.get(f"{path}/history").json()
            assert [e["to_version"] for e in history["data"]] == [v1]

        # No evidence, evidence under a caller-written policy, force without a reason.
        assert c.put(path, json={"version": v2}).status_code == 403
        _run(server.registry, "eval-caller", v2, v1, policy_sha=CALLER_SHA)
        r = c.put(path, json={"version": v2, "evaluation_run_id": "eval-caller"})
        assert r.status_code == 403 and "not the protection's" in r.json()["error"]["message"]
        assert c.put(path, json={"version": v2, "force": True}).status_code == 422
        unchanged()
        # Nothing was loaded for a refused move.
        assert not any(v2 in e.loads for e in server.engines)

        _run(server.registry, "eval-ok", v2, v1)
        r = c.put(path, json={"version": v2, "evaluation_run_id": "eval-ok", "actor": "ci"})
        assert r.status_code == 200, r.text
        assert r.json()["forced"] is False and r.json()["served"] == v2

        assert c.post(f"{path}/rollback").status_code == 403
        r = c.post(f"{path}/rollback", json={"reason": "p99 regression", "actor": "oncall"})
        assert r.status_code == 200 and r.json()["version"] == v1 and r.json()["forced"] is True

        history = c.get(f"{path}/history").json()
        assert history["protection"]["policy"] == "gate@1"
        last, moved = history["data"][:2]
        # The actor is the key's name (what the body claims is kept next to it, never alone).
        key_name = moved["actor"].split(" ")[0]
        assert key_name.startswith("admin-key-")
        assert (moved["actor"], moved["evaluation_run_id"], moved["forced"]) == (
            f"{key_name} (ci)",
            "eval-ok",
            False,
        )
        assert (last["actor"], last["forced"]) == (f"{key_name} (oncall)", True)
        assert last["reason"] == f"rollback from {v2}: p99 regression"

        assert c.delete(f"{path}/protection").status_code == 422  # the reason is required
        r = c.delete(f"{path}/protection", params={"reason": "gate retired"})
        assert r.status_code == 200
        assert c.get(f"{path}/history").json()["protection"] is None


def test_cli_protect_and_moves_obey_the_rules(
    registry: Registry, world: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.server.cli import adapters_app

    monkeypatch.setenv("LORAPLEX_DATABASE_URL", registry.url)
    runner = CliRunner()

    def cli(*args: str) -> Any:
        return runner.invoke(adapters_app, list(args), catch_exceptions=False)

    before = _state(registry)
    r = cli("alias", "set", "bot:prod", world["v2"], "--actor", "mallory")
    assert r.exit_code == 3 and "protected by policy extraction-gate@1" in r.output
    r = cli("alias", "set", "bot:prod", world["v2"], "--force")
    assert r.exit_code == 3 and "force needs a reason" in r.output
    assert _state(registry) == before

    r = cli("alias", "set", "bot:prod", world["v2"], "--force", "--reason", "incident 7")
    assert r.exit_code == 0 and "[forced]" in r.output, r.output
    r = cli("alias", "rollback", "bot:prod")
    assert r.exit_code == 3 and "needs a reason" in r.output
    r = cli("alias", "rollback", "bot:prod", "--reason", "undo")
    assert r.exit_code == 0, r.output
    r = cli("unprotect", "bot:prod", "--reason", "handing over")
    assert r.exit_code == 0, r.output
    r = cli("protect", "bot:prod", "--policy", "extraction-gate@1", "--first-baseline", "base")
    assert r.exit_code == 0 and "extraction-gate@1" in r.output, r.output
    r = cli("alias", "history", "bot:prod")
    assert r.exit_code == 0
    assert "protected by extraction-gate@1" in r.output and r.output.count("[forced]") == 2
