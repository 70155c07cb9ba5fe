"""Request and response bodies of the server's own endpoints (the OpenAI ones are vLLM's)."""

from __future__ import annotations

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
    reason: str = Field(default="", max_length=2000)
    actor: str = Field(default="admin-api", max_length=128)


class AliasChange(BaseModel):
    alias: str
    version: str
    previous: str | None
    served: str | None = Field(description="What the server answers with now.")


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
