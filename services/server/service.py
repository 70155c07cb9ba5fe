"""The server as one object: it makes every part and runs their lifecycle.

The parts: engines (state), their control client and supervisors, the adapter manager, the
reconciler, the proxy, the catalog (``/v1/models``, ``/v1/adapters``), the admin operations, the
canary and the metrics. All are made here, in ``__init__``; :meth:`ServerService.start` only starts
what runs on the event loop, so :meth:`ServerService.stop` can stop every part whether or not it
started. Routes (``services/server/api``) call the service and its ``catalog``, ``admin`` and
``proxy`` parts, nothing else. Start-up order: resolve the base model (registering it), start the
engines (or attach to them), start the reconciler; readiness waits for the first reconcile pass
with every desired adapter loaded.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from services.server.admin_ops import AdminOperations
from services.server.auth import Access
from services.server.canary import Canary
from services.server.catalog import Catalog
from services.server.config import ServerSettings
from services.server.engine_client import ControlSession, EngineClient
from services.server.engine_process import engine_command, engine_env, free_port
from services.server.engines import Engine
from services.server.full_engines import FullEngines
from services.server.importer import base_identity
from services.server.manager import AdapterManager
from services.server.metrics import RequestSummary, ServerMetrics
from services.server.names import Names
from services.server.proxy import Proxy
from services.server.reconcile import Reconciler
from services.server.supervisor import EngineSupervisor
from services.server.validation import AdapterValidator, BaseIdentity
from shared.artifacts import ArtifactStore, open_store
from shared.logs import event
from shared.registry.db import Registry, open_registry

log = logging.getLogger(__name__)


class ServerService:
    def __init__(
        self,
        settings: ServerSettings,
        *,
        registry: Registry | None = None,
        store: ArtifactStore | None = None,
        base: BaseIdentity | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry or open_registry(settings)
        self.store = store or open_store(settings)
        self.base = base or base_identity(settings, self.registry)
        self.access = Access(settings)
        self.metrics = ServerMetrics(self.base.name, settings.metrics_max_adapters)
        self.names = Names(self.base.name)
        self.validator = AdapterValidator(self.store, self.base, settings.max_lora_rank)
        self.engines = self._make_engines()
        self.metrics.attach_engines(self.all_engines)
        # Control calls only (health, loads, metrics, canary); requests go through
        # services.server.upstream. The session opens on the event loop, in start().
        self.control = ControlSession()
        self.clients = {e.id: EngineClient(self.control, e.url) for e in self.engines}
        self.manager = AdapterManager(
            settings,
            self.engines,
            self.clients,
            self.validator,
            self.metrics,
            engine_path=self._engine_path,
        )
        if settings.canary_check:
            self.manager.canary = Canary(self.clients, self.base.name, settings.load_timeout_s)
        self.reconciler = Reconciler(
            settings,
            self.registry,
            self.engines,
            self.clients,
            self.manager,
            self.names,
            self.metrics,
        )
        self.proxy = Proxy(
            settings,
            self.engines,
            self.names,
            self.manager,
            self.registry,
            self.access,
            self.metrics,
            base_sha256=self.base.weights_sha256,
        )
        self.catalog = Catalog(
            settings, self.registry, self.base, self.engines, self.names, self.reconciler
        )
        self.admin = AdminOperations(
            settings,
            self.registry,
            self.store,
            self.base,
            self.validator,
            self.engines,
            self.names,
            self.manager,
            self.reconciler,
            self.catalog,
        )
        # Full fine-tunes: an engine of their own each, beside the base's (same limit, same
        # supervision); the reconciler starts and retires them, the proxy routes to them.
        self.full = FullEngines(
            settings,
            self.store,
            self.base,
            self.control,
            base_engines=len(self.engines),
            on_ready=self.reconciler.trigger,
            on_change=self.reconciler.rebuild_table,
        )
        self.reconciler.full = self.full
        self.proxy.full = self.full
        self.proxy.refusal = self._refusal
        self.supervisors = [self._make_supervisor(engine) for engine in self.engines]
        self._summary_task: asyncio.Task[None] | None = None

    # -- construction ----------------------------------------------------------------------------
    def _make_engines(self) -> list[Engine]:
        s = self.settings
        if s.attach_mode:
            return [
                Engine(id=f"engine-{i}", url=url, managed=False)
                for i, url in enumerate(s.engine_urls)
            ]
        engines = []
        for i in range(s.engine_count):
            port = s.engine_base_port + i if s.engine_base_port else free_port(s.engine_host)
            url = f"http://{s.engine_host}:{port}"
            engines.append(
                Engine(id=f"engine-{i}", url=url, managed=True, served_name=self.base.name)
            )
        return engines

    def _make_supervisor(self, engine: Engine) -> EngineSupervisor:
        command = env = None
        cpus = ""
        if engine.managed:
            port = int(engine.url.rsplit(":", 1)[1])
            assert self.base.path is not None
            command = engine_command(self.settings, self.base.path, self.base.name, port)
            env, cpus = engine_env(self.settings)
        return EngineSupervisor(
            engine,
            self.clients[engine.id],
            self.settings,
            command=command,
            env=env,
            cpus=cpus,
            log_path=self.settings.data_dir / "server" / "logs" / f"{engine.id}.log",
            on_ready=self.reconciler.trigger,
            on_restart=self._on_restart,
        )

    def _refusal(self, vid: str) -> str | None:
        failure = self.reconciler.failures.get(vid)
        return failure.message if failure is not None else None

    def _engine_path(self, folder: Path) -> str:
        mapped = self.settings.engine_artifact_dir
        if not mapped:
            return str(folder)
        rel = folder.resolve().relative_to(Path(self.store.root).resolve())
        return str(Path(mapped) / rel)

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        self.control.open()
        for supervisor in self.supervisors:
            supervisor.start()
        self.reconciler.start()
        if self.settings.request_summary_s > 0:
            self._summary_task = asyncio.create_task(self._summarize(), name="request-summary")

    async def _summarize(self) -> None:
        summary = RequestSummary(self.metrics)
        while True:
            await asyncio.sleep(self.settings.request_summary_s)
            counts = summary.since_last()
            if counts is not None:
                event(log, "requests.summary", period_s=self.settings.request_summary_s, **counts)

    def _on_restart(self, engine: Engine) -> None:
        self.metrics.engine_restarts.labels(engine.id).inc()
        self.reconciler.rebuild_table()

    async def stop(self) -> None:
        if self._summary_task is not None:
            self._summary_task.cancel()
        await self.reconciler.stop()
        await asyncio.gather(*(s.stop() for s in self.supervisors), return_exceptions=True)
        await self.full.stop()
        self.proxy.close()
        await self.control.close()
        self.registry.dispose()

    # -- reading ---------------------------------------------------------------------------------
    def ready(self) -> tuple[bool, dict[str, Any]]:
        return self.reconciler.ready_report()

    def all_engines(self) -> list[Engine]:
        """The base's engines and the full versions' engines of the moment."""
        return [*self.engines, *self.full.engines()]

    async def metrics_text(self) -> bytes:
        async def fetch(engine: Engine) -> tuple[str, str]:
            client = self.clients.get(engine.id) or self.full.clients.get(engine.id)
            if not engine.ready or client is None:
                return engine.id, ""
            try:
                return engine.id, await client.metrics_text()
            except Exception:
                return engine.id, ""

        texts = dict(await asyncio.gather(*(fetch(e) for e in self.all_engines())))
        return self.metrics.render(texts)
