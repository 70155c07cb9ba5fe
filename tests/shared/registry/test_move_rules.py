"""`shared.registry.move_rules`: a move to another base model, or onto a protected alias without
passing evidence, is refused with the reason."""

from __future__ import annotations

import pytest

from shared.errors import ConflictError, ForbiddenError, ValidationError
from shared.registry.db import Registry
from shared.registry.models import AdapterVersionRow, EvaluationRunRow, ProtectedAliasRow
from shared.registry.move_rules import check_evidence, check_target
from shared.registry.versions import FULL_KIND
from tests.shared.registry.seed import SHA_A, SHA_B, add_version, seed_base

PROTECTION = ProtectedAliasRow(
    adapter_name="bot",
    alias="prod",
    policy_name="shop",
    policy_version=1,
    policy_sha256="e" * 64,
    first_baseline="base",
)


def test_a_target_on_another_base_is_refused_and_each_difference_listed(
    registry: Registry,
) -> None:
    seed_base(registry)
    vid = add_version(registry, SHA_A)
    with registry.session() as s:
        target = s.get(AdapterVersionRow, vid)
        assert target is not None
        check_target(s, "bot:prod", target, None, ("tiny", "f" * 64))  # same base: no error
        with pytest.raises(ConflictError) as caught:
            check_target(s, "bot:prod", target, None, ("other", "0" * 64))
    assert caught.value.code == "base_model_mismatch"
    assert caught.value.details == [
        "adapter name 'bot' is bound to 'other' (weights 000000000000), the base of its first "
        "version"
    ]


def test_a_full_model_is_a_target_without_lora_settings_but_not_a_rank_zero_adapter(
    registry: Registry,
) -> None:
    seed_base(registry)
    full = add_version(registry, SHA_A, "big", rank=0, manifest={"kind": FULL_KIND})
    broken = add_version(registry, SHA_B, "bot", rank=0)
    with registry.session() as s:
        target = s.get(AdapterVersionRow, full)
        assert target is not None
        check_target(s, "big:prod", target, None, None)  # its files are checked elsewhere
        # The base identity rule still holds for it.
        with pytest.raises(ConflictError, match="bound to"):
            check_target(s, "big:prod", target, None, ("other", "0" * 64))
        adapter = s.get(AdapterVersionRow, broken)
        assert adapter is not None
        with pytest.raises(ValidationError) as caught:
            check_target(s, "bot:prod", adapter, None, None)
    assert caught.value.code == "adapter_not_servable"


@pytest.mark.parametrize(
    ("run_id", "why"),
    [(None, "no evaluation_run_id was given"), ("run-x", "evaluation run-x does not exist")],
)
def test_a_protected_move_without_a_passing_run_is_forbidden(
    registry: Registry, run_id: str | None, why: str
) -> None:
    seed_base(registry)
    vid = add_version(registry, SHA_A)
    with registry.session() as s:
        target = s.get(AdapterVersionRow, vid)
        assert target is not None
        with pytest.raises(ForbiddenError, match=f"protected by policy shop@1 .*: {why}"):
            check_evidence(s, "bot:prod", PROTECTION, target, None, run_id)


# A first release that must beat the better of the base model zero-shot and shown 4 examples.
BEST_OF = ProtectedAliasRow(
    adapter_name="bot",
    alias="prod",
    policy_name="shop",
    policy_version=1,
    policy_sha256="e" * 64,
    first_baseline="base,base+fewshot:4",
)


def _run(
    registry: Registry,
    run_id: str,
    candidate: str,
    baseline: str,
    *,
    decision: str = "pass",
    policy_sha256: str = "e" * 64,
) -> None:
    with registry.session() as s:
        s.add(
            EvaluationRunRow(
                id=run_id,
                status="succeeded",
                candidate=candidate,
                baseline=baseline,
                decision=decision,
                candidate_version=candidate,
                baseline_version=baseline,
                policy_sha256=policy_sha256,
            )
        )


def _move(registry: Registry, vid: str, run_id: str) -> None:
    with registry.session() as s:
        target = s.get(AdapterVersionRow, vid)
        assert target is not None
        check_evidence(s, "bot:prod", BEST_OF, target, None, run_id)


def test_a_first_release_against_several_baselines_needs_a_pass_against_each(
    registry: Registry,
) -> None:
    seed_base(registry)
    vid = add_version(registry, SHA_A)
    _run(registry, "few", vid, "tiny+fewshot:4")
    with pytest.raises(ForbiddenError) as caught:
        _move(registry, vid, "few")
    assert (
        f"evaluation few passed against tiny+fewshot:4, but no evaluation of {vid} has passed "
        "against base under that policy yet" in caught.value.message
    )
    assert "against base and against base+fewshot:4 under that policy" in caught.value.message
    # What does not count as the other pass: a fail, or a pass under another policy.
    _run(registry, "zero-fail", vid, "tiny", decision="fail")
    _run(registry, "zero-other", vid, "tiny", policy_sha256="d" * 64)
    with pytest.raises(ForbiddenError, match="has passed against base under that policy yet"):
        _move(registry, vid, "few")
    _run(registry, "zero", vid, "tiny")
    _move(registry, vid, "few")  # both passed: the move is allowed, by either run's id
    _move(registry, vid, "zero")


def test_a_pass_against_a_baseline_not_listed_moves_nothing(registry: Registry) -> None:
    seed_base(registry)
    vid = add_version(registry, SHA_A)
    _run(registry, "zero", vid, "tiny")
    _run(registry, "eight", vid, "tiny+fewshot:8")
    with pytest.raises(ForbiddenError, match="compared with tiny\\+fewshot:8, not base or base"):
        _move(registry, vid, "eight")
