"""`shared.registry.policies`: policy names and references are checked before any lookup."""

from __future__ import annotations

import pytest

from shared.errors import ValidationError
from shared.registry.policies import check_policy_name, parse_policy_ref


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
