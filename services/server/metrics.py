"""Prometheus metrics: per adapter version, per engine, and the engines' own ``vllm:*`` series.

vLLM labels every metric with the base model only, so per-adapter figures come from this process,
which sees each request. Label values are the adapter name and version; the number of distinct
pairs is capped (``metrics_max_adapters``) and the rest count as ``other``, so a registry with
thousands of versions cannot blow up the time-series database. Only names the registry resolves
get a pair (unknown ones count as ``none``). ``loraplex_adapter_version_info`` gives each labelled
pair's content hash (the base's weights hash for the base), so counts join to exact weights.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from services.server.engines import EngineState

if TYPE_CHECKING:
    from services.server.engines import Engine
    from services.server.names import Target

OTHER = "other"
BASE_VERSION = "base"
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class AdapterLabels:
    """(adapter, version) label values with a cap on how many distinct pairs get their own."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._seen: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def of(self, adapter: str, version: str) -> tuple[str, str]:
        pair = (adapter, version)
        if pair in self._seen:
            return pair
        with self._lock:
            if pair in self._seen:
                return pair
            if len(self._seen) >= self.cap:
                return (OTHER, OTHER)
            self._seen.add(pair)
            return pair


class AdapterSeries:
    """The per-request series of one (adapter, version) label pair, looked up once and kept: the
    proxy records every request, and ``labels()`` costs a lock and a dict lookup per call."""

    __slots__ = (
        "_counter",
        "_requests",
        "completion_tokens",
        "duration",
        "labels",
        "prompt_tokens",
        "ttft",
    )

    def __init__(self, metrics: ServerMetrics, labels: tuple[str, str]) -> None:
        self.labels = labels
        self._counter = metrics.requests
        self.duration = metrics.duration.labels(*labels)
        self.ttft = metrics.ttft.labels(*labels)
        self.prompt_tokens = metrics.prompt_tokens.labels(*labels)
        self.completion_tokens = metrics.completion_tokens.labels(*labels)
        self._requests: dict[tuple[str, int], Counter] = {}

    def requests(self, endpoint: str, status: int) -> Counter:
        """The request counter for ``endpoint`` and HTTP ``status``."""
        child = self._requests.get((endpoint, status))
        if child is None:
            child = self._counter.labels(*self.labels, endpoint, str(status))
            self._requests[(endpoint, status)] = child
        return child


class ServerMetrics:
    def __init__(self, base_name: str, max_adapters: int) -> None:
        self.base_name = base_name
        self._series: dict[tuple[str, str], AdapterSeries] = {}
        self.registry = CollectorRegistry()
        self.labels = AdapterLabels(max_adapters)
        r = self.registry
        per_adapter = ["adapter", "version"]
        self.requests = Counter(
            "loraplex_requests",
            "Requests by adapter version, endpoint and HTTP status.",
            [*per_adapter, "endpoint", "status"],
            registry=r,
        )
        self.duration = Histogram(
            "loraplex_request_duration_seconds",
            "Time from receiving a request to sending its last byte.",
            per_adapter,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "loraplex_time_to_first_token_seconds",
            "Time from receiving a streamed request to forwarding its first chunk.",
            per_adapter,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "loraplex_prompt_tokens", "Prompt tokens processed.", per_adapter, registry=r
        )
        self.completion_tokens = Counter(
            "loraplex_completion_tokens", "Completion tokens generated.", per_adapter, registry=r
        )
        self.load_duration = Histogram(
            "loraplex_adapter_load_duration_seconds",
            "Validation plus engine load time of an adapter version.",
            [*per_adapter, "engine"],
            buckets=LOAD_BUCKETS,
            registry=r,
        )
        self.load_failures = Counter(
            "loraplex_adapter_load_failures",
            "Adapter loads refused by validation or by the engine.",
            [*per_adapter, "reason"],
            registry=r,
        )
        self.evictions = Counter(
            "loraplex_adapter_evictions", "Adapters unloaded to make room.", ["engine"], registry=r
        )
        self.engine_restarts = Counter(
            "loraplex_engine_restarts", "Engine restarts by the supervisor.", ["engine"], registry=r
        )
        self.reconcile_lag = Gauge(
            "loraplex_reconcile_lag_seconds",
            "How long the served state has differed from the registry (0: converged).",
            registry=r,
        )
        self.reconcile_runs = Counter(
            "loraplex_reconcile_runs", "Reconcile passes by outcome.", ["outcome"], registry=r
        )
        self.version_info = Gauge(
            "loraplex_adapter_version_info",
            "1 per labelled adapter version, with the sha256 of its files (the base model: of its "
            "weights); join on adapter and version to tie the other series to exact weights.",
            [*per_adapter, "sha256"],
            registry=r,
        )
        self.engine_collector = EngineCollector()
        r.register(self.engine_collector)

    def adapter_labels(self, target: Target) -> tuple[str, str]:
        if target.version is None:
            return self.labels.of(self.base_name, BASE_VERSION)
        return self.labels.of(target.version.adapter, f"v{target.version.version}")

    def series(self, labels: tuple[str, str], sha256: str = "") -> AdapterSeries:
        """Cached children for ``labels`` (from :meth:`adapter_labels`, so their number is
        capped); ``sha256``: the content hash of the version behind them, for the info gauge."""
        found = self._series.get(labels)
        if found is None:
            found = self._series[labels] = AdapterSeries(self, labels)
            if sha256 and labels[0] != OTHER:
                self.version_info.labels(*labels, sha256).set(1)
        return found

    def attach_engines(self, engines: Callable[[], Iterable[Engine]]) -> None:
        """``engines`` gives the engines of the moment: the base's and every full version's,
        which start and stop with the aliases."""
        self.engine_collector.engines = engines

    def render(self, engine_texts: dict[str, str]) -> bytes:
        self.engine_collector.texts = engine_texts
        return generate_latest(self.registry)


class EngineCollector(Collector):
    """Engine state gauges, plus each engine's own metrics re-labelled with ``engine``."""

    def __init__(self) -> None:
        self.engines: Callable[[], Iterable[Engine]] = tuple
        self.texts: dict[str, str] = {}

    def collect(self) -> Iterator[Metric]:
        up = Metric("loraplex_engine_up", "1 when the engine answers and is ready.", "gauge")
        starting = Metric(
            "loraplex_engine_starting",
            "1 while the engine starts (a full version's engine during a hot swap, a restart).",
            "gauge",
        )
        loaded = Metric("loraplex_adapters_loaded", "Adapter versions loaded per engine.", "gauge")
        inflight = Metric("loraplex_engine_in_flight", "Requests in flight per engine.", "gauge")
        for engine in self.engines():
            labels = {"engine": engine.id}
            up.add_sample("loraplex_engine_up", labels, 1.0 if engine.ready else 0.0)
            is_starting = engine.state == EngineState.STARTING
            starting.add_sample("loraplex_engine_starting", labels, 1.0 if is_starting else 0.0)
            count = sum(1 for res in engine.adapters.values() if res.usable)
            loaded.add_sample("loraplex_adapters_loaded", labels, float(count))
            inflight.add_sample("loraplex_engine_in_flight", labels, float(engine.in_flight))
        yield from (up, starting, loaded, inflight)
        yield from relabel_engine_metrics(self.texts)


def relabel_engine_metrics(texts: dict[str, str]) -> Iterable[Metric]:
    """Merge the engines' exposition texts into one family per name, each sample labelled with
    ``engine`` (vLLM's own ``engine`` label, an index inside one server, becomes ``vllm_engine``)."""
    families: dict[str, Metric] = {}
    for engine_id, text in texts.items():
        if not text:
            continue
        try:
            parsed = list(text_string_to_metric_families(text))
        except ValueError:
            continue
        for family in parsed:
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
            elif merged.type != family.type:
                continue
            for sample in family.samples:
                labels = dict(sample.labels)
                if "engine" in labels:
                    labels["vllm_engine"] = labels.pop("engine")
                labels["engine"] = engine_id
                merged.add_sample(sample.name, labels, sample.value, sample.timestamp)
    return families.values()


class RequestSummary:
    """Counts of ``loraplex_requests`` since the previous call, for the periodic log line."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics
        self._last: dict[tuple[str, str, str], float] = {}

    def _totals(self) -> dict[tuple[str, str, str], float]:
        out: dict[tuple[str, str, str], float] = {}
        for family in self.metrics.requests.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    labels = sample.labels
                    key = (labels["adapter"], labels["version"], labels["status"])
                    out[key] = sample.value
        return out

    def since_last(self) -> dict[str, Any] | None:
        """``{"requests", "client_errors", "server_errors", "by_model"}``, None when idle."""
        now = self._totals()
        # A series removed and recreated (an adapter unloaded, then loaded again) starts from 0:
        # a counter that went down was reset, as Prometheus' increase() reads it.
        delta = {
            k: v - last if v >= (last := self._last.get(k, 0.0)) else v for k, v in now.items()
        }
        self._last = now
        total = int(sum(delta.values()))
        if total == 0:
            return None
        by_model: dict[str, int] = {}
        for (adapter, version, _), n in delta.items():
            if n:
                name = adapter if version == BASE_VERSION else f"{adapter}@{version}"
                by_model[name] = by_model.get(name, 0) + int(n)
        return {
            "requests": total,
            "client_errors": int(sum(n for k, n in delta.items() if k[2].startswith("4"))),
            "server_errors": int(sum(n for k, n in delta.items() if k[2].startswith("5"))),
            "by_model": dict(sorted(by_model.items())),
        }
