"""`services.server.metrics`: adapter labels, the request summary, and the rendered series."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from services.server.metrics import (
    OTHER,
    AdapterLabels,
    RequestSummary,
    ServerMetrics,
    relabel_engine_metrics,
)
from services.server.names import Target
from tests.server.fakes import make_engine, make_info


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
    a, b = Target(make_info("bot@v1")), Target(make_info("other@v1"))
    metrics.requests.labels(*metrics.adapter_labels(a), "chat", "200").inc()
    metrics.requests.labels(*metrics.adapter_labels(b), "chat", "200").inc()
    engine = make_engine("engine-0", 2, ["bot@v1"])
    metrics.attach_engines(lambda: [engine])
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


def test_a_starting_engine_is_told_apart_from_a_down_one() -> None:
    """The engine-down alert skips engines that are starting (a full version's engine during a
    hot swap takes minutes on CPU); the starting gauge is what tells them apart."""
    from services.server.engines import EngineState

    metrics = ServerMetrics("base", max_adapters=1)
    ready, down, starting = (make_engine(f"e{i}", 0, []) for i in range(3))
    down.state, starting.state = EngineState.DOWN, EngineState.STARTING
    metrics.attach_engines(lambda: [ready, down, starting])
    families = {f.name: f for f in text_string_to_metric_families(metrics.render({}).decode())}

    def gauge(name: str) -> dict[str, float]:
        return {s.labels["engine"]: s.value for s in families[name].samples}

    assert gauge("loraplex_engine_up") == {"e0": 1.0, "e1": 0.0, "e2": 0.0}
    assert gauge("loraplex_engine_starting") == {"e0": 0.0, "e1": 0.0, "e2": 1.0}
