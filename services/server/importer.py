"""Bring adapters in (trained elsewhere) and take them out (merged into the base model).

Import runs the same checks as loading (servability, base shapes, a non-zero delta) before the
folder enters the artifact store and the registry, so a registered version is a loadable one; an
adapter that declares another base than the served one is refused unless an operator states it is
this base (:mod:`services.server.declared_base`), which the version's manifest records.
Export writes the base model with the adapter merged in (peft ``merge_and_unload``): a plain
transformers folder that vLLM and transformers load without LoRA support. A full fine-tune
(``kind: full``, :mod:`shared.registry.versions`) already is such a folder: it is exported as a
copy, never loaded as a PEFT adapter, and a full model folder is refused by import.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from services.server.config import ServerSettings
from services.server.declared_base import BaseStatement, check_declared_base
from services.server.names import VersionInfo
from services.server.validation import AdapterValidator, BaseIdentity
from shared.artifacts import TREE_INDEX, ArtifactStore
from shared.basemodel import ResolvedBaseModel, known_names, register_base_model, resolve_base_model
from shared.errors import ConflictError, IntegrityError, NotFoundError, ValidationError
from shared.registry import adapters as reg
from shared.registry.db import Registry
from shared.registry.versions import FULL_KIND, LORA_KIND, version_kind
from shared.servability import read_adapter_config
from shared.settings import SharedSettings

log = logging.getLogger(__name__)

EXPORT_MARKER = "loraplex_export.json"


def import_adapter(
    registry: Registry,
    store: ArtifactStore,
    validator: AdapterValidator,
    folder: Path,
    name: str,
    *,
    source: str = "import",
    statement: BaseStatement | None = None,
) -> tuple[VersionInfo, bool]:
    """Validate ``folder`` and register it as the next version of ``name``.

    Returns ``(version, created)``; the same content imported twice is one version (with the
    manifest of its first import). ``statement``: the operator says the base the adapter declares
    is the served one (needed only when it names another).
    """
    reg.check_adapter_name(name, "name")
    if not folder.is_dir():
        raise NotFoundError(f"{folder} is not a directory", param="path")
    if is_full_model_folder(folder):
        raise ValidationError(
            f"{folder} is a full model (config.json and weights, no adapter_config.json), not a "
            "LoRA adapter; import registers PEFT LoRA adapters only (a full fine-tune is "
            "registered by the trainer)",
            param="path",
            code="adapter_not_servable",
        )
    reasons = validator.check_files(folder)
    if reasons:
        raise ValidationError(
            f"{folder} is not an adapter this server can load",
            param="path",
            code="adapter_not_servable",
            details=reasons,
        )
    config, _ = read_adapter_config(folder)
    assert config is not None
    declared_base = check_declared_base(config, validator.base, statement)
    sha = store.put_dir(folder)
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    manifest = {
        "source": source,
        "imported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "adapter_config": {
            k: config.get(k)
            for k in ("r", "lora_alpha", "target_modules", "base_model_name_or_path", "task_type")
        },
        "declared_base": declared_base,
    }
    base = validator.base
    with registry.session() as session:
        row, created = reg.register_version(
            session,
            reg.NewVersion(
                adapter_name=name,
                sha256=sha,
                base_model=base.name,
                rank=int(config["r"]),
                size_bytes=size,
                manifest=manifest,
            ),
        )
        if row.base_model_sha256 != base.weights_sha256:
            raise ConflictError(
                f"base model {base.name!r} is registered with other weights than the served ones",
                param="base_model",
            )
        info = VersionInfo.from_row(row)
    return info, created


def is_full_model_folder(folder: Path) -> bool:
    """A complete model folder (a full fine-tune, or any transformers checkpoint) rather than a
    PEFT adapter: its manifest says ``kind: full``, or it has a model config and weights but no
    adapter config."""
    manifest = folder / "loraplex_manifest.json"
    if manifest.is_file():
        try:
            if version_kind(json.loads(manifest.read_text())) == FULL_KIND:
                return True
        except (ValueError, AttributeError):
            pass  # an unreadable manifest is the adapter checks' business
    if (folder / "adapter_config.json").exists() or not (folder / "config.json").is_file():
        return False
    return any(folder.glob("*.safetensors")) or any(folder.glob("pytorch_model*.bin"))


def is_full_version(version: VersionInfo) -> bool:
    return version_kind(dict(version.manifest)) == FULL_KIND


def import_folder(
    settings: ServerSettings, folder: Path, name: str, *, statement: BaseStatement | None = None
) -> tuple[VersionInfo, bool]:
    """:func:`import_adapter` against the configured registry, store and base (the CLI's)."""
    from shared.artifacts import open_store
    from shared.registry.db import open_registry

    registry = open_registry(settings)
    store = open_store(settings)
    try:
        base = base_identity(settings, registry)
        validator = AdapterValidator(store, base, settings.max_lora_rank)
        return import_adapter(registry, store, validator, folder, name, statement=statement)
    finally:
        registry.dispose()


def merge_fp32(
    settings: SharedSettings, registry: Registry, store: ArtifactStore, model: str
) -> tuple[VersionInfo, ResolvedBaseModel, Any]:
    """Resolve ``model`` (version id or alias) and merge it into its base in float32.

    Returns ``(version, base, merged transformers model)``; refuses when the base's weights are
    no longer the ones the version was trained on. A full fine-tune has nothing to merge: it is
    its own folder loaded in float32, whatever the base's weights are now."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    with registry.session() as session:
        version = VersionInfo.from_row(reg.resolve(session, model))
        base = resolve_base_model(settings, version.base_model, session=session)
        register_base_model(session, base)
    if is_full_version(version):
        folder = store.get_dir(version.sha256)
        return version, base, AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    if base.weights_sha256 != version.base_model_sha256:
        raise IntegrityError(
            f"{version.id} was trained on base weights {version.base_model_sha256[:12]}, but "
            f"{base.name!r} now has weights {base.weights_sha256[:12]}",
            param="model",
        )
    folder = store.get_dir(version.sha256)
    model_fp32 = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model_fp32, folder).merge_and_unload()
    return version, base, merged


def export_merged(
    settings: SharedSettings,
    registry: Registry,
    store: ArtifactStore,
    model: str,
    out: Path,
    *,
    force: bool = False,
) -> Path:
    """Write base + adapter merged into ``out`` (a transformers folder); returns ``out``."""
    import torch
    from transformers import AutoTokenizer

    if out.exists() and any(out.iterdir()) and not force:
        raise ConflictError(f"{out} exists and is not empty; pass --force", param="out")
    with registry.session() as session:
        found = VersionInfo.from_row(reg.resolve(session, model))
    if is_full_version(found):
        return _copy_full(store, found, out)
    version, base, merged = merge_fp32(settings, registry, store, model)
    config = json.loads((base.path / "config.json").read_text())
    dtype = getattr(torch, str(config.get("dtype") or config.get("torch_dtype") or "float32"))
    # Merged in float32 so the sum is not rounded twice; stored in the base's own dtype.
    merged.to(dtype)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp, safe_serialization=True)
    AutoTokenizer.from_pretrained(base.path).save_pretrained(tmp)
    (tmp / EXPORT_MARKER).write_text(
        json.dumps(
            {
                "merged_from": version.id,
                "kind": LORA_KIND,
                "adapter_sha256": version.sha256,
                "base_model": base.name,
                "base_model_sha256": base.weights_sha256,
                "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
            indent=2,
        )
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():  # empty, or non-empty with force: replaced only once the new one is written
        shutil.rmtree(out)
    tmp.rename(out)
    log.info("exported %s merged into %s", version.id, out)
    return out


def _copy_full(store: ArtifactStore, version: VersionInfo, out: Path) -> Path:
    """A full fine-tune's stored folder is the merged model: copied as it is (verified against
    the registry's hash on the way out of the store), with the export marker added."""
    folder = store.get_dir(version.sha256)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(
        folder, tmp, ignore=shutil.ignore_patterns(TREE_INDEX), copy_function=shutil.copyfile
    )
    (tmp / EXPORT_MARKER).write_text(
        json.dumps(
            {
                "merged_from": version.id,
                "kind": FULL_KIND,
                "source_sha256": version.sha256,
                "base_model": version.base_model,
                "base_model_sha256": version.base_model_sha256,
                "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
            indent=2,
        )
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    log.info("exported full model %s (a copy of its folder) into %s", version.id, out)
    return out


def base_identity(settings: ServerSettings, registry: Registry) -> BaseIdentity:
    """Resolve (and register) the configured base model; prepares the embedded one if needed.

    Its aliases: where it came from (:func:`shared.basemodel.known_names`) and the server's
    ``base_model_aliases``."""
    with registry.session() as session:
        resolved = resolve_base_model(settings, session=session)
    aliases = tuple(dict.fromkeys([*known_names(resolved), *settings.base_model_aliases]))
    return BaseIdentity(resolved.name, resolved.weights_sha256, resolved.path, aliases)
