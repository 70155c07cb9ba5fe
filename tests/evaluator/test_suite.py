"""Suites: built-in names, files and inline dicts; the parts a policy turns on; which parts need
the local model; judge settings that may not carry a URL or a key."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.evaluator.suite import (
    JudgePart,
    Suite,
    builtin_suites,
    enabled_components,
    load_suite,
    suite_for_policy,
)
from shared.errors import NotFoundError, ValidationError


def test_a_suite_is_named_built_in_read_from_a_file_or_given_inline(tmp_path: Path) -> None:
    assert load_suite(None).name == "default"
    assert "quick" in builtin_suites() and load_suite("quick").name == "quick"
    suite = Suite(name="mine")
    assert load_suite(suite) is suite
    assert load_suite({"perplexity": {"enabled": True}}).perplexity.enabled
    path = tmp_path / "nightly.yaml"
    path.write_text("generation: {enabled: true, batch_size: 2}\n")
    loaded = load_suite(str(path))
    assert loaded.name == "nightly" and loaded.generation.batch_size == 2
    path.write_text("")  # an empty file is the default settings
    assert load_suite(str(path)) == Suite(name="nightly")


def test_unknown_names_paths_and_fields_are_refused(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="unknown suite 'nosuch'; built-in suites: "):
        load_suite("nosuch")
    outside = tmp_path / "evil"
    (tmp_path / "evil.yaml").write_text("name: evil\n")
    with pytest.raises(NotFoundError, match="unknown suite"):  # a bare name stays in suites/
        load_suite(f"../../../../../../../..{outside}")
    with pytest.raises(NotFoundError, match="does not exist"):
        load_suite(str(tmp_path / "missing.yaml"))
    with pytest.raises(ValidationError) as err:
        load_suite({"generation": {"enabled": True, "batchsize": 2}})
    assert err.value.message == "invalid suite <inline>" and err.value.details
    with pytest.raises(ValidationError):
        load_suite({"perplexity": {"window": 32, "stride": 64}})


def test_a_policy_turns_on_exactly_the_parts_that_produce_its_metrics() -> None:
    suite = suite_for_policy(
        ["exact_match", "perplexity", "lmeval.loraplex_general_mc.acc", "judge.score"]
    )
    assert enabled_components(suite) == {
        "generation",
        "perplexity",
        "lmeval",
        "judge",
        "contamination",  # on in every suite
    }
    assert suite.lmeval.tasks == ["loraplex_general_mc"]
    assert suite.judge.modes == ["pairwise", "rubric"]  # the default mode, and the one named
    assert enabled_components(suite_for_policy(["forgetting.accuracy"])) == {
        "forgetting",
        "contamination",
    }


def test_a_policy_adds_to_a_given_suite_without_changing_it() -> None:
    base = Suite(name="nightly", lmeval={"tasks": ["loraplex_extract_gen"]})
    suite = suite_for_policy(["lmeval.loraplex_general_mc.acc"], base)
    assert suite.name == "nightly" and suite.lmeval.enabled
    assert suite.lmeval.tasks == ["loraplex_extract_gen", "loraplex_general_mc"]
    assert not base.lmeval.enabled and base.lmeval.tasks == ["loraplex_extract_gen"]


def test_which_parts_need_the_local_model() -> None:
    assert not Suite().needs_local_model(server=False)
    generation = Suite(generation={"enabled": True})
    assert generation.needs_local_model(server=False)
    assert not generation.needs_local_model(server=True)  # auto: the server answers
    local = Suite(generation={"enabled": True, "backend": "local"})
    assert local.needs_local_model(server=True)
    assert not Suite(generation={"enabled": True, "backend": "server"}).needs_local_model(False)
    for part in ("perplexity", "forgetting", "parity"):
        assert Suite.model_validate({part: {"enabled": True}}).needs_local_model(server=True)


def test_the_judge_names_a_configured_endpoint_and_never_carries_a_key() -> None:
    assert JudgePart(endpoint="judge").endpoint == "judge"
    for url in ("http://evil.example", "evil.example/v1", "evil:8000"):
        with pytest.raises(ValueError, match="is a URL"):
            JudgePart(endpoint=url)
    with pytest.raises(ValueError, match="a suite cannot carry a key"):
        JudgePart(api_key="sk-123")
