"""Forward OpenAI requests to an engine: resolve the name, pick an engine, stream back unbuffered.

The request body is parsed and checked once (:mod:`services.server.request_checks`) to read and
rewrite ``model`` and to ask the engine for token usage; everything else, including chat
templating, sampling and the protocol, is vLLM's. Streamed responses are forwarded event by event
as they arrive (:mod:`services.server.relay`). When the client goes away, the upstream connection
is closed, which makes vLLM abort the request. The engine connections are
:mod:`services.server.upstream`'s (the hot path), not aiohttp's.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from services.server.auth import Access
from services.server.config import ServerSettings
from services.server.engines import Engine
from services.server.errors import ModelNotFound, Unavailable
from services.server.full_engines import FullEngines
from services.server.manager import AdapterManager, Lease
from services.server.metrics import AdapterSeries, ServerMetrics
from services.server.names import Names, Target, VersionInfo, parse_name
from services.server.provenance import VERSION_HEADER as VERSION_HEADER
from services.server.provenance import Provenance, add_body_field
from services.server.relay import Relay, Reply, response_usage
from services.server.request_checks import check_request, needs_prompt_logprobs, parse_request
from services.server.routes import ProxiedRoute
from services.server.routing import choose
from services.server.upstream import EnginePool, Exchange, UpstreamError
from shared.errors import LoraplexError, NotFoundError, ValidationError
from shared.registry import adapters as reg
from shared.registry.db import Registry

ENGINE_HEADER = "x-loraplex-engine"
ENGINE_HEADER_B = ENGINE_HEADER.encode()
_NEGATIVE_TTL_S = 1.0
_NO_LABELS = ("none", "none")


class Proxy:
    def __init__(
        self,
        settings: ServerSettings,
        engines: Sequence[Engine],
        names: Names,
        manager: AdapterManager,
        registry: Registry,
        access: Access,
        metrics: ServerMetrics,
        base_sha256: str = "",
    ) -> None:
        self.settings = settings
        self.engines = engines
        self.names = names
        self.manager = manager
        self.registry = registry
        self.access = access
        self.metrics = metrics
        self.provenance = Provenance(names.table.base_name, base_sha256)
        self._unknown: dict[str, float] = {}
        self._versions: dict[str, VersionInfo] = {}
        self._pools: dict[str, EnginePool] = {}
        self.full: FullEngines | None = None
        """Engines of full fine-tunes (set by the service)."""
        self.refusal: Callable[[str], str | None] = lambda _: None
        """Why the server does not serve a version now (the reconciler's refusal), if it knows."""

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()

    # -- entry -----------------------------------------------------------------------------------
    async def handle(self, route: ProxiedRoute, raw: bytes, authorization: str | None) -> Reply:
        """Answer one request: a complete answer, or a :class:`Relay` to stream (then the caller
        must ``close`` it). Raises :class:`LoraplexError` for answers of our own (4xx, 503)."""
        started = time.perf_counter()
        series = None
        try:
            payload = parse_request(raw)
            model = payload["model"]
            scope = self.access.inference_scope(authorization)
            self.access.check_model(scope, model)
            check_request(route, payload)
            target = self.names.table.lookup(model)
            if target is None:
                target = await self._resolve_unknown(model)
            sha = target.version.sha256 if target.version else self.provenance.base_sha256
            series = self.metrics.series(self.metrics.adapter_labels(target), sha)
            return await self._forward(route, payload, target, series, started)
        except LoraplexError as exc:
            series = series or self.metrics.series(_NO_LABELS)
            series.requests(route.name, exc.status_code).inc()
            raise
        except asyncio.CancelledError:
            # The client left before the answer (499, nginx's "client closed request").
            series = series or self.metrics.series(_NO_LABELS)
            series.requests(route.name, 499).inc()
            series.duration.observe(time.perf_counter() - started)
            raise

    # -- names -----------------------------------------------------------------------------------
    async def _resolve_unknown(self, model: str) -> Target:
        """A registered name the table does not serve yet: its version, to load on demand."""
        expiry = self._unknown.get(model)
        if expiry is not None and expiry > time.monotonic():
            raise self._not_found(model)
        table = self.names.table
        parsed = parse_name(model, table.base_name)
        info = self._versions.get(parsed.version_id) if parsed.kind == "version" else None
        if info is None:
            try:
                info = await asyncio.to_thread(self._lookup, model)
            except (NotFoundError, ValidationError):
                if len(self._unknown) > 10_000:
                    self._unknown.clear()
                self._unknown[model] = time.monotonic() + _NEGATIVE_TTL_S
                raise self._not_found(model) from None
        if info.is_full:
            raise self._full_not_served(model, info)
        if info.base_model != table.base_name:
            raise ValidationError(
                f"model {model!r} is an adapter for base model {info.base_model!r}; this server "
                f"serves {table.base_name!r}",
                param="model",
                code="adapter_not_servable",
            )
        return Target(info)

    def _lookup(self, model: str) -> VersionInfo:
        with self.registry.read_session() as session:
            info = VersionInfo.from_row(reg.resolve(session, model))
        self._versions[info.id] = info
        return info

    def _full_not_served(self, model: str, info: VersionInfo) -> LoraplexError:
        """A full fine-tune is never started on demand (its engine takes minutes and gigabytes):
        an alias or a pin names it, then it is served; meanwhile say which state it is in."""
        refused = self.refusal(info.id)
        if refused is not None:
            return ValidationError(
                f"model {model!r} ({info.id}) is not served: {refused}",
                param="model",
                code="model_not_servable",
            )
        if self.full is not None and info.id in self.full.slots:
            return Unavailable(
                f"the engine of full version {info.id} is starting; retry shortly",
                retry_after=self.settings.retry_after_s,
            )
        return ValidationError(
            f"model {model!r} is the full fine-tune {info.id}, served only while an alias or a "
            "pin names it (its engine is started then)",
            param="model",
            code="model_not_served",
        )

    def _not_found(self, model: str) -> ModelNotFound:
        return ModelNotFound(
            f"the model {model!r} does not exist: use the base model "
            f"{self.names.table.base_name!r}, a version id (name@vN) or an alias (name:alias)",
            param="model",
        )

    # -- engines ---------------------------------------------------------------------------------
    async def _lease(self, target: Target) -> Lease:
        engines = self.engines
        if target.version is not None and target.version.is_full:
            engines = self.full.serving(target.version.id) if self.full is not None else []
        for _ in range(3):
            picked = choose(engines, target, self.settings.max_num_seqs)
            if picked is None:
                raise Unavailable(
                    "no engine is ready; retry shortly", retry_after=self.settings.retry_after_s
                )
            engine, holds = picked
            if holds:
                lease = self.manager.try_lease(engine, target)
                if lease is not None:
                    return lease
                continue
            assert target.version is not None
            # Shielded: a client that leaves must not cut a load half-way (others may wait on it).
            await asyncio.shield(self.manager.ensure_loaded(engine, target.version))
            # No await between the load returning and the lease: nothing can unload it between.
            lease = self.manager.try_lease(engine, target)
            if lease is not None:
                return lease
        raise Unavailable(
            f"{target.key or 'the base model'} could not be placed on an engine; retry shortly",
            retry_after=self.settings.retry_after_s,
        )

    # -- forwarding ------------------------------------------------------------------------------
    def _pool(self, engine: Engine) -> EnginePool:
        pool = self._pools.get(engine.url)
        if pool is None:
            pool = self._pools[engine.url] = EnginePool(
                engine.url, timeout=self.settings.request_timeout_s
            )
        return pool

    async def _forward(
        self,
        route: ProxiedRoute,
        payload: dict[str, Any],
        target: Target,
        series: AdapterSeries,
        started: float,
    ) -> Reply:
        lease = await self._lease(target)
        # From here every way out (an answer, an error, the client leaving) gives the lease back,
        # unless a Relay took it over; the isolation lock is given back only if it was taken.
        engine = lease.engine
        handed_over = False
        isolated = exclusive = holds_isolation = False
        try:
            isolated = not engine.patched
            exclusive = isolated and needs_prompt_logprobs(route, payload)
            if exclusive and (payload.get("n") or 1) > 1:
                raise ValidationError(
                    "prompt log-probabilities with n > 1 are not supported on this engine",
                    param="n",
                )
            if isolated:
                await engine.isolation.acquire(exclusive)
                holds_isolation = True
            key = target.key
            payload["model"] = key or engine.served_name or self.names.table.base_name
            stream = bool(payload.get("stream"))
            strip_usage = False
            if stream:
                options = payload.get("stream_options")
                options = dict(options) if isinstance(options, dict) else {}
                if not options.get("include_usage"):
                    options["include_usage"] = True
                    strip_usage = True
                payload["stream_options"] = options
            try:
                body = json.dumps(payload, separators=(",", ":")).encode()
            except RecursionError:
                raise ValidationError("request body is nested too deeply", param="body") from None
            stamp = self.provenance.stamp(target)
            headers = [*stamp.headers, (ENGINE_HEADER_B, engine.id.encode())]
            try:
                exchange = await self._pool(engine).post_json(route.upstream_path, body)
            except UpstreamError as exc:
                raise Unavailable(
                    f"engine {engine.id} did not answer ({exc}); retry shortly",
                    retry_after=self.settings.retry_after_s,
                ) from exc
            status = exchange.status
            if not stream or status != 200:
                try:
                    data = await exchange.read_all()
                except UpstreamError as exc:
                    raise Unavailable(
                        f"engine {engine.id} failed mid-answer; retry shortly",
                        retry_after=self.settings.retry_after_s,
                    ) from exc
                finally:
                    # Complete: back to the pool. Failed or cancelled (the client left): the
                    # connection is dropped, so vLLM aborts the request.
                    exchange.close()
                headers.append((b"content-type", exchange.content_type or b"application/json"))
                self._record(route.name, series, status, started, response_usage(data, status))
                if status == 200:
                    data = add_body_field(data, exchange.content_type, stamp.field)
                return Reply(status, headers, data)
            headers.append((b"content-type", exchange.content_type or b"text/event-stream"))
            headers.append((b"cache-control", b"no-cache"))
            relay = self._relay(
                exchange, lease, isolated, exclusive, route.name, series, started, strip_usage
            )
            handed_over = True
            return Reply(200, headers, stream=relay)
        finally:
            if not handed_over:
                if holds_isolation:
                    engine.isolation.release(exclusive)
                lease.release()

    def _relay(
        self,
        exchange: Exchange,
        lease: Lease,
        isolated: bool,
        exclusive: bool,
        endpoint: str,
        series: AdapterSeries,
        started: float,
        strip_usage: bool,
    ) -> Relay:
        def finish(status: int, usage: dict[str, Any] | None, complete: bool) -> None:
            if isolated:
                lease.engine.isolation.release(exclusive)
            lease.release()
            self._record(endpoint, series, status, started, usage)

        def first_chunk() -> None:
            series.ttft.observe(time.perf_counter() - started)

        return Relay(exchange, lease.engine.id, strip_usage, first_chunk, finish)

    @staticmethod
    def _record(
        endpoint: str,
        series: AdapterSeries,
        status: int,
        started: float,
        usage: dict[str, Any] | None,
    ) -> None:
        series.requests(endpoint, status).inc()
        series.duration.observe(time.perf_counter() - started)
        if usage:
            prompt = usage.get("prompt_tokens")
            completion = usage.get("completion_tokens")
            if isinstance(prompt, int):
                series.prompt_tokens.inc(prompt)
            if isinstance(completion, int):
                series.completion_tokens.inc(completion)
