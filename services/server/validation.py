"""Checks an adapter version must pass before any engine loads it.

The servability rules shared with the trainer (:mod:`shared.servability`) cover the adapter files
themselves. The server adds what only it knows: the version's registry identity (its files must
hash to the registry's sha256, and it must have been trained on the exact base weights being
served), and where the files are (inside the artifact store, no links out of it). Every reason is
reported at once, so one answer tells the user everything to fix.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from services.server.names import VersionInfo
from shared.artifacts import ArtifactStore
from shared.errors import IntegrityError, LoraplexError, NotFoundError, ValidationError
from shared.registry.versions import FULL_KIND
from shared.servability import (
    LoraLimits,
    adapter_is_noop,
    base_linear_shapes,
    check_adapter_dir,
    read_adapter_config,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BaseIdentity:
    """The base model being served, as the registry knows it."""

    name: str
    weights_sha256: str
    path: Path | None = None
    aliases: tuple[str, ...] = ()
    """Other names it answers to (its hub id, the folder it came from, operator-given names): an
    imported adapter that declares one of them is taken to be trained on it
    (:mod:`services.server.declared_base`)."""

    @cached_property
    def shapes(self) -> dict[str, tuple[int, ...]] | None:
        if self.path is None or not self.path.is_dir():
            return None
        return base_linear_shapes(self.path) or None

    @cached_property
    def vocab_size(self) -> int | None:
        if self.path is None:
            return None
        try:
            value = json.loads((self.path / "config.json").read_text()).get("vocab_size")
        except (OSError, ValueError):
            return None
        return value if isinstance(value, int) else None


class AdapterValidator:
    """Runs every check for one version and returns the verified folder to load."""

    def __init__(self, store: ArtifactStore, base: BaseIdentity, max_lora_rank: int) -> None:
        self.store = store
        self.base = base
        self.limits = LoraLimits(max_rank=max_lora_rank)

    def check_version(self, version: VersionInfo) -> Path:
        """The verified local folder of ``version``; ValidationError listing every reason if not.

        Blocking (it hashes files): call it from a worker thread.
        """
        if version.kind == FULL_KIND:
            raise ValidationError(
                f"{version.id} is a full fine-tune, not a LoRA adapter: an engine of its base "
                "cannot load it as an adapter; it is served by an engine of its own",
                param="model",
                code="adapter_not_servable",
            )
        reasons: list[str] = []
        if version.base_model != self.base.name:
            reasons.append(
                f"trained on base model {version.base_model!r}, but this server serves "
                f"{self.base.name!r}"
            )
        elif version.base_model_sha256 != self.base.weights_sha256:
            reasons.append(
                f"trained on base weights {version.base_model_sha256[:12]}, but the served "
                f"{self.base.name!r} has weights {self.base.weights_sha256[:12]} (same name, "
                "different model)"
            )
        if version.rank > self.limits.max_rank:
            reasons.append(
                f"registered rank {version.rank} is above the server's max LoRA rank "
                f"{self.limits.max_rank}"
            )
        folder: Path | None = None
        try:
            folder = self.store.get_dir(version.sha256)
        except IntegrityError as exc:
            reasons.append(
                f"files differ from the registry's sha256 {version.sha256[:12]}: {exc.message}"
            )
            reasons += exc.details
        except NotFoundError:
            reasons.append(f"files (sha256 {version.sha256[:12]}) are missing from the store")
        except LoraplexError as exc:  # e.g. a symbolic link inside the stored tree
            reasons.append(exc.message)
        if folder is not None:
            reasons += self.check_location(folder)
            reasons += self.check_files(folder, registered_rank=version.rank)
        if reasons:
            raise ValidationError(
                f"adapter version {version.id} cannot be served",
                param="model",
                code="adapter_not_servable",
                details=_unique(reasons),
            )
        assert folder is not None
        return folder

    def check_location(self, folder: Path) -> list[str]:
        reasons = []
        if not self.store.contains(folder):
            reasons.append(f"{folder} is outside the artifact store {self.store.root}")
        for path in folder.rglob("*"):
            if path.is_symlink() or not self.store.contains(path):
                reasons.append(f"{path.relative_to(folder)} points outside the artifact store")
        return reasons

    def check_files(self, folder: Path, *, registered_rank: int | None = None) -> list[str]:
        """Servability of a folder: shared rules, base shapes, and a non-zero delta."""
        reasons = check_adapter_dir(
            folder,
            limits=self.limits,
            base_shapes=self.base.shapes,
            vocab_size=self.base.vocab_size,
        )
        config, _ = read_adapter_config(folder)
        if config is not None and registered_rank is not None:
            r = config.get("r")
            if isinstance(r, int) and r != registered_rank:
                reasons.append(f"adapter_config r={r} differs from the registered rank")
        if not reasons:
            try:
                if adapter_is_noop(folder):
                    reasons.append(
                        "every LoRA B matrix is zero: the adapter answers exactly like the base "
                        "model (untrained or freshly initialised)"
                    )
            except Exception as exc:  # unreadable tensors were reported above; be safe
                reasons.append(f"adapter weights could not be read: {exc}")
        return reasons


def adapter_rank(folder: Path) -> int:
    config, reasons = read_adapter_config(folder)
    if config is None or not isinstance(config.get("r"), int):
        raise ValidationError("adapter_config.json has no integer r", details=reasons)
    return int(config["r"])


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def describe(config: dict[str, Any] | None) -> dict[str, Any]:
    """The adapter_config fields worth showing in listings."""
    if not config:
        return {}
    keys = ("r", "lora_alpha", "target_modules", "base_model_name_or_path", "task_type")
    return {k: config.get(k) for k in keys if k in config}
