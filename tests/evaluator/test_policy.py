"""Gate policies: validation with file and line, rules that must check something, the parts of the
evaluator a policy needs, and the shipped policies."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.evaluator.policy import MetricRule, Policy, load_policy, parse_policy
from shared.errors import NotFoundError, ValidationError


def _policy(text: str) -> Policy:
    return parse_policy(text, "p.yaml")


def test_policy_validation_errors_name_file_line_and_metric(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValidationError) as err:
        parse_policy("confidence: 0.95\nmetrics:\n  exact_mach: {min: 0.5}\n", "p.yaml")
    assert "p.yaml line 3" in str(err.value) and "unknown metric 'exact_mach'" in str(err.value)
    with pytest.raises(ValidationError, match="min_regression"):
        parse_policy("metrics:\n  exact_match: {min_regression: 0.5}\n", "p.yaml")
    with pytest.raises(ValidationError, match="not compared item by item"):
        parse_policy("metrics:\n  judge.win_rate: {max_regression: 0.1}\n", "p.yaml")
    with pytest.raises(ValidationError, match="not valid YAML"):
        parse_policy("metrics: [\n", "p.yaml")
    with pytest.raises(NotFoundError):
        load_policy(tmp_path / "missing.yaml")
    ok = _policy("metrics:\n  lmeval.loraplex_extract_gen.exact_match: {min: 0.1}\n")
    assert ok.components() == {"lmeval"}


def test_shipped_policies_and_suites_validate() -> None:
    from services.evaluator.policy import load_policy as load
    from services.evaluator.suite import SUITES_DIR, builtin_suites, load_suite

    for path in (Path(__file__).resolve().parents[2] / "services/evaluator/policies").glob(
        "*.yaml"
    ):
        assert load(path).metrics
    assert set(builtin_suites()) >= {"default", "full", "quick"}
    for name in builtin_suites():
        assert load_suite(name).name == name
    assert (SUITES_DIR / "default.yaml").is_file()


def test_a_rule_must_check_something_and_bounds_must_be_ordered() -> None:
    assert MetricRule().required  # a bare line: the metric must be present and not NaN
    with pytest.raises(ValueError, match="a rule needs min, max"):
        MetricRule(required=False)
    assert MetricRule(required=False, max=1.0).max == 1.0
    with pytest.raises(ValueError, match=r"min 2\.0 is above max 1\.0"):
        MetricRule(min=2.0, max=1.0)
    with pytest.raises(ValueError):
        MetricRule(max_regression=-0.1)  # a margin is "worse by", never negative
    assert not MetricRule(min=0.1).compares
    assert MetricRule(max_regression=0.0).compares and MetricRule(min_improvement=0.0).compares


def test_errors_inside_a_rule_name_the_line_and_the_field() -> None:
    text = "name: p\nmetrics:\n  exact_match: {min: 0.5}\n  token_f1:\n    min: 0.9\n    max: 0.1\n"
    with pytest.raises(ValidationError) as err:
        parse_policy(text, "p.yaml")
    assert err.value.details == ["p.yaml line 4: metrics.token_f1: min 0.9 is above max 0.1"]
    with pytest.raises(ValidationError) as err:
        parse_policy("metrics:\n  exact_match: {min: 0.5}\nconfidence: 2\n", "p.yaml")
    assert err.value.details is not None
    assert err.value.details[0].startswith("p.yaml line 3: confidence: ")
    with pytest.raises(ValidationError, match="no metric lines"):
        parse_policy("metrics: {}\n", "p.yaml")
    with pytest.raises(ValidationError, match="a policy is a YAML mapping"):
        parse_policy("- exact_match\n", "p.yaml")


def test_components_say_which_parts_must_run_and_the_hash_follows_the_content() -> None:
    policy = parse_policy(
        "metrics:\n  exact_match: {min: 0.5}\n  perplexity: {max: 20}\n"
        "  judge.win_rate: {min: 0.5}\n"
    )
    assert policy.components() == {"generation", "perplexity", "judge"}
    same = parse_policy(
        "metrics:\n  exact_match: {min: 0.5}\n  perplexity: {max: 20}\n"
        "  judge.win_rate: {min: 0.5}\n"
    )
    other = parse_policy(
        "metrics:\n  exact_match: {min: 0.6}\n  perplexity: {max: 20}\n"
        "  judge.win_rate: {min: 0.5}\n"
    )
    assert policy.sha256() == same.sha256() != other.sha256()
    assert len(policy.sha256()) == 64


def test_load_policy_reads_the_file_and_names_it_in_errors(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("metrics:\n  json_valid: {min: 0.9}\n")
    assert load_policy(path).metrics["json_valid"].min == 0.9
    path.write_text("metrics:\n  json_vallid: {min: 0.9}\n")
    with pytest.raises(ValidationError) as err:
        load_policy(path)
    assert err.value.details is not None and f"{path} line 2" in err.value.details[0]
