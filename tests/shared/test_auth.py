"""`shared.auth`: keys looked up by hash, scopes and adapter patterns, loopback-only without keys,
and route rules."""

from __future__ import annotations

import pytest

from shared.auth import LOCAL, KeyRing, Principal, bearer, check_bind, is_loopback, rule
from shared.errors import AuthError, ConfigError, ForbiddenError

CI = Principal("ci", frozenset({"train"}), ("shop-*",))


def test_a_key_authenticates_its_principal_and_only_a_bearer_key_counts() -> None:
    ring = KeyRing([("k-ci", CI), ("k-admin", Principal("admin", frozenset({"admin"})))])
    assert ring.authenticate("Bearer k-ci") is CI
    assert ring.authenticate("bearer  k-admin ").name == "admin"
    with pytest.raises(AuthError, match="missing API key"):
        ring.authenticate("Basic k-ci")
    with pytest.raises(AuthError, match="invalid API key"):
        ring.authenticate("Bearer nope")
    assert bearer(None) is None and bearer("Bearer ") is None
    assert KeyRing([]).authenticate(None) is LOCAL


def test_key_names_are_unique() -> None:
    with pytest.raises(ConfigError, match="repeated: ci"):
        KeyRing([("a", CI), ("b", CI)])


def test_a_principal_needs_the_scope_and_the_adapter_name() -> None:
    CI.require("train", "shop-eu")
    with pytest.raises(ForbiddenError, match="lacks the 'promote' scope"):
        CI.require("promote")
    with pytest.raises(ForbiddenError, match="may not touch adapter 'bank'"):
        CI.require("train", "bank")
    assert Principal("admin", frozenset({"admin"})).has("promote")


def test_without_keys_only_loopback_is_allowed() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("[::1]") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("")
    check_bind("trainer", "127.0.0.1", KeyRing([]))
    check_bind("trainer", "0.0.0.0", KeyRing([("k", CI)]))
    with pytest.raises(ConfigError, match=r"refusing to listen on 0\.0\.0\.0"):
        check_bind("trainer", "0.0.0.0", KeyRing([]))


def test_a_rule_matches_the_whole_path_and_knows_its_scopes() -> None:
    r = rule("GET POST", r"/v1/jobs(/[^/]+)?", "train")
    assert r.pattern.match("/v1/jobs/abc") and not r.pattern.match("/v1/jobs/abc/x")
    assert r.methods == frozenset({"GET", "POST"}) and r.scopes == ("train",)
    assert rule("GET", "/health").scopes is None
    with pytest.raises(ValueError, match="unknown scope 'trian'"):
        rule("GET", "/x", "trian")
