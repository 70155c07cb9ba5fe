"""`shared.registry.move_rules`: a move to another base model, or onto a protected alias without
passing evidence, is refused with the reason."""

from __future__ import annotations

import pytest

from shared.errors import ConflictError, ForbiddenError
from shared.registry.db import Registry
from shared.registry.models import AdapterVersionRow, ProtectedAliasRow
from shared.registry.move_rules import check_evidence, check_target
from tests.shared.registry.seed import SHA_A, add_version, seed_base

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
