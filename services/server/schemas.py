"""Request and response bodies of the server's own endpoints (the OpenAI ones are vLLM's)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoadRequest(_Strict):
    model: str = Field(description="Version id (name@vN) or alias (name:alias) to load.")
    engines: list[str] | None = Field(default=None, description="Engine ids; default: all ready.")


class UnloadRequest(_Strict):
    model: str = Field(description="Version id (name@vN) to unload.")
    engines: list[str] | None = None


class PinRequest(_Strict):
    model: str = Field(description="Version id (name@vN) to keep loaded on every engine.")


class AliasRequest(_Strict):
    version: str = Field(description="Version id the alias should point at.")
    expected: str | None = Field(
        default=None,
        description="Compare-and-set: the version the alias holds now ('' when it must not "
        "exist yet). Omit to move unconditionally.",
    )
    evaluation_run_id: str | None = Field(
        default=None,
        max_length=64,
        description="Evidence for a protected alias: a passing evaluation of this version against "
        "the alias's current one under the protection's policy.",
    )
    force: bool = Field(
        default=False,
        description="Move a protected alias without evidence (needs a reason; recorded). Base "
        "model and servability checks still apply.",
    )
    reason: str = Field(default="", max_length=2000)
    actor: str = Field(default="admin-api", max_length=128)


class RollbackRequest(_Strict):
    reason: str = Field(
        default="", max_length=2000, description="Required when the alias is protected; recorded."
    )
    actor: str = Field(default="admin-api", max_length=128)


class AliasChange(BaseModel):
    alias: str
    version: str
    previous: str | None
    served: str | None = Field(description="What the server answers with now.")
    forced: bool = Field(default=False, description="True when a protection was overridden.")


class ProtectionRequest(_Strict):
    policy: str = Field(
        max_length=140,
        description="Registered gate policy: NAME (its latest version now) or NAME@VERSION.",
    )
    first_baseline: str = Field(
        default="base",
        min_length=1,
        max_length=255,
        description=(
            "What a first release must have been compared with ('base': the base model); several, "
            "comma-separated, to require a pass against each (e.g. 'base,base+fewshot:4')."
        ),
    )
    reason: str = Field(default="", max_length=2000)
    actor: str = Field(default="admin-api", max_length=128)


class ProtectionOut(BaseModel):
    alias: str
    policy: str = Field(description="NAME@VERSION of the policy the alias is protected by.")
    policy_sha256: str
    first_baseline: str
    actor: str
    created_at: datetime


class AliasEventOut(BaseModel):
    from_version: str | None
    to_version: str
    actor: str
    reason: str
    evaluation_run_id: str | None
    forced: bool
    created_at: datetime


class AliasHistory(BaseModel):
    object: str = "list"
    alias: str
    protection: ProtectionOut | None
    data: list[AliasEventOut]


class ResidencyEntry(BaseModel):
    id: str
    adapter: str
    version: int
    state: str
    rank: int
    size_bytes: int
    loaded_at: float | None
    load_seconds: float | None
    last_used: float
    in_flight: int
    pinned: bool
    desired: bool
    aliases: list[str]


class EngineResidency(BaseModel):
    engine: str
    url: str
    state: str
    generation: int
    in_flight: int
    restarts: int
    patched: bool
    last_error: str
    adapters: list[ResidencyEntry]


class ResidencyList(BaseModel):
    object: str = "list"
    data: list[EngineResidency]


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    object: str = "model"
    created: int
    owned_by: str = "loraplex"
    root: str
    parent: str | None = None
    max_model_len: int | None = None
    loraplex: dict[str, Any] = Field(default_factory=dict)


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]


class VersionOut(BaseModel):
    id: str
    adapter: str
    version: int
    sha256: str
    base_model: str
    rank: int
    size_bytes: int
    created: bool = Field(description="False when the same content was already registered.")
    declared_base: dict[str, Any] | None = Field(
        default=None,
        description="The base the adapter declares and how it was accepted (its lineage record).",
    )
