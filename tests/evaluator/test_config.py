"""`services.evaluator.config`: endpoints (named, http(s) only, keys kept out of sight), the
directories a request may read, and the evaluator's folders."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from services.evaluator.config import REPO_EXAMPLES, Endpoint, EvaluatorSettings
from shared.settings import SharedSettings


def test_an_endpoint_is_an_http_url_without_a_trailing_slash_and_hides_its_key() -> None:
    endpoint = Endpoint(url="https://judge.example:8443/v1/", api_key="sk-secret-value")
    assert endpoint.url == "https://judge.example:8443/v1"
    assert "sk-secret-value" not in repr(endpoint)
    for bad in ("ftp://judge.example", "judge.example:8000", "http://", "file:///etc/passwd"):
        with pytest.raises(pydantic.ValidationError, match="must start with http"):
            Endpoint(url=bad)
    with pytest.raises(pydantic.ValidationError):
        Endpoint.model_validate({"url": "http://a", "headers": {"x": "y"}})  # extra: forbidden


def test_endpoint_names_are_short_lowercase_words(settings: SharedSettings) -> None:
    good = EvaluatorSettings(endpoints={"judge-2": {"url": "http://a"}, "s_1": {"url": "http://b"}})
    assert sorted(good.endpoints) == ["judge-2", "s_1"]
    for bad in ("Judge", "2judge", "", "a" * 65, "judge/x"):
        with pytest.raises(pydantic.ValidationError, match="endpoint name"):
            EvaluatorSettings(endpoints={bad: {"url": "http://a"}})


def test_named_endpoints_add_server_and_judge_and_the_list_wins(
    settings: SharedSettings,
) -> None:
    assert EvaluatorSettings().named_endpoints() == {}
    legacy = EvaluatorSettings(
        server_url="http://srv:8000/",
        server_api_key="server-key",
        judge_url="http://judge:9000",
        judge_api_key="judge-key",
        endpoints={"other": {"url": "http://other"}},
    ).named_endpoints()
    assert sorted(legacy) == ["judge", "other", "server"]
    assert (legacy["server"].url, legacy["server"].api_key) == ("http://srv:8000", "server-key")
    assert (legacy["judge"].url, legacy["judge"].api_key) == ("http://judge:9000", "judge-key")
    assert legacy["other"].api_key == ""
    # An entry of LORAPLEX_ENDPOINTS named 'server' replaces the one from LORAPLEX_SERVER_URL.
    both = EvaluatorSettings(
        server_url="http://srv:8000",
        server_api_key="old",
        endpoints={"server": {"url": "http://new:8000", "api_key": "new"}},
    ).named_endpoints()
    assert (both["server"].url, both["server"].api_key) == ("http://new:8000", "new")


def test_allowed_data_dirs_default_to_the_data_dir_and_examples_and_are_replaced_when_set(
    settings: SharedSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    default = EvaluatorSettings()
    assert default.allowed_data_dirs() == [settings.data_dir.resolve(), REPO_EXAMPLES.resolve()]
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    chosen = EvaluatorSettings(data_dirs=[Path("~/shared"), tmp_path / "link"])
    assert chosen.allowed_data_dirs() == [tmp_path / "home" / "shared", tmp_path / "real"]


def test_evaluation_folders_live_under_the_data_dir(settings: SharedSettings) -> None:
    ev = EvaluatorSettings()
    assert ev.evaluations_dir == settings.data_dir / "evaluations"
    assert ev.eval_cache_dir == settings.data_dir / "cache" / "evaluator"
