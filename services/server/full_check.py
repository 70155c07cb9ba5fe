"""Checks a full fine-tuned model folder must pass before an engine is started on it.

A full fine-tune is served by an engine of its own, started from its stored folder. Starting a
CPU engine takes about a minute and holds gigabytes, and vLLM's refusal of a broken folder is a
crash at start-up, so what can be read from the files is checked first: a config of the served
base's architecture, every weight tensor of the base with the base's shape, finite weights, and a
tokenizer with a chat template (the OpenAI chat route needs one).

``shared.servability.check_full_model_dir`` (being added with full fine-tuning in the trainer) is
the one definition to use once it lands; this module then reduces to calling it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shared.servability import base_linear_shapes

# Tied input and output embeddings: a folder may or may not store the output matrix.
_OPTIONAL = ("lm_head",)
_CONFIG_KEYS = ("architectures", "model_type", "hidden_size", "num_hidden_layers", "vocab_size")


def _config(folder: Path) -> tuple[dict[str, Any] | None, str]:
    try:
        data = json.loads((folder / "config.json").read_text())
    except FileNotFoundError:
        return None, "config.json is missing"
    except (OSError, ValueError) as exc:
        return None, f"config.json is not readable JSON: {exc}"
    if not isinstance(data, dict):
        return None, "config.json is not a JSON object"
    return data, ""


def _has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file():
        return True
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and bool(config.get("chat_template"))


def _non_finite(folder: Path) -> list[str]:
    """Weight tensors holding NaN or infinity (one tensor in memory at a time)."""
    import torch
    from safetensors import safe_open

    bad = []
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as fh:
            for key in fh.keys():  # noqa: SIM118 - safe_open is not a dict
                if not bool(torch.isfinite(fh.get_tensor(key)).all()):
                    bad.append(key)
    return bad


def check_full_model_dir(folder: Path, base_folder: Path) -> list[str]:
    """Every reason ``folder`` cannot be served as a full fine-tune of ``base_folder``."""
    reasons: list[str] = []
    config, why = _config(folder)
    base_config, base_why = _config(base_folder)
    if config is None:
        return [why]
    if base_config is None:
        return [f"the base model folder {base_folder}: {base_why}"]
    for key in _CONFIG_KEYS:
        if config.get(key) != base_config.get(key):
            reasons.append(
                f"config.json {key} is {config.get(key)!r}, the base's is {base_config.get(key)!r}"
            )
    if not _has_chat_template(folder):
        reasons.append("no chat template (chat_template.jinja or tokenizer_config.json)")
    if not (folder / "tokenizer.json").is_file():
        reasons.append("tokenizer.json is missing")
    if not list(folder.glob("*.safetensors")):
        return [*reasons, "no *.safetensors weights"]
    try:
        shapes = base_linear_shapes(folder)
    except Exception as exc:  # a truncated or foreign file: safetensors' own message says why
        return [*reasons, f"weights are not readable safetensors: {exc}"]
    base_shapes = base_linear_shapes(base_folder)
    for name, shape in sorted(base_shapes.items()):
        if name not in shapes:
            if not name.startswith(_OPTIONAL):
                reasons.append(f"weight {name} of the base is missing")
        elif shapes[name] != shape:
            reasons.append(
                f"weight {name} has shape {list(shapes[name])}, the base's {list(shape)}"
            )
    for name in sorted(set(shapes) - set(base_shapes)):
        if not name.startswith(_OPTIONAL):
            reasons.append(f"weight {name} is not in the base model")
    if not reasons:
        reasons += [f"weight {key} holds NaN or infinity" for key in _non_finite(folder)]
    return reasons
