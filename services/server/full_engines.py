"""Engines of full fine-tuned models: one per served full version, beside the base's engines.

A full fine-tune is a model of its own (registry kind ``full``), so no base engine can serve it
as an adapter: it gets an engine started from its stored folder, supervised like the base's
(:class:`~services.server.supervisor.EngineSupervisor`), serving the model under its version id.
The reconciler asks for the full versions that aliases and pins name (:meth:`FullEngines.ensure`)
and retires the rest (:meth:`FullEngines.retire`); the name table routes to a full version only
while its engine is ready and not retiring, so a hot swap is start, wait until healthy, switch,
drain, stop. Requests hold the engine through a lease on it (its ``in_flight``), which is what
the drain waits for.

Resource limit: at most ``max_model_engines`` engines run at once, the base's included. A full
version past the limit is refused with the limit named (the reconciler reports it per alias),
and an alias then keeps answering with what it served before.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from services.server.config import ServerSettings
from services.server.engine_client import ControlSession, EngineClient
from services.server.engine_process import engine_command, engine_env, free_port
from services.server.engines import Engine
from services.server.names import VersionInfo
from services.server.supervisor import EngineSupervisor
from services.server.validation import BaseIdentity
from shared.artifacts import ArtifactStore
from shared.errors import IntegrityError, LoraplexError, NotFoundError, ValidationError
from shared.logs import event
from shared.servability import check_full_model_dir

log = logging.getLogger(__name__)

_DRAIN_POLL_S = 0.05


class EngineLimit(ValidationError):
    """A full version needs an engine and the server already runs ``max_model_engines``."""

    code = "engine_limit"


@dataclass
class FullSlot:
    """One full version's engine and its supervisor."""

    version: VersionInfo
    engine: Engine
    supervisor: EngineSupervisor
    retiring: bool = False
    started_at: float = field(default_factory=time.time)


StartSupervisor = Callable[[Engine, EngineClient, Path | None], EngineSupervisor]


class FullEngines:
    def __init__(
        self,
        settings: ServerSettings,
        store: ArtifactStore,
        base: BaseIdentity,
        control: ControlSession,
        *,
        base_engines: int,
        on_ready: Callable[[Engine], None],
        on_change: Callable[[], None],
        make_supervisor: StartSupervisor | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.base = base
        self.control = control
        self.base_engines = base_engines
        self.on_ready = on_ready
        self.on_change = on_change
        self.make_supervisor = make_supervisor or self._supervisor
        self.slots: dict[str, FullSlot] = {}
        self.clients: dict[str, EngineClient] = {}
        self._count = 0
        self._starting: set[str] = set()

    # -- reading (hot path: synchronous) ---------------------------------------------------------
    def serving(self, version_id: str) -> list[Engine]:
        """The engines that may take new requests for ``version_id``."""
        slot = self.slots.get(version_id)
        if slot is None or slot.retiring:
            return []
        return [slot.engine]

    def ready_versions(self) -> dict[str, VersionInfo]:
        return {
            vid: slot.version
            for vid, slot in self.slots.items()
            if slot.engine.ready and not slot.retiring
        }

    def engines(self) -> Iterator[Engine]:
        for slot in self.slots.values():
            yield slot.engine

    @property
    def running(self) -> int:
        """Engines counted against the limit: the base's and every full version's."""
        return self.base_engines + len(self.slots) + len(self._starting)

    # -- starting --------------------------------------------------------------------------------
    async def ensure(self, version: VersionInfo) -> None:
        """Start an engine for ``version`` unless one runs (returns at once; it becomes ready
        later). Raises :class:`EngineLimit` past the limit, ValidationError for a bad folder."""
        slot = self.slots.get(version.id)
        if slot is not None:
            if slot.retiring and slot.engine.ready:
                # Needed again before it stopped (a rollback during the drain): keep it.
                slot.retiring = False
                self.on_change()
            return
        if version.id in self._starting:
            return
        if self.running >= self.settings.max_model_engines:
            names = [s.engine.id + "=" + vid for vid, s in sorted(self.slots.items())]
            raise EngineLimit(
                f"full version {version.id} needs an engine of its own and this server already "
                f"runs {self.running} (max_model_engines={self.settings.max_model_engines}: the "
                f"base's {self.base_engines} and {', '.join(names) or 'none'})",
                param="model",
            )
        self._starting.add(version.id)
        try:
            folder = await asyncio.to_thread(self.checked_folder, version)
            self._count += 1
            engine = self._engine(version, self._count)
            client = self.clients[engine.id] = EngineClient(self.control, engine.url)
            supervisor = self.make_supervisor(engine, client, folder)
            self.slots[version.id] = FullSlot(version, engine, supervisor)
        finally:
            self._starting.discard(version.id)
        supervisor.start()
        event(log, "full_model.starting", version=version.id, engine=engine.id, url=engine.url)

    def _engine(self, version: VersionInfo, number: int) -> Engine:
        engine_id = f"full-{number}"
        url = self.settings.full_engine_urls.get(version.id)
        if url is not None:
            # Its own Deployment (Kubernetes): watched, never started here.
            return Engine(id=engine_id, url=url, managed=False, served_name=version.id)
        if self.settings.attach_mode:
            raise ValidationError(
                f"full version {version.id} has no engine: attach mode needs its URL in "
                "full_engine_urls (one engine Deployment per served model)",
                param="model",
            )
        port = free_port(self.settings.engine_host)
        url = f"http://{self.settings.engine_host}:{port}"
        return Engine(id=engine_id, url=url, managed=True, served_name=version.id)

    def checked_folder(self, version: VersionInfo) -> Path | None:
        """The verified stored folder of a full version (None in attach mode: the engine's pod
        has its own copy); ValidationError listing every reason it cannot be served."""
        if self.settings.attach_mode or version.id in self.settings.full_engine_urls:
            return None
        reasons: list[str] = []
        if version.base_model != self.base.name:
            reasons.append(
                f"fine-tuned from {version.base_model!r}, but this server serves {self.base.name!r}"
            )
        folder: Path | None = None
        try:
            folder = self.store.get_dir(version.sha256)
        except IntegrityError as exc:
            reasons += [f"files differ from the registry's sha256: {exc.message}", *exc.details]
        except NotFoundError:
            reasons.append(f"files (sha256 {version.sha256[:12]}) are missing from the store")
        except LoraplexError as exc:
            reasons.append(exc.message)
        if folder is not None and self.base.path is not None:
            reasons += check_full_model_dir(folder, self.base.path)
        if reasons:
            raise ValidationError(
                f"full version {version.id} cannot be served",
                param="model",
                code="model_not_servable",
                details=reasons,
            )
        return folder

    def _supervisor(
        self, engine: Engine, client: EngineClient, folder: Path | None
    ) -> EngineSupervisor:
        command = env = None
        cpus = ""
        if engine.managed:
            assert folder is not None
            port = int(engine.url.rsplit(":", 1)[1])
            command = engine_command(self.settings, folder, engine.served_name, port, lora=False)
            env, cpus = engine_env(self.settings, kv_cache_gib=self.settings.full_kv_cache_gib)
        return EngineSupervisor(
            engine,
            client,
            self.settings,
            command=command,
            env=env,
            cpus=cpus,
            log_path=self.settings.data_dir / "server" / "logs" / f"{engine.id}.log",
            on_ready=self.on_ready,
            on_restart=lambda _: self.on_change(),
        )

    # -- stopping --------------------------------------------------------------------------------
    async def retire(self, version_id: str) -> None:
        """Stop routing to ``version_id``, wait for its requests (up to ``drain_timeout_s``),
        then stop its engine. Requests that resolved the name before hold a lease on the engine
        (its ``in_flight``), so none is cut."""
        slot = self.slots.get(version_id)
        if slot is None or slot.retiring:
            return
        slot.retiring = True
        self.on_change()
        started = time.monotonic()
        engine = slot.engine
        while engine.in_flight and time.monotonic() - started < self.settings.drain_timeout_s:
            await asyncio.sleep(_DRAIN_POLL_S)
            if not slot.retiring:
                return  # needed again (ensure() took it back)
        if not slot.retiring or self.slots.get(version_id) is not slot:
            return
        del self.slots[version_id]
        self.clients.pop(engine.id, None)
        await slot.supervisor.stop()
        event(
            log,
            "full_model.stopped",
            version=version_id,
            engine=engine.id,
            drained_s=round(time.monotonic() - started, 2),
            left_in_flight=engine.in_flight,
        )

    async def stop(self) -> None:
        slots, self.slots = list(self.slots.values()), {}
        await asyncio.gather(*(s.supervisor.stop() for s in slots), return_exceptions=True)
