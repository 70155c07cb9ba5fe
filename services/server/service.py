"""The server as one object: engines, adapter manager, reconciler, proxy, metrics, admin actions.

Routes (``services/server/api``) call the methods here and nothing else. Start-up order: resolve the
base model (registering it), start the engines (or attach to them), start the reconciler; readiness
waits for the first reconcile pass with every desired adapter loaded.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import time
from datetime import UTC
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy import select

from services.server.auth import OPEN, Access, Scope
from services.server.config import ServerSettings
from services.server.engines import (
    Engine,
    EngineClient,
    EngineSupervisor,
    engine_command,
    engine_env,
    free_port,
)
from services.server.importer import base_identity, import_adapter
from services.server.manager import AdapterManager
from services.server.metrics import RequestSummary, ServerMetrics
from services.server.names import Names, VersionInfo
from services.server.proxy import Proxy
from services.server.reconcile import Reconciler
from services.server.schemas import (
    AliasChange,
    AliasEventOut,
    AliasHistory,
    EngineResidency,
    ModelCard,
    ModelList,
    ProtectionOut,
    ResidencyEntry,
    ResidencyList,
    VersionOut,
)
from services.server.validation import AdapterValidator, BaseIdentity
from shared.artifacts import ArtifactStore, open_store
from shared.errors import ConflictError, NotFoundError, ValidationError
from shared.logs import event
from shared.registry import adapters as reg
from shared.registry import policies
from shared.registry.db import Registry, open_registry
from shared.registry.models import EvaluationRunRow, ProtectedAliasRow

log = logging.getLogger(__name__)

CANARY_PROMPT = "The quick brown fox jumps over the lazy dog. The capital of France is"


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
        self.engines: list[Engine] = []
        self.supervisors: list[EngineSupervisor] = []
        self.clients: dict[str, EngineClient] = {}
        self.session: aiohttp.ClientSession | None = None
        self._summary_task: asyncio.Task[None] | None = None
        self.started_at = time.time()
        self._build_engines()
        self.metrics.attach_engines(self.engines)

    # -- construction ----------------------------------------------------------------------------
    def _build_engines(self) -> None:
        s = self.settings
        if s.attach_mode:
            for i, url in enumerate(s.engine_urls):
                self.engines.append(Engine(id=f"engine-{i}", url=url, managed=False))
            return
        for i in range(s.engine_count):
            port = s.engine_base_port + i if s.engine_base_port else free_port(s.engine_host)
            url = f"http://{s.engine_host}:{port}"
            self.engines.append(
                Engine(id=f"engine-{i}", url=url, managed=True, served_name=self.base.name)
            )

    def _engine_path(self, folder: Path) -> str:
        mapped = self.settings.engine_artifact_dir
        if not mapped:
            return str(folder)
        rel = folder.resolve().relative_to(Path(self.store.root).resolve())
        return str(Path(mapped) / rel)

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        # Control calls only (health, loads, metrics); requests go through services.server.upstream.
        # Idle connections are dropped before vLLM (uvicorn) closes them after 5 s.
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=4)
        self.session = aiohttp.ClientSession(connector=connector)
        for engine in self.engines:
            self.clients[engine.id] = EngineClient(self.session, engine.url)
        self.manager = AdapterManager(
            self.settings,
            self.engines,
            self.clients,
            self.validator,
            self.metrics,
            engine_path=self._engine_path,
        )
        if self.settings.canary_check:
            self.manager.canary = self._canary
        self.reconciler = Reconciler(
            self.settings,
            self.registry,
            self.engines,
            self.clients,
            self.manager,
            self.names,
            self.metrics,
        )
        self.proxy = Proxy(
            self.settings,
            self.engines,
            self.names,
            self.manager,
            self.registry,
            self.access,
            self.metrics,
        )
        logs = self.settings.data_dir / "server" / "logs"
        for engine in self.engines:
            command = env = None
            cpus = ""
            if engine.managed:
                port = int(engine.url.rsplit(":", 1)[1])
                assert self.base.path is not None
                command = engine_command(self.settings, self.base.path, self.base.name, port)
                env, cpus = engine_env(self.settings)
            supervisor = EngineSupervisor(
                engine,
                self.clients[engine.id],
                self.settings,
                command=command,
                env=env,
                cpus=cpus,
                log_path=logs / f"{engine.id}.log",
                on_ready=self.reconciler.trigger,
                on_restart=self._on_restart,
            )
            self.supervisors.append(supervisor)
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
        if hasattr(self, "reconciler"):
            await self.reconciler.stop()
        await asyncio.gather(*(s.stop() for s in self.supervisors), return_exceptions=True)
        if hasattr(self, "proxy"):
            self.proxy.close()
        if self.session is not None:
            await self.session.close()
        self.registry.dispose()

    # -- reading ---------------------------------------------------------------------------------
    def ready(self) -> tuple[bool, dict[str, Any]]:
        return self.reconciler.ready_report()

    async def metrics_text(self) -> bytes:
        async def fetch(engine: Engine) -> tuple[str, str]:
            if not engine.ready:
                return engine.id, ""
            try:
                return engine.id, await self.clients[engine.id].metrics_text()
            except Exception:
                return engine.id, ""

        texts = dict(await asyncio.gather(*(fetch(e) for e in self.engines)))
        return self.metrics.render(texts)

    def residency(self, scope: Scope) -> ResidencyList:
        table = self.names.table
        aliases_of: dict[str, list[str]] = {}
        for public, _, vid in table.alias_names():
            aliases_of.setdefault(vid, []).append(public)
        pins = self.reconciler.desired.pins
        data = []
        for engine in self.engines:
            entries = [
                ResidencyEntry(
                    id=vid,
                    adapter=res.version.adapter,
                    version=res.version.version,
                    state=res.state.value,
                    rank=res.version.rank,
                    size_bytes=res.version.size_bytes,
                    loaded_at=res.loaded_at,
                    load_seconds=res.load_seconds,
                    last_used=res.last_used,
                    in_flight=res.in_flight,
                    pinned=vid in pins,
                    desired=res.desired,
                    aliases=aliases_of.get(vid, []),
                )
                for vid, res in sorted(engine.adapters.items())
                if scope.allows(vid)
            ]
            data.append(
                EngineResidency(
                    engine=engine.id,
                    url=engine.url,
                    state=engine.state.value,
                    generation=engine.generation,
                    in_flight=engine.in_flight,
                    restarts=engine.restarts,
                    patched=engine.patched,
                    last_error=engine.last_error,
                    adapters=entries,
                )
            )
        return ResidencyList(data=data)

    async def models(self, scope: Scope) -> ModelList:
        table = self.names.table
        base = table.base_name
        evaluations = await asyncio.to_thread(self._evaluations, list(table.versions))
        cards = [
            ModelCard(
                id=base,
                created=int(self.started_at),
                root=base,
                max_model_len=self.settings.max_model_len,
                loraplex={"kind": "base", "weights_sha256": self.base.weights_sha256},
            )
        ]
        aliases_of: dict[str, list[str]] = {}
        for public, _, vid in table.alias_names():
            aliases_of.setdefault(vid, []).append(public)
        for vid, info in sorted(table.versions.items()):
            meta = _version_meta(info) | {
                "kind": "version",
                "aliases": aliases_of.get(vid, []),
                "evaluations": evaluations.get(vid, []),
            }
            cards.append(_card(vid, info, base, self.settings.max_model_len, meta))
        for public, canonical, vid in table.alias_names():
            info = table.versions[vid]
            meta = _version_meta(info) | {"kind": "alias", "alias": canonical, "target": vid}
            cards.append(_card(public, info, base, self.settings.max_model_len, meta))
        return ModelList(data=[c for c in cards if scope.allows(c.id)])

    def _evaluations(self, vids: list[str]) -> dict[str, list[dict[str, Any]]]:
        if not vids:
            return {}
        out: dict[str, list[dict[str, Any]]] = {}
        with self.registry.session() as session:
            rows = session.scalars(
                select(EvaluationRunRow)
                .where(EvaluationRunRow.candidate.in_(vids))
                .order_by(EvaluationRunRow.created_at.desc())
            )
            for row in rows:
                runs = out.setdefault(row.candidate, [])
                if len(runs) < 3:
                    runs.append(
                        {
                            "id": row.id,
                            "status": row.status,
                            "decision": row.decision,
                            "summary": row.summary,
                        }
                    )
        return out

    # -- admin -----------------------------------------------------------------------------------
    def _version(self, model: str) -> VersionInfo:
        with self.registry.session() as session:
            return VersionInfo.from_row(reg.resolve(session, model))

    def _engines_named(self, ids: list[str] | None) -> list[Engine]:
        if not ids:
            ready = [e for e in self.engines if e.ready]
            if not ready:
                from services.server.errors import Unavailable

                raise Unavailable("no engine is ready", retry_after=self.settings.retry_after_s)
            return ready
        known = {e.id: e for e in self.engines}
        missing = [i for i in ids if i not in known]
        if missing:
            raise NotFoundError(f"no engine named {missing}", param="engines")
        return [known[i] for i in ids]

    async def load(self, model: str, engine_ids: list[str] | None) -> ResidencyList:
        version = await asyncio.to_thread(self._version, model)
        self._check_base(version)
        for engine in self._engines_named(engine_ids):
            await self.manager.ensure_loaded(engine, version)
        return self.residency(OPEN)

    async def unload(self, model: str, engine_ids: list[str] | None) -> ResidencyList:
        version = await asyncio.to_thread(self._version, model)
        if version.id in self.reconciler.desired.needed:
            raise ConflictError(
                f"{version.id} is needed by an alias or pin; move the alias or unpin it first",
                param="model",
            )
        for engine in self._engines_named(engine_ids):
            res = engine.adapters.get(version.id)
            if res is not None:
                res.desired = False
                await self.manager.unload(engine, version.id, drain=True)
        return self.residency(OPEN)

    async def pin(self, model: str, pinned: bool) -> dict[str, Any]:
        version = await asyncio.to_thread(self._version, model)
        if pinned:
            self._check_base(version)

        def write() -> None:
            with self.registry.session() as session:
                (reg.pin if pinned else reg.unpin)(session, version.id)

        await asyncio.to_thread(write)
        report = await self.reconciler.reconcile_once(retry_failed=True)
        self._raise_if_refused(version.id, report)
        return {"version": version.id, "pinned": pinned}

    async def set_alias(
        self,
        adapter: str,
        alias: str,
        version_id: str,
        *,
        expected: str | None,
        expected_given: bool,
        actor: str,
        reason: str,
        evaluation_run_id: str | None = None,
        force: bool = False,
    ) -> AliasChange:
        reg.check_alias(alias)
        version = await asyncio.to_thread(self._version, version_id)
        if version.adapter != adapter:
            raise ValidationError(
                f"version {version.id} belongs to adapter {version.adapter!r}, not {adapter!r}",
                param="version",
            )
        self._check_base(version)
        kwargs: dict[str, Any] = {
            "evaluation_run_id": evaluation_run_id,
            "force": force,
            "reason": reason,
        }
        if expected_given:
            kwargs["expected"] = expected or None

        def precheck() -> None:
            # The registry's move rules (protection, base, servability), before anything loads;
            # the move below runs them again in its own transaction.
            with self.registry.read_session() as session:
                reg.check_move(session, adapter, alias, version.id, **kwargs)

        await asyncio.to_thread(precheck)
        # Load (and validate) everywhere first: a version that cannot be served is refused
        # before the registry moves, and the switch itself is then instant.
        self.reconciler.pending.add(version.id)
        try:
            for engine in [e for e in self.engines if e.ready]:
                await self.manager.ensure_loaded(engine, version, desired=True)

            def write() -> tuple[str | None, bool]:
                with self.registry.session() as session:
                    current = reg.get_alias(session, adapter, alias)
                    previous = current.version_id if current is not None else None
                    reg.set_alias(session, adapter, alias, version.id, actor=actor, **kwargs)
                    return previous, reg.alias_history(session, adapter, alias)[0].forced

            previous, forced = await asyncio.to_thread(write)
            await self.reconciler.reconcile_once()
        finally:
            self.reconciler.pending.discard(version.id)
        served = self.names.table.aliases.get((adapter, alias))
        return AliasChange(
            alias=f"{adapter}:{alias}",
            version=version.id,
            previous=previous,
            served=served,
            forced=forced,
        )

    async def rollback_alias(
        self, adapter: str, alias: str, actor: str, reason: str = ""
    ) -> AliasChange:
        def write() -> tuple[str, str | None, bool]:
            with self.registry.session() as session:
                current = reg.get_alias(session, adapter, alias)
                previous = current.version_id if current is not None else None
                row = reg.rollback_alias(session, adapter, alias, actor=actor, reason=reason)
                forced = reg.alias_history(session, adapter, alias)[0].forced
                return row.version_id, previous, forced

        version_id, previous, forced = await asyncio.to_thread(write)
        report = await self.reconciler.reconcile_once(retry_failed=True)
        self._raise_if_refused(version_id, report)
        return AliasChange(
            alias=f"{adapter}:{alias}",
            version=version_id,
            previous=previous,
            served=self.names.table.aliases.get((adapter, alias)),
            forced=forced,
        )

    async def protect_alias(
        self,
        adapter: str,
        alias: str,
        policy_ref: str,
        *,
        first_baseline: str,
        actor: str,
        reason: str,
    ) -> ProtectionOut:
        def write() -> ProtectionOut:
            name, version = policies.parse_policy_ref(policy_ref)
            with self.registry.session() as session:
                row = policies.protect_alias(
                    session,
                    adapter,
                    alias,
                    name,
                    version,
                    first_baseline=first_baseline,
                    actor=actor,
                    reason=reason,
                )
                return _protection_out(row)

        return await asyncio.to_thread(write)

    async def unprotect_alias(
        self, adapter: str, alias: str, *, actor: str, reason: str
    ) -> ProtectionOut:
        def write() -> ProtectionOut:
            with self.registry.session() as session:
                row = policies.unprotect_alias(session, adapter, alias, actor=actor, reason=reason)
                return _protection_out(row)

        return await asyncio.to_thread(write)

    async def alias_history(self, adapter: str, alias: str) -> AliasHistory:
        reg.check_adapter_name(adapter, "adapter")
        reg.check_alias(alias)

        def read() -> AliasHistory:
            with self.registry.read_session() as session:
                protection = policies.get_protection(session, adapter, alias)
                events = reg.alias_history(session, adapter, alias)
                return AliasHistory(
                    alias=f"{adapter}:{alias}",
                    protection=_protection_out(protection) if protection else None,
                    data=[
                        AliasEventOut(
                            from_version=e.from_version,
                            to_version=e.to_version,
                            actor=e.actor,
                            reason=e.reason,
                            evaluation_run_id=e.evaluation_run_id,
                            forced=e.forced,
                            created_at=e.created_at,
                        )
                        for e in events
                    ],
                )

        return await asyncio.to_thread(read)

    async def reconcile(self) -> dict[str, Any]:
        return await self.reconciler.reconcile_once(retry_failed=True)

    async def import_upload(self, name: str, files: dict[str, bytes]) -> VersionOut:
        tmp = Path(tempfile.mkdtemp(prefix="loraplex-upload-"))
        try:
            for filename, data in files.items():
                safe = Path(filename).name
                if (
                    not safe
                    or safe in {".", ".."}
                    or safe != filename.replace("\\", "/").split("/")[-1]
                ):
                    raise ValidationError(f"bad file name {filename!r}", param="files")
                (tmp / safe).write_bytes(data)
            info, created = await asyncio.to_thread(
                import_adapter,
                self.registry,
                self.store,
                self.validator,
                tmp,
                name,
                source="upload",
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return VersionOut(
            id=info.id,
            adapter=info.adapter,
            version=info.version,
            sha256=info.sha256,
            base_model=info.base_model,
            rank=info.rank,
            size_bytes=info.size_bytes,
            created=created,
        )

    def _check_base(self, version: VersionInfo) -> None:
        if version.base_model != self.base.name:
            raise ValidationError(
                f"{version.id} is an adapter for base model {version.base_model!r}; this server "
                f"serves {self.base.name!r}",
                param="model",
                code="adapter_not_servable",
            )

    def _raise_if_refused(self, vid: str, report: dict[str, Any]) -> None:
        failure = report.get("failures", {}).get(vid)
        if failure:
            raise ValidationError(
                failure["message"],
                param="model",
                code="adapter_not_servable",
                details=failure["details"],
            )

    # -- canary ----------------------------------------------------------------------------------
    async def _canary(self, engine: Engine, version: VersionInfo) -> None:
        base = await self._next_token_logprobs(engine, engine.served_name or self.base.name)
        adapted = await self._next_token_logprobs(engine, version.id)
        shared = set(base) & set(adapted)
        if (
            shared
            and all(abs(base[t] - adapted[t]) < 1e-4 for t in shared)
            and len(shared) == len(base)
        ):
            raise ValidationError(
                f"canary: {version.id} answers exactly like the base model (its LoRA changes "
                "nothing)",
                param="model",
                code="adapter_not_servable",
            )

    async def _next_token_logprobs(self, engine: Engine, model: str) -> dict[str, float]:
        assert self.session is not None
        body = {
            "model": model,
            "prompt": CANARY_PROMPT,
            "max_tokens": 1,
            "temperature": 0,
            "logprobs": 5,
        }
        async with self.session.post(
            engine.url + "/v1/completions",
            json=body,
            timeout=aiohttp.ClientTimeout(total=self.settings.load_timeout_s),
        ) as resp:
            if resp.status != 200:
                raise ValidationError(
                    f"canary request for {model} failed with {resp.status}: "
                    f"{(await resp.text())[:300]}",
                    param="model",
                )
            data = await resp.json()
        top = data["choices"][0]["logprobs"]["top_logprobs"][0]
        return {str(k): float(v) for k, v in top.items()}


def _protection_out(row: ProtectedAliasRow) -> ProtectionOut:
    return ProtectionOut(
        alias=f"{row.adapter_name}:{row.alias}",
        policy=f"{row.policy_name}@{row.policy_version}",
        policy_sha256=row.policy_sha256,
        first_baseline=row.first_baseline,
        actor=row.actor,
        created_at=row.created_at,
    )


def _version_meta(info: VersionInfo) -> dict[str, Any]:
    return {
        "adapter": info.adapter,
        "version": info.version,
        "version_id": info.id,
        "base_model": info.base_model,
        "base_model_sha256": info.base_model_sha256,
        "rank": info.rank,
        "size_bytes": info.size_bytes,
        "sha256": info.sha256,
        "created_at": info.created.astimezone(UTC).isoformat()
        if info.created.tzinfo
        else info.created.replace(tzinfo=UTC).isoformat(),
    }


def _card(
    public: str, info: VersionInfo, base: str, max_len: int, meta: dict[str, Any]
) -> ModelCard:
    created = info.created if info.created.tzinfo else info.created.replace(tzinfo=UTC)
    return ModelCard(
        id=public,
        created=int(created.timestamp()),
        root=info.id,
        parent=base,
        max_model_len=max_len,
        loraplex=meta,
    )
