"""`services.evaluator.policy_store`: a gate policy is parsed by the evaluator's own rules before
the registry stores it, with its parsed body and ``Policy.sha256()``."""

from __future__ import annotations

import json

import pytest

from services.evaluator import policy_store
from services.evaluator.policy import parse_policy
from shared.errors import NotFoundError, ValidationError
from shared.registry.db import Registry

TEXT = "min_items: 5\nmetrics:\n  exact_match: {min: 0.5}\n"


def test_text_and_mapping_of_one_policy_are_one_version_with_the_parsed_body(
    bare_registry: Registry,
) -> None:
    parsed = parse_policy(TEXT)
    first = policy_store.register_policy(bare_registry, "shop-gate", TEXT, actor="ci")
    assert first["object"] == "gate_policy"
    assert (first["name"], first["version"], first["actor"]) == ("shop-gate", 1, "ci")
    assert first["sha256"] == parsed.sha256()
    assert first["body"] == parsed.model_dump(mode="json")  # defaults filled in, not the raw text
    assert first["created_at"] is not None
    mapping = {"min_items": 5, "metrics": {"exact_match": {"min": 0.5}}}
    again = policy_store.register_policy(bare_registry, "shop-gate", mapping, actor="other")
    assert (again["version"], again["sha256"], again["actor"]) == (1, parsed.sha256(), "ci")
    # What is stored parses back to the same hash.
    assert parse_policy(json.dumps(first["body"])).sha256() == first["sha256"]


def test_new_content_is_the_next_version_and_each_version_stays_readable(
    bare_registry: Registry,
) -> None:
    policy_store.register_policy(bare_registry, "shop-gate", TEXT, actor="ci")
    stricter = TEXT.replace("0.5", "0.7")
    second = policy_store.register_policy(bare_registry, "shop-gate", stricter, actor="ci")
    assert second["version"] == 2 and second["sha256"] == parse_policy(stricter).sha256()
    assert policy_store.get_policy(bare_registry, "shop-gate")["version"] == 2
    old = policy_store.get_policy(bare_registry, "shop-gate", 1)
    assert old["sha256"] == parse_policy(TEXT).sha256()
    with pytest.raises(NotFoundError, match="'shop-gate@3' is not registered"):
        policy_store.get_policy(bare_registry, "shop-gate", 3)


def test_an_invalid_policy_or_name_stores_nothing(bare_registry: Registry) -> None:
    bad = "metrics:\n  bleurt: {min: 0.1}\n"
    with pytest.raises(ValidationError, match=r"policy shop-gate line 2: metrics\.bleurt"):
        policy_store.register_policy(bare_registry, "shop-gate", bad, actor="ci")
    with pytest.raises(ValidationError, match=r"policy shop-gate.*unknown metric"):
        policy_store.register_policy(
            bare_registry, "shop-gate", {"metrics": {"bleurt": {"min": 0.1}}}, actor="ci"
        )
    with pytest.raises(NotFoundError):
        policy_store.get_policy(bare_registry, "shop-gate")
    with pytest.raises(ValidationError, match="policy name 'Shop Gate' is invalid") as err:
        policy_store.get_policy(bare_registry, "Shop Gate")
    assert err.value.param == "name"
