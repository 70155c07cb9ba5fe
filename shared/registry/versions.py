"""Reading registered adapter versions: one by id, or all of an adapter.

Below :mod:`shared.registry.adapters` (which re-exports these) so that modules it re-exports, such
as :mod:`shared.registry.pins`, can look a version up without importing it back.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.errors import NotFoundError
from shared.registry.models import AdapterVersionRow


def get_version(session: Session, vid: str) -> AdapterVersionRow:
    row = session.get(AdapterVersionRow, vid)
    if row is None:
        raise NotFoundError(f"adapter version {vid!r} does not exist", param="version")
    return row


def list_versions(session: Session, adapter_name: str | None = None) -> list[AdapterVersionRow]:
    stmt = select(AdapterVersionRow).order_by(
        AdapterVersionRow.adapter_name, AdapterVersionRow.version
    )
    if adapter_name is not None:
        stmt = stmt.where(AdapterVersionRow.adapter_name == adapter_name)
    return list(session.scalars(stmt))


# What a version's folder holds, recorded in its manifest as ``kind``. A LoRA version (the default,
# and every version registered before full fine-tuning existed) is a PEFT folder applied on its
# ``base_model``; a full version is a complete Hugging Face model folder (``config.json``,
# ``model.safetensors``, tokenizer files, the manifest) fine-tuned from ``base_model``: it is
# evaluated, aliased, gated and exported like any version, but served by an engine of its own.
LORA_KIND = "lora"
FULL_KIND = "full"


def version_kind(manifest: dict[str, object]) -> str:
    return str(manifest.get("kind", LORA_KIND))


def is_full_model(row: AdapterVersionRow) -> bool:
    return version_kind(row.manifest or {}) == FULL_KIND
