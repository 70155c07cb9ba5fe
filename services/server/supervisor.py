"""The supervisor that keeps one engine up (managed) or watches it (attached).

In managed mode the server starts each engine on a private loopback port in its own process
group, restarts it with backoff when it exits or stops answering ``/health``, and kills the whole
group (vLLM spawns an engine-core and a worker process) so nothing is left behind. In attach mode
(Kubernetes: engines in their own pods) it only watches them. Either way an engine that comes back
is reset (:meth:`Engine.reset`), so the reconciler reloads what it should hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from services.server.config import ServerSettings
from services.server.engine_client import EngineClient
from services.server.engine_process import plugin_reports_safe
from services.server.engines import Engine, EngineState
from shared.doctor import engine_dtype
from shared.logs import event
from shared.processes import die_with_parent

log = logging.getLogger(__name__)


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
        self.engine.isolation.wake_waiters()

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
