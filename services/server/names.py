"""Public model names and what they resolve to.

A request's ``model`` is the base model's name, an adapter version id (``name@vN``), or an alias
(``name:alias``; a bare ``name`` means ``name:prod``). The server answers from an immutable
:class:`NameTable` that the reconciler rebuilds and swaps in one assignment, so a request sees
either the old mapping or the new one, never half of each.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, Literal

from shared.registry.adapters import DEFAULT_ALIAS, VERSION_ID_RE
from shared.registry.models import AdapterVersionRow
from shared.registry.versions import FULL_KIND, LORA_KIND, version_kind

NameKind = Literal["base", "version", "alias"]


@dataclass(frozen=True)
class VersionInfo:
    """The registry's facts about one adapter version (versions are immutable, so cacheable)."""

    id: str
    adapter: str
    version: int
    sha256: str
    base_model: str
    base_model_sha256: str
    rank: int
    size_bytes: int
    created: datetime
    manifest: Mapping[str, Any] = field(default_factory=dict)
    kind: str = LORA_KIND
    """``lora`` (an adapter) or ``full`` (a full fine-tune, served by an engine of its own)."""

    @classmethod
    def from_row(cls, row: AdapterVersionRow) -> VersionInfo:
        return cls(
            id=row.id,
            adapter=row.adapter_name,
            version=row.version,
            sha256=row.sha256,
            base_model=row.base_model,
            base_model_sha256=row.base_model_sha256,
            rank=row.rank,
            size_bytes=row.size_bytes,
            created=row.created_at,
            manifest=MappingProxyType(dict(row.manifest or {})),
            kind=version_kind(row.manifest or {}),
        )

    @property
    def is_full(self) -> bool:
        return self.kind == FULL_KIND


@dataclass(frozen=True)
class ParsedName:
    kind: NameKind
    adapter: str = ""
    alias: str = ""
    version_id: str = ""

    @property
    def adapter_name(self) -> str:
        return self.adapter


def parse_name(name: str, base_name: str) -> ParsedName:
    """Classify a requested model name (no registry access)."""
    if name == base_name:
        return ParsedName("base")
    match = VERSION_ID_RE.match(name)
    if match:
        return ParsedName("version", adapter=match["name"], version_id=name)
    adapter, _, alias = name.partition(":")
    return ParsedName("alias", adapter=adapter, alias=alias or DEFAULT_ALIAS)


def adapter_of(name: str) -> str:
    """The adapter a name refers to ('' for names that cannot be an adapter's)."""
    match = VERSION_ID_RE.match(name)
    if match:
        return match["name"]
    return name.partition(":")[0]


@dataclass(frozen=True)
class Target:
    """What a request is served by: the base model, or one adapter version."""

    version: VersionInfo | None

    @property
    def is_base(self) -> bool:
        return self.version is None

    @property
    def is_full(self) -> bool:
        return self.version is not None and self.version.is_full

    @property
    def key(self) -> str:
        """The residency key: the version id, or '' for the base model. A full version's engine
        serves it under this name too."""
        return self.version.id if self.version is not None else ""


BASE = Target(None)


@dataclass(frozen=True)
class NameTable:
    """One consistent snapshot of names -> versions. Built by the reconciler, never mutated."""

    base_name: str
    versions: Mapping[str, VersionInfo] = field(default_factory=dict)
    aliases: Mapping[tuple[str, str], str] = field(default_factory=dict)
    generation: int = 0

    def lookup(self, name: str) -> Target | None:
        """The target for ``name``, or None when this table does not serve it (yet)."""
        parsed = parse_name(name, self.base_name)
        if parsed.kind == "base":
            return BASE
        if parsed.kind == "version":
            info = self.versions.get(parsed.version_id)
            return Target(info) if info is not None else None
        vid = self.aliases.get((parsed.adapter, parsed.alias))
        if vid is None:
            return None
        info = self.versions.get(vid)
        return Target(info) if info is not None else None

    def alias_names(self) -> list[tuple[str, str, str]]:
        """(public name, adapter:alias, version id) for every alias, bare name for ``prod``."""
        out = []
        for (adapter, alias), vid in sorted(self.aliases.items()):
            out.append((f"{adapter}:{alias}", f"{adapter}:{alias}", vid))
            if alias == DEFAULT_ALIAS:
                out.append((adapter, f"{adapter}:{alias}", vid))
        return out


class Names:
    """Holder of the current table. Readers take ``names.table`` once per request."""

    def __init__(self, base_name: str) -> None:
        self.table = NameTable(base_name)

    def swap(self, table: NameTable) -> None:
        # One attribute store: atomic for every reader on the event loop and in threads.
        self.table = table
