"""`services.server.names`: the kinds of model name, and the name table's lookups."""

from __future__ import annotations

from services.server.names import BASE, NameTable, Target, parse_name
from tests.server.fakes import make_info


def test_parse_name_kinds() -> None:
    assert parse_name("base", "base").kind == "base"
    assert parse_name("bot@v3", "base").version_id == "bot@v3"
    p = parse_name("bot", "base")
    assert (p.kind, p.adapter, p.alias) == ("alias", "bot", "prod")
    p = parse_name("bot:canary", "base")
    assert (p.kind, p.adapter, p.alias) == ("alias", "bot", "canary")


def test_table_lookup() -> None:
    v1 = make_info("bot@v1")
    table = NameTable("base", {"bot@v1": v1}, {("bot", "prod"): "bot@v1"})
    assert table.lookup("base") is BASE
    assert table.lookup("bot") == Target(v1)
    assert table.lookup("bot:prod") == Target(v1)
    assert table.lookup("bot@v1") == Target(v1)
    assert table.lookup("bot@v2") is None
    assert table.lookup("bot:canary") is None
    assert [n for n, _, _ in table.alias_names()] == ["bot:prod", "bot"]


def test_a_full_version_is_a_target_of_its_own_kind() -> None:
    import dataclasses

    full = dataclasses.replace(make_info("big@v1"), kind="full")
    assert Target(full).is_full and not Target(full).is_base
    assert not Target(make_info("bot@v1")).is_full and not BASE.is_full
    table = NameTable("base", {"big@v1": full}, {("big", "prod"): "big@v1"})
    assert table.lookup("big") == Target(full)
