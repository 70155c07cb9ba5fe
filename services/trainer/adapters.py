"""Store a finished adapter (or full model) folder and register it as an immutable,
content-addressed version."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from shared.artifacts import open_store
from shared.basemodel import ResolvedBaseModel, register_base_model
from shared.registry.adapters import NewVersion, register_version
from shared.registry.db import open_registry
from shared.registry.models import AdapterVersionRow
from shared.registry.versions import FULL_KIND, version_kind
from shared.settings import SharedSettings

InSession = Callable[[Session, AdapterVersionRow, bool], None]


def store_and_register(
    settings: SharedSettings,
    folder: Path,
    manifest: dict[str, Any],
    base: ResolvedBaseModel,
    adapter_name: str,
    *,
    job_id: str | None = None,
    in_session: InSession | None = None,
) -> str:
    """Put the folder in the artifact store, then register it in one transaction.

    ``in_session`` runs inside the same transaction (the worker marks its job succeeded there), so
    a version exists if and only if its job finished; identical content returns the version that
    already exists instead of making a second one.
    """
    sha = open_store(settings).put_dir(folder)
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    # A full model has no rank: it is not a low-rank update but the whole model.
    full = version_kind(manifest) == FULL_KIND
    rank = 0 if full else int(json.loads((folder / "adapter_config.json").read_text())["r"])
    registry = open_registry(settings)
    try:
        with registry.session() as session:
            register_base_model(session, base)
            row, created = register_version(
                session,
                NewVersion(
                    adapter_name=adapter_name,
                    sha256=sha,
                    base_model=base.name,
                    rank=rank,
                    size_bytes=size,
                    manifest=manifest,
                    job_id=job_id,
                ),
            )
            if in_session is not None:
                in_session(session, row, created)
            return row.id
    finally:
        registry.dispose()
