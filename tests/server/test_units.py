"""Unit tests of the plain modules: names, routing, metrics labels, auth, settings."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.server.auth import Access
from services.server.config import ServerSettings
from services.server.engines import Engine, EngineState, Residency, ResidencyState
from services.server.errors import AuthError, ForbiddenError
from services.server.metrics import (
    OTHER,
    AdapterLabels,
    RequestSummary,
    ServerMetrics,
    relabel_engine_metrics,
)
from services.server.names import BASE, NameTable, Target, VersionInfo, parse_name
from services.server.relay import take_usage
from services.server.request_checks import needs_prompt_logprobs
from services.server.routes import CHAT, COMPLETIONS
from services.server.routing import choose
from shared.errors import ConfigError
from shared.settings import load_settings


def _info(vid: str) -> VersionInfo:
    name, _, number = vid.partition("@v")
    return VersionInfo(vid, name, int(number), "a" * 64, "base", "b" * 64, 8, 1, datetime.now(UTC))


def test_parse_name_kinds() -> None:
    assert parse_name("base", "base").kind == "base"
    assert parse_name("bot@v3", "base").version_id == "bot@v3"
    p = parse_name("bot", "base")
    assert (p.kind, p.adapter, p.alias) == ("alias", "bot", "prod")
    p = parse_name("bot:canary", "base")
    assert (p.kind, p.adapter, p.alias) == ("alias", "bot", "canary")


def test_table_lookup() -> None:
    v1 = _info("bot@v1")
    table = NameTable("base", {"bot@v1": v1}, {("bot", "prod"): "bot@v1"})
    assert table.lookup("base") is BASE
    assert table.lookup("bot") == Target(v1)
    assert table.lookup("bot:prod") == Target(v1)
    assert table.lookup("bot@v1") == Target(v1)
    assert table.lookup("bot@v2") is None
    assert table.lookup("bot:canary") is None
    assert [n for n, _, _ in table.alias_names()] == ["bot:prod", "bot"]


def _engine(eid: str, in_flight: int, holds: list[str], ready: bool = True) -> Engine:
    engine = Engine(id=eid, url="http://x", managed=False)
    engine.state = EngineState.READY if ready else EngineState.DOWN
    engine.in_flight = in_flight
    for vid in holds:
        engine.adapters[vid] = Residency(_info(vid), ResidencyState.LOADED)
    return engine


def test_routing_prefers_residency_then_fewest_in_flight() -> None:
    target = Target(_info("bot@v1"))
    e0 = _engine("e0", 5, [])
    e1 = _engine("e1", 9, ["bot@v1"])
    e2 = _engine("e2", 7, ["bot@v1"])
    assert choose([e0, e1, e2], target, overload=64) == (e2, True)
    assert choose([e0, e1, e2], BASE, overload=64) == (e0, True)
    # Every holder overloaded and another engine less busy: spread there (load needed).
    assert choose([e0, e1, e2], target, overload=6) == (e0, False)
    # Nobody holds it: least busy, load needed.
    assert choose([e0], target, overload=64) == (e0, False)
    assert choose([_engine("d", 0, [], ready=False)], target, overload=64) is None


def test_adapter_labels_are_capped() -> None:
    labels = AdapterLabels(cap=2)
    assert labels.of("a", "v1") == ("a", "v1")
    assert labels.of("b", "v1") == ("b", "v1")
    assert labels.of("c", "v1") == (OTHER, OTHER)
    assert labels.of("a", "v1") == ("a", "v1")


def test_request_summary_counts_a_recreated_series_from_zero() -> None:
    """The demo's log once said ``requests=-155``: a series that went away and came back."""
    metrics = ServerMetrics("base", max_adapters=10)
    summary = RequestSummary(metrics)
    labels = ("bot", "v1", "chat", "200")
    metrics.requests.labels(*labels).inc(299)
    assert summary.since_last() == {
        "requests": 299,
        "client_errors": 0,
        "server_errors": 0,
        "by_model": {"bot@v1": 299},
    }
    metrics.requests.remove(*labels)
    metrics.requests.labels(*labels).inc(4)
    metrics.requests.labels("base", "base", "chat", "503").inc(2)
    assert summary.since_last() == {
        "requests": 6,
        "client_errors": 0,
        "server_errors": 2,
        "by_model": {"base": 2, "bot@v1": 4},
    }
    assert summary.since_last() is None


def test_metrics_render_parses_and_relabels_engine_series() -> None:
    metrics = ServerMetrics("base", max_adapters=1)
    a, b = Target(_info("bot@v1")), Target(_info("other@v1"))
    metrics.requests.labels(*metrics.adapter_labels(a), "chat", "200").inc()
    metrics.requests.labels(*metrics.adapter_labels(b), "chat", "200").inc()
    engine = _engine("engine-0", 2, ["bot@v1"])
    metrics.attach_engines([engine])
    text = 'vllm:num_requests_running{engine="0",model_name="base"} 3.0\n'
    texts = {
        "engine-0": "# TYPE vllm:num_requests_running gauge\n" + text,
        "engine-1": ("# TYPE vllm:num_requests_running gauge\n" + text),
    }
    out = metrics.render(texts).decode()
    families = {f.name: f for f in text_string_to_metric_families(out)}
    reqs = {
        (s.labels["adapter"], s.labels["version"])
        for s in families["loraplex_requests"].samples
        if s.name.endswith("_total")
    }
    assert reqs == {("bot", "v1"), (OTHER, OTHER)}
    running = families["vllm:num_requests_running"].samples
    assert {s.labels["engine"] for s in running} == {"engine-0", "engine-1"}
    assert {s.labels["vllm_engine"] for s in running} == {"0"}
    assert families["loraplex_adapters_loaded"].samples[0].value == 1.0
    assert families["loraplex_engine_in_flight"].samples[0].value == 2.0


def test_relabel_skips_garbage() -> None:
    assert list(relabel_engine_metrics({"e": "this is { not prometheus"})) == []


def test_usage_event_is_found_and_stripped_only_when_asked() -> None:
    block = (
        b'data: {"choices":[{"text":"a"}]}\n\n'
        b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n'
        b"data: [DONE]\n\n"
    )
    kept, usage = take_usage(block, strip=True)
    assert usage == {"prompt_tokens": 3, "completion_tokens": 2}
    assert b"usage" not in kept and kept.endswith(b"data: [DONE]\n\n")
    kept, _ = take_usage(block, strip=False)
    assert kept == block


def test_prompt_logprob_detection() -> None:
    assert needs_prompt_logprobs(COMPLETIONS, {"echo": True, "logprobs": 0})
    assert not needs_prompt_logprobs(COMPLETIONS, {"echo": True})
    assert not needs_prompt_logprobs(COMPLETIONS, {"logprobs": 1})
    assert needs_prompt_logprobs(CHAT, {"prompt_logprobs": 1})
    assert not needs_prompt_logprobs(CHAT, {"logprobs": True, "top_logprobs": 2})


def test_access_scopes_and_admin() -> None:
    settings = ServerSettings(
        admin_key="adm", api_keys={"k1": ["bot"], "k2": ["*"]}, engine_urls=["http://x"]
    )
    access = Access(settings)
    scope = access.inference_scope("Bearer k1")
    access.check_model(scope, "bot:prod")
    access.check_model(scope, "bot@v3")
    with pytest.raises(ForbiddenError):
        access.check_model(scope, "other")
    assert access.inference_scope("Bearer k2").unrestricted
    assert access.inference_scope("Bearer adm").unrestricted
    with pytest.raises(AuthError):
        access.inference_scope(None)
    with pytest.raises(ForbiddenError):  # a valid key without the admin scope
        access.check_admin("Bearer k2")
    with pytest.raises(AuthError):
        access.check_admin("Bearer nope")
    access.check_admin("Bearer adm")


def test_settings_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="max_lora_rank"):
        load_settings(ServerSettings, data_dir=tmp_path, max_lora_rank=12)
    with pytest.raises(ConfigError, match="max_cpu_loras"):
        load_settings(ServerSettings, data_dir=tmp_path, max_loras=8, max_cpu_loras=4)
    with pytest.raises(ConfigError, match="http"):
        load_settings(ServerSettings, data_dir=tmp_path, engine_urls=["localhost:8000"])
    s = load_settings(ServerSettings, data_dir=tmp_path, engine_urls="http://a:1/, http://b:2")
    assert s.engine_urls == ["http://a:1", "http://b:2"] and s.attach_mode


def test_settings_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAPLEX_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("LORAPLEX_ENGINE_URLS", "http://a:1,http://b:2")
    monkeypatch.setenv("LORAPLEX_ENGINE_EXTRA_ARGS", "--enforce-eager --seed 3")
    monkeypatch.setenv("LORAPLEX_API_KEYS", '{"k1": ["bot"], "k2": ["*"]}')
    monkeypatch.setenv("LORAPLEX_ADMIN_KEY", "adm")
    s = load_settings(ServerSettings)
    assert s.engine_urls == ["http://a:1", "http://b:2"]
    assert s.engine_extra_args == ["--enforce-eager", "--seed", "3"]
    assert s.api_keys == {"k1": ["bot"], "k2": ["*"]}
    assert s.admin_key is not None and s.admin_key.get_secret_value() == "adm"
    monkeypatch.setenv("LORAPLEX_ENGINE_URLS", '["http://c:3"]')
    assert load_settings(ServerSettings).engine_urls == ["http://c:3"]
