"""What is being evaluated: an adapter version, an alias, or the base model, fully identified.

A subject's identity is what makes a cached answer reusable: base weights hash, adapter content
hash, and (added by the caller) decoding settings and the serving endpoint. lm-eval's own cache key
lacks the model (lm-eval issue 2715), so every cache here is keyed by this identity.

A version is a LoRA adapter on its base or a full fine-tune (``kind: full`` in its manifest,
``shared.registry.versions``): a complete model folder that replaces the base's weights, so its
identity also names its kind and the hash of its weight files.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from shared.artifacts import TREE_INDEX, file_sha256, open_store, tree_sha256
from shared.basemodel import ResolvedBaseModel, resolve_base_model
from shared.datasets.records import Message
from shared.errors import NotFoundError, ValidationError
from shared.registry import adapters
from shared.registry.models import AdapterVersionRow, BaseModelRow
from shared.registry.versions import FULL_KIND, version_kind
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
    # A full fine-tune's weight files (the safetensors in its folder), hashed together.
    weights_sha256: str | None = None

    @property
    def is_base(self) -> bool:
        return self.version_id is None

    @property
    def is_full(self) -> bool:
        """A full fine-tune: ``adapter_path`` is a whole model folder, not a PEFT adapter."""
        return self.version_id is not None and version_kind(self.manifest) == FULL_KIND

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
        if self.is_full:  # only then, so LoRA versions keep their cached answers
            out["kind"] = FULL_KIND
            out["weights_sha256"] = self.weights_sha256
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
    manifest = dict(row.manifest or {})
    full = version_kind(manifest) == FULL_KIND
    return Subject(
        label=row.id,
        base=base,
        version_id=row.id,
        adapter_path=path,
        adapter_sha256=row.sha256,
        manifest=manifest,
        requested=requested,
        weights_sha256=full_weights_sha256(path, row.sha256) if full else None,
    )


WEIGHT_SUFFIXES = (".safetensors", ".bin")


def full_weights_sha256(folder: Path, tree_sha: str) -> str:
    """One hash over a model folder's weight files (``name\0sha\n`` lines, sorted).

    The store's tree index already lists every file's hash; it is trusted only when it hashes to
    the tree's key (the store verified the files against that key), else the files are read."""
    files: dict[str, str] = {}
    index = folder / TREE_INDEX
    if index.is_file():
        listed = json.loads(index.read_text()).get("files") or {}
        if isinstance(listed, dict) and tree_sha256(listed) == tree_sha:
            files = listed
    if not files:
        files = {
            p.relative_to(folder).as_posix(): file_sha256(p)
            for p in folder.rglob("*")
            if p.is_file()
        }
    weights = {k: v for k, v in files.items() if k.endswith(WEIGHT_SUFFIXES)}
    if not weights:
        raise ValidationError(
            f"full model folder {folder} holds no weight files (*.safetensors)", param="candidate"
        )
    return tree_sha256(weights)


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
