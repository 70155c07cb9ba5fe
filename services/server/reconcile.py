"""Reconcile the engines with the registry, which is the desired state.

Each pass reads the aliases and pins, loads every version they need on every ready engine (after
validation), then swaps in a new name table in one assignment, and only after that retires what
nothing needs any more: the old version drains (requests already on it finish) and is unloaded.
An alias whose new target cannot be loaded keeps answering with its previous version, so a bad
promotion never turns into failed requests. Restarted servers and new replicas run the same pass
from an empty state and converge to the same result.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from services.server.config import ServerSettings
from services.server.engine_client import EngineClient
from services.server.engines import Engine
from services.server.errors import EngineError, Unavailable
from services.server.full_engines import EngineLimit, FullEngines
from services.server.manager import AdapterManager
from services.server.metrics import ServerMetrics
from services.server.names import Names, NameTable, VersionInfo
from shared.errors import LoraplexError
from shared.logs import event
from shared.registry import adapters as reg
from shared.registry.db import Registry

log = logging.getLogger(__name__)

FAILURE_RETRY_S = 30.0


@dataclass(frozen=True)
class DesiredState:
    aliases: dict[tuple[str, str], str] = field(default_factory=dict)
    pins: frozenset[str] = frozenset()
    versions: dict[str, VersionInfo] = field(default_factory=dict)
    """Adapter versions to load on the base's engines."""
    foreign: dict[str, str] = field(default_factory=dict)
    """Needed versions trained on another base model: never loadable here (version -> base)."""
    full: dict[str, VersionInfo] = field(default_factory=dict)
    """Full fine-tunes of the served base to run an engine for (named by an alias or a pin)."""

    @property
    def needed(self) -> set[str]:
        wanted = set(self.aliases.values()) | set(self.pins)
        return {vid for vid in wanted if vid in self.versions}

    def aliases_of(self, vid: str) -> list[str]:
        return sorted(f"{a}:{al}" for (a, al), v in self.aliases.items() if v == vid)


def read_desired(registry: Registry, base_name: str, cache: dict[str, VersionInfo]) -> DesiredState:
    """Aliases and pins from the registry, with version facts (cached: versions are immutable)."""
    with registry.read_session() as session:
        alias_rows = [(a.adapter_name, a.alias, a.version_id) for a in reg.list_aliases(session)]
        pins = frozenset(reg.list_pins(session))
        for vid in {v for _, _, v in alias_rows} | pins:
            if vid not in cache:
                cache[vid] = VersionInfo.from_row(reg.get_version(session, vid))
    versions: dict[str, VersionInfo] = {}
    foreign: dict[str, str] = {}
    full: dict[str, VersionInfo] = {}
    for vid in {v for _, _, v in alias_rows} | pins:
        info = cache[vid]
        if info.base_model != base_name:
            foreign[vid] = info.base_model
        elif info.is_full:
            full[vid] = info
        else:
            versions[vid] = info
    aliases = {(a, al): v for a, al, v in alias_rows if v in versions or v in full}
    return DesiredState(aliases, pins, versions, foreign, full)


@dataclass
class Failure:
    message: str
    details: list[str]
    at: float


class Reconciler:
    def __init__(
        self,
        settings: ServerSettings,
        registry: Registry,
        engines: Sequence[Engine],
        clients: dict[str, EngineClient],
        manager: AdapterManager,
        names: Names,
        metrics: ServerMetrics,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.engines = engines
        self.clients = clients
        self.manager = manager
        self.names = names
        self.metrics = metrics
        self.desired = DesiredState()
        self.failures: dict[str, Failure] = {}
        self.pending: set[str] = set()
        """Versions being promoted: loaded before the registry moves, so a pass that runs in
        between must not retire them."""
        self.version_cache: dict[str, VersionInfo] = {}
        self.last_pass: dict[str, Any] = {}
        self.diverged_since: float | None = None
        self._trigger = asyncio.Event()
        self._pass_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._generation = 0
        self.full: FullEngines | None = None
        """Engines of full fine-tunes (set by the service; None: adapters only)."""
        self._retiring: set[asyncio.Task[None]] = set()
        manager.on_change = self.rebuild_table

    # -- running ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="reconcile")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def trigger(self, *_: Any) -> None:
        self._trigger.set()

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._trigger.wait(), self.settings.reconcile_interval_s)
            self._trigger.clear()
            try:
                await self.reconcile_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reconcile pass failed")
                self.metrics.reconcile_runs.labels("error").inc()

    async def reconcile_once(self, *, retry_failed: bool = False) -> dict[str, Any]:
        """One full pass; serialised, so concurrent triggers queue behind each other."""
        async with self._pass_lock:
            return await self._pass(retry_failed)

    # -- one pass --------------------------------------------------------------------------------
    async def _pass(self, retry_failed: bool) -> dict[str, Any]:
        started = time.perf_counter()
        base_name = self.names.table.base_name
        desired = await asyncio.to_thread(
            read_desired, self.registry, base_name, self.version_cache
        )
        self.desired = desired
        if retry_failed:
            self.failures.clear()
        now = time.time()
        for engine in self.engines:
            if engine.ready:
                await self._check_drift(engine)
        for vid in sorted(desired.needed):
            failure = self.failures.get(vid)
            if failure is not None and now - failure.at < FAILURE_RETRY_S:
                continue
            for engine in self.engines:
                if not engine.ready:
                    continue
                try:
                    await self.manager.ensure_loaded(engine, desired.versions[vid], desired=True)
                    self.failures.pop(vid, None)
                except Unavailable as exc:
                    log.info("reconcile: %s not loaded on %s: %s", vid, engine.id, exc.message)
                except LoraplexError as exc:
                    self.failures[vid] = Failure(exc.message, list(exc.details), time.time())
                    event(
                        log,
                        "reconcile.refused",
                        logging.WARNING,
                        version=vid,
                        reason=exc.message,
                        details=list(exc.details)[:5],
                        retry_in_s=FAILURE_RETRY_S,
                    )
                    break
        await self._converge_full(desired, retry_failed)
        self.rebuild_table()
        self._retire()
        converged = self.converged()
        if converged:
            self.diverged_since = None
        elif self.diverged_since is None:
            self.diverged_since = time.time()
        self.metrics.reconcile_lag.set(
            0.0 if self.diverged_since is None else time.time() - self.diverged_since
        )
        self.metrics.reconcile_runs.labels("converged" if converged else "pending").inc()
        self.last_pass = {
            "at": time.time(),
            "seconds": round(time.perf_counter() - started, 4),
            "converged": converged,
            "aliases": {f"{a}:{al}": v for (a, al), v in sorted(desired.aliases.items())},
            "pins": sorted(desired.pins),
            "failures": {
                vid: {"message": f.message, "details": f.details}
                for vid, f in sorted(self.failures.items())
            },
            "other_base": dict(sorted(desired.foreign.items())),
        }
        return self.last_pass

    async def _converge_full(self, desired: DesiredState, retry_failed: bool) -> None:
        """Start an engine for every needed full version (they become ready later; the table
        switches an alias to one only then)."""
        if self.full is None:
            for vid in desired.full:
                self._refuse(vid, f"full version {vid} cannot be served: no full-model engines")
            return
        for vid, info in sorted(desired.full.items()):
            failure = self.failures.get(vid)
            if failure is not None and time.time() - failure.at < FAILURE_RETRY_S:
                continue
            try:
                await self.full.ensure(info)
                self.failures.pop(vid, None)
            except LoraplexError as exc:
                # The limit is checked again on the next pass (an engine may have stopped).
                at = 0.0 if isinstance(exc, EngineLimit) else time.time()
                self._refuse(vid, exc.message, list(exc.details), at=at)

    def _refuse(
        self, vid: str, message: str, details: Sequence[str] = (), *, at: float | None = None
    ) -> None:
        aliases = self.desired.aliases_of(vid)
        if aliases:
            message = f"{', '.join(aliases)} -> {message}"
        known = self.failures.get(vid)
        self.failures[vid] = Failure(message, list(details), time.time() if at is None else at)
        if known is None or known.message != message:
            event(
                log,
                "reconcile.refused",
                logging.WARNING,
                version=vid,
                aliases=aliases,
                reason=message,
                details=list(details)[:5],
            )

    async def _check_drift(self, engine: Engine) -> None:
        """Forget adapters the engine no longer lists (it restarted behind our back)."""
        try:
            models = await self.clients[engine.id].models()
        except (EngineError, OSError, TimeoutError, ValueError) as exc:
            log.debug("engine %s: cannot list models: %s", engine.id, exc)
            return
        except Exception as exc:  # aiohttp errors
            log.debug("engine %s: cannot list models: %s", engine.id, exc)
            return
        listed = {m.get("id") for m in models}
        if not engine.served_name:
            roots = [m.get("id") for m in models if not m.get("parent")]
            engine.served_name = str(roots[0]) if roots else ""
        gone = [vid for vid, res in engine.adapters.items() if res.usable and vid not in listed]
        for vid in gone:
            log.warning("engine %s: %s is no longer loaded there; will reload", engine.id, vid)
            del engine.adapters[vid]
        if gone:
            self.rebuild_table()

    def rebuild_table(self) -> None:
        """Swap in a table built from what is loaded now (synchronous: no await inside)."""
        current = self.names.table
        loaded: dict[str, VersionInfo] = {}
        for engine in self.engines:
            if engine.ready:
                for vid, res in engine.adapters.items():
                    if res.usable:
                        loaded[vid] = res.version
        if self.full is not None:
            loaded |= self.full.ready_versions()
        aliases: dict[tuple[str, str], str] = {}
        for key, vid in self.desired.aliases.items():
            if vid in loaded:
                aliases[key] = vid
            else:
                previous = current.aliases.get(key)
                if previous is not None and previous in loaded:
                    aliases[key] = previous
        if loaded == dict(current.versions) and aliases == dict(current.aliases):
            return
        self._generation += 1
        for key in sorted(set(aliases) | set(current.aliases)):
            before, after = current.aliases.get(key), aliases.get(key)
            if before != after:
                event(
                    log,
                    "alias.serving",
                    alias=f"{key[0]}:{key[1]}",
                    previous=before,
                    version=after,
                    table_generation=self._generation,
                )
        self.names.swap(NameTable(current.base_name, loaded, aliases, self._generation))

    def _retire(self) -> None:
        """Mark what no alias or pin needs; unload it once its requests finish."""
        keep = (
            self.desired.needed
            | set(self.desired.full)
            | set(self.names.table.aliases.values())
            | self.pending
        )
        for engine in self.engines:
            for vid, res in list(engine.adapters.items()):
                if vid in keep:
                    res.desired = True
                    res.retiring = False
                elif res.desired or res.retiring:
                    res.desired = False
                    if not res.retiring:
                        res.retiring = True
                    self.manager.schedule_unload(engine, vid)
        if self.full is not None:
            for vid in [v for v in self.full.slots if v not in keep]:
                task = asyncio.create_task(self.full.retire(vid), name=f"retire-{vid}")
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)

    def converged(self) -> bool:
        table = self.names.table
        if table.aliases != self.desired.aliases and any(
            vid not in self.failures for vid in self.desired.aliases.values()
        ):
            return False
        for vid in self.desired.needed:
            if vid in self.failures:
                continue
            if not any(e.ready and e.usable(vid) for e in self.engines):
                return False
        if self._missing_full():
            return False
        return any(e.ready for e in self.engines)

    def _missing_full(self) -> list[str]:
        served = self.full.ready_versions() if self.full is not None else {}
        return [v for v in sorted(self.desired.full) if v not in self.failures and v not in served]

    def ready_report(self) -> tuple[bool, dict[str, Any]]:
        engines_ready = [e.id for e in self.engines if e.ready]
        missing = [
            vid
            for vid in sorted(self.desired.needed)
            if vid not in self.failures and not any(e.ready and e.usable(vid) for e in self.engines)
        ] + self._missing_full()
        ready = bool(engines_ready) and not missing and bool(self.last_pass)
        return ready, {
            "ready": ready,
            "engines_ready": engines_ready,
            "missing": missing,
            "refused": sorted(self.failures),
            "reasons": {vid: f.message for vid, f in sorted(self.failures.items())},
            "reconciled": bool(self.last_pass),
        }
