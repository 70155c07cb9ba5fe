"""What the server serves, as the inference API lists it: model cards (``/v1/models``) and adapter
residency per engine (``/v1/adapters``), each filtered by what the caller's key may see."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC
from typing import Any

from services.server.auth import AccessScope
from services.server.config import ServerSettings
from services.server.engines import Engine
from services.server.names import Names, NameTable, VersionInfo
from services.server.reconcile import Reconciler
from services.server.schemas import (
    EngineResidency,
    ModelCard,
    ModelList,
    ResidencyEntry,
    ResidencyList,
)
from services.server.validation import BaseIdentity
from shared.registry.db import Registry
from shared.registry.evaluation_runs import latest_runs_by_candidate


class Catalog:
    def __init__(
        self,
        settings: ServerSettings,
        registry: Registry,
        base: BaseIdentity,
        engines: Sequence[Engine],
        names: Names,
        reconciler: Reconciler,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.base = base
        self.engines = engines
        self.names = names
        self.reconciler = reconciler
        self.started_at = time.time()

    def residency(self, scope: AccessScope) -> ResidencyList:
        aliases_of = _aliases_of(self.names.table)
        pins = self.reconciler.desired.pins
        data = []
        full = self.reconciler.full
        for engine in [*self.engines, *(full.engines() if full is not None else [])]:
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

    async def models(self, scope: AccessScope) -> ModelList:
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
        aliases_of = _aliases_of(table)
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
        """The three newest evaluation runs of each version, as its card shows them."""
        if not vids:
            return {}
        with self.registry.read_session() as session:
            runs = latest_runs_by_candidate(session, vids, per_candidate=3)
            return {
                vid: [
                    {"id": r.id, "status": r.status, "decision": r.decision, "summary": r.summary}
                    for r in rows
                ]
                for vid, rows in runs.items()
            }


def _aliases_of(table: NameTable) -> dict[str, list[str]]:
    """Version id -> the public alias names that point at it."""
    aliases_of: dict[str, list[str]] = {}
    for public, _, vid in table.alias_names():
        aliases_of.setdefault(vid, []).append(public)
    return aliases_of


def _version_meta(info: VersionInfo) -> dict[str, Any]:
    return {
        "adapter": info.adapter,
        "version": info.version,
        "version_id": info.id,
        # lora: an adapter on its base's engines; full: a model of its own (its own engine),
        # whose parent is the base it was fine-tuned from.
        "version_kind": info.kind,
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
