"""What is being evaluated: an adapter version, an alias, or the base model, fully identified.

A subject's identity is what makes a cached answer reusable: base weights hash, adapter content
hash, and (added by the caller) decoding settings and the serving endpoint. lm-eval's own cache key
lacks the model (lm-eval issue 2715), so every cache here is keyed by this identity.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from shared.artifacts import open_store
from shared.basemodel import ResolvedBaseModel, resolve_base_model
from shared.datasets.records import Message
from shared.errors import NotFoundError, ValidationError
from shared.registry import adapters
from shared.registry.models import AdapterVersionRow, BaseModelRow
from shared.settings import SharedSettings

BASE_KEYWORDS = ("base",)


@dataclass(frozen=True)
class Subject:
    """A model to evaluate. ``label`` is what users typed, resolved (``name@vN`` or base name)."""

    label: str
    base: ResolvedBaseModel
    version_id: str | None = None
    adapter_path: Path | None = None
    adapter_sha256: str | None = None
    manifest: dict[str, Any] = field(default_factory=dict)
    requested: str = ""
    # A few-shot base (``base+fewshot:K``, fewshot.py): K worked examples put before each prompt.
    shots: tuple[tuple[Message, ...], ...] = ()

    @property
    def is_base(self) -> bool:
        return self.version_id is None

    @property
    def adapter_name(self) -> str | None:
        return self.version_id.split("@", 1)[0] if self.version_id else None

    @property
    def served_name(self) -> str:
        """The ``model`` value our server answers to for exactly this subject."""
        return self.version_id or self.base.name

    @property
    def token(self) -> str:
        """How a run's evidence names the subject: its version id, the base model's registry
        name, or that name with ``+fewshot:K``."""
        return self.version_id or self.label

    def identity(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "base_model": self.base.name,
            "base_weights_sha256": self.base.weights_sha256,
            "adapter": self.version_id,
            "adapter_sha256": self.adapter_sha256,
        }
        if self.shots:  # only then, so the zero-shot base keeps its cached answers
            out["fewshot_sha256"] = self.shots_sha256
        return out

    @property
    def shots_sha256(self) -> str:
        payload = [[[m.role, m.content] for m in shot] for shot in self.shots]
        return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode()).hexdigest()

    def identity_hash(self, **extra: Any) -> str:
        payload = {**self.identity(), **extra}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _is_base_name(settings: SharedSettings, name: str, session: Session) -> bool:
    if name in BASE_KEYWORDS or name == settings.base_model:
        return True
    return session.get(BaseModelRow, name) is not None


def _base_for(settings: SharedSettings, session: Session, name: str) -> ResolvedBaseModel:
    return resolve_base_model(settings, name, session=session)


def _from_version(
    settings: SharedSettings, session: Session, row: AdapterVersionRow, requested: str
) -> Subject:
    base = _base_for(settings, session, row.base_model)
    if base.weights_sha256 != row.base_model_sha256:
        raise ValidationError(
            f"{row.id} was trained on base weights {row.base_model_sha256[:12]}, but base model "
            f"{row.base_model!r} now has weights {base.weights_sha256[:12]}",
            param="candidate",
        )
    path = open_store(settings).get_dir(row.sha256)
    return Subject(
        label=row.id,
        base=base,
        version_id=row.id,
        adapter_path=path,
        adapter_sha256=row.sha256,
        manifest=dict(row.manifest or {}),
        requested=requested,
    )


def resolve_subject(
    settings: SharedSettings, session: Session, name: str, *, param: str = "candidate"
) -> Subject:
    """``name@vN``, ``name:alias``, bare ``name`` (its ``prod``), or a base model name/``base``."""
    name = name.strip()
    if not name:
        raise ValidationError(f"{param} is empty", param=param)
    if len(name) > 255 or not name.isprintable():
        raise ValidationError(f"{param} is not a model name", param=param)
    if _is_base_name(settings, name, session):
        base_name = settings.base_model if name in BASE_KEYWORDS else name
        base = _base_for(settings, session, base_name)
        return Subject(label=base.name, base=base, requested=name)
    try:
        row = adapters.resolve(session, name)
    except NotFoundError as exc:
        raise NotFoundError(
            f"unknown {param} {name!r}: no adapter version (name@vN), alias (name:alias), adapter "
            f"with a prod alias, or base model of that name",
            param=param,
        ) from exc
    return _from_version(settings, session, row, name)


def default_baseline(settings: SharedSettings, session: Session, candidate: Subject) -> Subject:
    """The adapter's ``prod`` version if it has one other than the candidate, else the base model."""
    if candidate.adapter_name:
        alias = adapters.get_alias(session, candidate.adapter_name, adapters.DEFAULT_ALIAS)
        if alias is not None and alias.version_id != candidate.version_id:
            row = adapters.get_version(session, alias.version_id)
            return _from_version(
                settings, session, row, f"{candidate.adapter_name}:{adapters.DEFAULT_ALIAS}"
            )
    return Subject(label=candidate.base.name, base=candidate.base, requested="base")
