"""Rows the registry tests start from: a base model and versions of an adapter."""

from __future__ import annotations

from typing import Any

from shared.registry import adapters as reg
from shared.registry.db import Registry
from shared.registry.models import BaseModelRow

SHA_A = "a" * 64
SHA_B = "b" * 64
SHA_C = "c" * 64


def seed_base(registry: Registry) -> None:
    with registry.session() as s:
        s.add(BaseModelRow(name="tiny", weights_sha256="f" * 64, path="/m", source="test"))


def add_version(
    registry: Registry,
    sha: str,
    name: str = "bot",
    *,
    rank: int = 8,
    manifest: dict[str, Any] | None = None,
) -> str:
    with registry.session() as s:
        row, _ = reg.register_version(
            s,
            reg.NewVersion(
                adapter_name=name,
                sha256=sha,
                base_model="tiny",
                rank=rank,
                size_bytes=1,
                manifest=manifest or {},
            ),
        )
        return row.id
