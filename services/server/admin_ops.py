"""Admin operations: load, unload and pin versions, move, roll back and protect aliases, import
adapters. Each writes the registry through :mod:`shared.registry` (whose move transaction holds the
rules) and then asks the reconciler to converge; ``api/admin.py`` maps them to routes.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from services.server.auth import OPEN
from services.server.catalog import Catalog
from services.server.config import ServerSettings
from services.server.declared_base import BaseStatement
from services.server.engines import Engine
from services.server.errors import Unavailable
from services.server.importer import import_adapter
from services.server.manager import AdapterManager
from services.server.names import Names, VersionInfo
from services.server.reconcile import Reconciler
from services.server.schemas import (
    AliasChange,
    AliasEventOut,
    AliasHistory,
    ProtectionOut,
    ResidencyList,
    VersionOut,
)
from services.server.validation import AdapterValidator, BaseIdentity
from shared.artifacts import ArtifactStore
from shared.errors import ConflictError, NotFoundError, ValidationError
from shared.registry import adapters as reg
from shared.registry import policies
from shared.registry.db import Registry
from shared.registry.models import ProtectedAliasRow


class AdminOperations:
    def __init__(
        self,
        settings: ServerSettings,
        registry: Registry,
        store: ArtifactStore,
        base: BaseIdentity,
        validator: AdapterValidator,
        engines: Sequence[Engine],
        names: Names,
        manager: AdapterManager,
        reconciler: Reconciler,
        catalog: Catalog,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.store = store
        self.base = base
        self.validator = validator
        self.engines = engines
        self.names = names
        self.manager = manager
        self.reconciler = reconciler
        self.catalog = catalog

    def _version(self, model: str) -> VersionInfo:
        with self.registry.session() as session:
            return VersionInfo.from_row(reg.resolve(session, model))

    def _engines_named(self, ids: list[str] | None) -> list[Engine]:
        if not ids:
            ready = [e for e in self.engines if e.ready]
            if not ready:
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
        if version.is_full:
            raise ValidationError(
                f"{version.id} is a full fine-tune, served by an engine of its own while an alias "
                "or a pin names it: pin it or point an alias at it",
                param="model",
                code="model_not_loadable",
            )
        for engine in self._engines_named(engine_ids):
            await self.manager.ensure_loaded(engine, version)
        return self.catalog.residency(OPEN)

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
        return self.catalog.residency(OPEN)

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
            if version.is_full:
                await self._start_full(version)
            for engine in [e for e in self.engines if e.ready and not version.is_full]:
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

    async def import_upload(
        self, name: str, files: dict[str, bytes], statement: BaseStatement | None = None
    ) -> VersionOut:
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
                statement=statement,
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
            declared_base=info.manifest.get("declared_base"),
        )

    async def _start_full(self, version: VersionInfo) -> None:
        """Start the full version's engine and wait until it is healthy (the alias moves only
        then, so the switch is a table swap); a refusal (its folder, the engine limit) is 422."""
        full = self.reconciler.full
        if full is None:
            raise ValidationError(f"{version.id} is a full fine-tune; this server serves none")
        await full.ensure(version)
        deadline = time.monotonic() + self.settings.engine_startup_timeout_s
        while version.id not in full.ready_versions():
            if time.monotonic() > deadline or version.id not in full.slots:
                raise Unavailable(
                    f"the engine of full version {version.id} did not become ready; nothing moved",
                    retry_after=self.settings.retry_after_s,
                )
            await asyncio.sleep(0.5)

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


def _protection_out(row: ProtectedAliasRow) -> ProtectionOut:
    return ProtectionOut(
        alias=f"{row.adapter_name}:{row.alias}",
        policy=f"{row.policy_name}@{row.policy_version}",
        policy_sha256=row.policy_sha256,
        first_baseline=row.first_baseline,
        actor=row.actor,
        created_at=row.created_at,
    )
