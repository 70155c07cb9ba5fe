"""Rows the registry tests start from: a base model and versions of an adapter."""

from __future__ import annotations

from shared.registry import adapters as reg
from shared.registry.db import Registry
from shared.registry.models import BaseModelRow

SHA_A = "a" * 64
SHA_B = "b" * 64
SHA_C = "c" * 64


def seed_base(registry: Registry) -> None:
    with registry.session() as s:
        s.add(BaseModelRow(name="tiny", weights_sha256="f" * 64, path="/m", source="test"))


def add_version(registry: Registry, sha: str, name: str = "bot") -> str:
    with registry.session() as s:
        row, _ = reg.register_version(
            s,
            reg.NewVersion(
                adapter_name=name, sha256=sha, base_model="tiny", rank=8, size_bytes=1, manifest={}
            ),
        )
        return row.id
