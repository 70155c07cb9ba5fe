"""`shared.registry.policies`: policy names and references are checked before any lookup."""

from __future__ import annotations

import pytest

from shared.errors import ValidationError
from shared.registry.db import Registry
from shared.registry.policies import (
    check_policy_name,
    get_protection,
    parse_policy_ref,
    protect_alias,
    register_policy,
)
from tests.shared.registry.seed import seed_base


@pytest.mark.parametrize(
    ("ref", "expected"),
    [("shop", ("shop", None)), ("shop@3", ("shop", 3)), (" shop.v2@v12 ", ("shop.v2", 12))],
)
def test_a_reference_is_a_name_with_an_optional_version(
    ref: str, expected: tuple[str, int | None]
) -> None:
    assert parse_policy_ref(ref) == expected


@pytest.mark.parametrize("ref", ["shop@", "shop@v0", "shop@x", "Shop", "-shop", "a" * 129])
def test_a_bad_reference_names_the_parameter(ref: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_policy_ref(ref, param="gate_policy")
    assert caught.value.param == "gate_policy"


def test_a_valid_name_is_returned_unchanged() -> None:
    assert check_policy_name("a" * 128) == "a" * 128


def test_first_baseline_may_list_several_baselines(registry: Registry) -> None:
    seed_base(registry)
    with registry.session() as s:
        register_policy(s, "gate", {"rules": []}, "e" * 64, actor="admin")
        row = protect_alias(
            s, "bot", "prod", "gate", first_baseline=" base , tiny+fewshot:4", actor="admin"
        )
        assert row.first_baseline == "base,tiny+fewshot:4"


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("base,base", "several different ones separated by commas"),
        (" , ", "name one baseline"),
        ("base,nope", "first_baseline 'nope' is not 'base'"),
        ("base,base+fewshot:40", "the number of examples must be 1-16"),
    ],
)
def test_a_bad_first_baseline_list_is_refused_and_nothing_stored(
    registry: Registry, value: str, why: str
) -> None:
    seed_base(registry)
    with registry.session() as s:
        register_policy(s, "gate", {"rules": []}, "e" * 64, actor="admin")
    with pytest.raises(ValidationError, match=why) as caught, registry.session() as s:
        protect_alias(s, "bot", "prod", "gate", first_baseline=value, actor="admin")
    assert caught.value.param == "first_baseline"
    with registry.session() as s:
        assert get_protection(s, "bot", "prod") is None
