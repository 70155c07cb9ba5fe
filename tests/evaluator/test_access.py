"""`services.evaluator.access`: what a request may name. Files only under the allowed
directories (links and climbs resolved first), endpoints only by their configured name, a URL only
in the operator's own run, and policies inline, from a file or as a mapping."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.evaluator import access
from services.evaluator.config import Endpoint, EvaluatorSettings
from services.evaluator.policy import parse_policy
from services.evaluator.schemas import EvaluationCreate
from services.evaluator.suite import Suite
from shared.errors import NotFoundError, ValidationError

POLICY = "min_items: 3\nmetrics:\n  exact_match: {min: 0.5}\n"


def with_endpoints(settings: EvaluatorSettings, **urls: str) -> EvaluatorSettings:
    endpoints = {name: Endpoint(url=url, api_key=f"key-of-{name}") for name, url in urls.items()}
    return settings.model_copy(update={"endpoints": endpoints})


def test_inline_policy_text_is_told_from_a_file_name(tmp_path: Path) -> None:
    assert access._inline_policy(POLICY)
    assert access._inline_policy('{"metrics": {}}')
    assert access._inline_policy("metrics: {}")  # a colon, and no such file
    assert access._inline_policy("bad\x00name")
    assert not access._inline_policy("gate.yaml")
    odd = tmp_path / "a:b.yaml"  # a file whose name has a colon is still a file
    odd.write_text(POLICY)
    assert not access._inline_policy(str(odd))


def test_allowed_file_accepts_the_data_dir_and_shipped_dirs_only(
    bare_settings: EvaluatorSettings, tmp_path: Path
) -> None:
    inside = bare_settings.data_dir / "sub" / "items.jsonl"
    inside.parent.mkdir()
    inside.write_text("{}\n")
    assert access.allowed_file(bare_settings, str(inside), "data") == inside.resolve()
    shipped = access.POLICIES_DIR / "extraction.yaml"
    assert access.allowed_file(bare_settings, str(shipped), "policy") == shipped.resolve()

    outside = tmp_path / "elsewhere.jsonl"
    outside.write_text("{}\n")
    with pytest.raises(ValidationError, match="outside the directories") as err:
        access.allowed_file(bare_settings, str(outside), "data")
    assert err.value.param == "data"
    assert str(bare_settings.data_dir) not in str(err.value)  # the layout is not told
    climb = bare_settings.data_dir / "sub" / ".." / ".." / "elsewhere.jsonl"
    with pytest.raises(ValidationError, match="outside the directories"):
        access.allowed_file(bare_settings, str(climb), "data")
    link = bare_settings.data_dir / "link.jsonl"
    link.symlink_to(outside)
    with pytest.raises(ValidationError, match="outside the directories"):
        access.allowed_file(bare_settings, str(link), "data")
    with pytest.raises(NotFoundError, match="does not exist") as missing:
        access.allowed_file(bare_settings, str(bare_settings.data_dir / "nope.jsonl"), "suite")
    assert missing.value.param == "suite"
    with pytest.raises(ValidationError, match="not a usable path"):
        access.allowed_file(bare_settings, "bad\x00path", "data")


def test_a_suite_file_is_checked_unless_local_and_a_suite_name_passes(
    bare_settings: EvaluatorSettings, tmp_path: Path
) -> None:
    outside = tmp_path / "suite.yaml"
    outside.write_text("name: mine\n")
    assert access.suite_spec(bare_settings, "quick", "suite", local=False) == "quick"
    assert access.suite_spec(bare_settings, {"name": "x"}, "suite", local=False) == {"name": "x"}
    assert access.suite_spec(bare_settings, None, "suite", local=False) is None
    assert access.suite_spec(bare_settings, str(outside), "suite", local=True) == str(outside)
    with pytest.raises(ValidationError, match="outside the directories"):
        access.suite_spec(bare_settings, str(outside), "suite", local=False)


def test_request_policy_inline_mapping_or_file(
    bare_settings: EvaluatorSettings, tmp_path: Path
) -> None:
    want = parse_policy(POLICY).sha256()
    assert access.request_policy(bare_settings, None, local=False) is None
    inline = access.request_policy(bare_settings, POLICY, local=False)
    assert inline is not None and inline.sha256() == want
    mapping = {"min_items": 3, "metrics": {"exact_match": {"min": 0.5}}}
    as_dict = access.request_policy(bare_settings, mapping, local=False)
    assert as_dict is not None and as_dict.sha256() == want
    outside = tmp_path / "gate.yaml"
    outside.write_text(POLICY)
    local = access.request_policy(bare_settings, str(outside), local=True)
    assert local is not None and local.sha256() == want
    with pytest.raises(ValidationError, match="outside the directories"):
        access.request_policy(bare_settings, str(outside), local=False)
    allowed = bare_settings.data_dir / "gate.yaml"
    allowed.write_text(POLICY)
    remote = access.request_policy(bare_settings, str(allowed), local=False)
    assert remote is not None and remote.sha256() == want


def test_an_endpoint_is_named_never_given_as_a_url(bare_settings: EvaluatorSettings) -> None:
    settings = with_endpoints(bare_settings, judge="http://judge:9000", big="http://big:8000")
    assert access.named_endpoint(settings, "big", "server").url == "http://big:8000"
    for url in ("http://evil:1", "evil.example/v1", "HTTPS:evil"):
        with pytest.raises(ValidationError, match="is a URL") as err:
            access.named_endpoint(settings, url, "server")
        assert err.value.param == "server"
    with pytest.raises(ValidationError, match="unknown endpoint 'small'") as unknown:
        access.named_endpoint(settings, "small", "suite.judge.endpoint")
    assert "configured endpoints: big, judge" in str(unknown.value)
    with pytest.raises(ValidationError, match="configured endpoints: none"):
        access.named_endpoint(bare_settings, "big", "server")


def test_server_endpoint_by_name_by_default_or_an_operators_url(
    bare_settings: EvaluatorSettings,
) -> None:
    assert access.server_endpoint(bare_settings, EvaluationCreate(candidate="base"), False) == (
        None,
        None,
    )
    settings = with_endpoints(bare_settings, server="http://srv:8000", big="http://big:8000")
    name, default = access.server_endpoint(settings, EvaluationCreate(candidate="base"), False)
    assert name == "server" and default is not None and default.url == "http://srv:8000"
    named = EvaluationCreate(candidate="base", server="big")
    name, big = access.server_endpoint(settings, named, False)
    assert name == "big" and big is not None and big.api_key == "key-of-big"

    adhoc = EvaluationCreate(candidate="base", server_url="http://mine:8000")
    with pytest.raises(ValidationError, match="cannot choose a URL") as err:
        access.server_endpoint(settings, adhoc, False)
    assert err.value.param == "server_url"
    name, mine = access.server_endpoint(settings, adhoc, True)
    assert name == "(--server-url)" and mine is not None
    assert (mine.url, mine.api_key) == ("http://mine:8000", "")  # no configured key goes there
    both = EvaluationCreate(candidate="base", server="big", server_url="http://mine:8000")
    with pytest.raises(ValidationError, match="not both"):
        access.server_endpoint(settings, both, True)
    scheme = EvaluationCreate(candidate="base", server_url="ftp://mine")
    with pytest.raises(ValidationError, match="must start with http"):
        access.server_endpoint(settings, scheme, True)


def test_judge_endpoint_is_the_suites_then_judge_then_the_server(
    bare_settings: EvaluatorSettings,
) -> None:
    server = ("server", Endpoint(url="http://srv:8000"))
    plain = Suite()
    assert access.judge_endpoint(bare_settings, plain, server) == server
    assert access.judge_endpoint(bare_settings, plain, (None, None)) == (None, None)
    settings = with_endpoints(bare_settings, judge="http://judge:9000", big="http://big:8000")
    name, judge = access.judge_endpoint(settings, plain, server)
    assert name == "judge" and judge is not None and judge.url == "http://judge:9000"
    chosen = Suite.model_validate({"judge": {"endpoint": "big"}})
    name, big = access.judge_endpoint(settings, chosen, server)
    assert name == "big" and big is not None and big.api_key == "key-of-big"
    unknown = Suite.model_validate({"judge": {"endpoint": "ghost"}})
    with pytest.raises(ValidationError, match="unknown endpoint 'ghost'") as err:
        access.judge_endpoint(settings, unknown, server)
    assert err.value.param == "suite.judge.endpoint"
