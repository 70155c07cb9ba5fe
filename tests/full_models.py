"""A registered full-model version for tests of what consumes one (evaluator, export, serving).

A full fine-tune is a complete Hugging Face model folder registered as a version whose manifest
says ``kind: full`` (``shared.registry.versions``). Training one takes minutes on CPU; the code
that evaluates, exports or serves it only needs a folder that is a real, different model of the
base's architecture, so this one is the base with seeded noise added to every matrix: its greedy
answers differ from the base's, and the noise scale controls by how much.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from services.trainer.adapters import store_and_register
from shared.basemodel import ResolvedBaseModel
from shared.registry.versions import FULL_KIND
from shared.settings import SharedSettings

# Model weights and tokenizer files, as ``save_pretrained`` writes them (a base folder may hold
# other files, such as our own conversion notes, that a fine-tune does not carry).
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
)


def write_full_model(
    base: ResolvedBaseModel, folder: Path, *, seed: int = 0, noise: float = 0.02
) -> Path:
    """``folder`` holds the base's architecture with weights ``w + noise * std(w) * N(0, 1)``."""
    import torch
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(str(base.path))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                step = torch.randn(param.shape, generator=generator, dtype=torch.float32)
                param.add_((step * noise * param.float().std()).to(param.dtype))
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    for name in _TOKENIZER_FILES:
        if (base.path / name).is_file() and not (folder / name).exists():
            shutil.copy2(base.path / name, folder / name)
    return folder


def register_full_version(
    settings: SharedSettings,
    base: ResolvedBaseModel,
    folder: Path,
    *,
    name: str = "full-ft",
    manifest: dict[str, Any] | None = None,
) -> str:
    """Store ``folder`` with a ``kind: full`` manifest and register it; returns the version id."""
    body = {
        "schema": "loraplex.adapter/v1",
        "kind": FULL_KIND,
        "adapter_name": name,
        "method": "supervised",
        "base_model": {"name": base.name, "weights_sha256": base.weights_sha256},
        "base_adapter": None,
        "datasets": {},
        **(manifest or {}),
    }
    (folder / "loraplex_manifest.json").write_text(json.dumps(body, indent=2))
    return store_and_register(settings, folder, body, base, name)
