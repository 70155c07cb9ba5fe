"""What the server can load: one set of rules for the trainer (before and after training) and the
server (before loading). Each check returns every reason it finds, not only the first, so a user
fixes all of them in one round.

The rules mirror vLLM's LoRA loader (``vllm/lora/peft_helper.py``, ``lora_model.py``) and go
further where vLLM accepts an adapter it will serve wrongly: a base model with other shapes, target
modules the base lacks, an adapter whose B matrices are all zero (it changes nothing).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_LORA_KEY = re.compile(
    r"^base_model\.model\.(?P<module>.+)\.(?P<part>lora_A|lora_B)(?:\.[^.]+)?\.weight$"
)


@dataclass(frozen=True)
class LoraLimits:
    """What the serving engines accept. ``max_rank`` is vLLM's ``--max-lora-rank``."""

    max_rank: int = 16


def check_lora_settings(
    *,
    r: int,
    lora_alpha: float | None = None,
    use_dora: bool = False,
    bias: str = "none",
    modules_to_save: list[str] | None = None,
    trainable_token_indices: Any = None,
    resize_vocab: bool = False,
    added_tokens: list[str] | None = None,
    limits: LoraLimits | None = None,
    param_prefix: str = "lora",
) -> list[str]:
    """Reasons the LoRA settings would produce an adapter the server cannot load."""
    limits = limits or LoraLimits()
    reasons: list[str] = []
    p = param_prefix
    if r < 1:
        reasons.append(f"{p}.r must be at least 1; got {r}")
    elif r > limits.max_rank:
        reasons.append(
            f"{p}.r = {r} is above the server's max LoRA rank {limits.max_rank} "
            "(vLLM --max-lora-rank); lower the rank or raise LORAPLEX_MAX_LORA_RANK on the server"
        )
    if lora_alpha is not None and lora_alpha <= 0:
        reasons.append(f"{p}.lora_alpha must be positive; got {lora_alpha}")
    if use_dora:
        reasons.append(f"{p}.use_dora: DoRA adapters are not served by vLLM; use plain LoRA")
    if bias != "none":
        reasons.append(f"{p}.bias = {bias!r}: vLLM serves only bias='none' adapters")
    if modules_to_save:
        reasons.append(
            f"{p}.modules_to_save = {modules_to_save}: fully trained modules are not served by "
            "vLLM; train LoRA matrices only"
        )
    if trainable_token_indices:
        reasons.append(f"{p}.trainable_token_indices: trainable tokens are not served by vLLM")
    if resize_vocab or added_tokens:
        reasons.append(
            "adding tokens or resizing the vocabulary changes the embeddings, which a LoRA served "
            "on a shared base model cannot carry; use the base tokenizer as it is"
        )
    return reasons


def check_registered_version(rank: int, manifest: Mapping[str, Any]) -> list[str]:
    """Reasons a registered version cannot be served, from what the registry stores (no files).

    Checks its rank against the largest one vLLM serves at all (a server's own ``--max-lora-rank``
    and the files are checked again before loading) and the LoRA settings its manifest records:
    the trainer's ``config.spec.lora`` or an import's ``adapter_config``.
    """

    def section(value: Any, *path: str) -> dict[str, Any]:
        for key in path:
            value = value.get(key) if isinstance(value, Mapping) else None
        return dict(value) if isinstance(value, Mapping) else {}

    lora = {**section(manifest, "adapter_config"), **section(manifest, "config", "spec", "lora")}
    alpha = lora.get("alpha", lora.get("lora_alpha"))
    return check_lora_settings(
        r=rank,
        lora_alpha=alpha if isinstance(alpha, int | float) else None,
        use_dora=bool(lora.get("use_dora")),
        bias=str(lora.get("bias") or "none"),
        modules_to_save=list(lora.get("modules_to_save") or []),
        trainable_token_indices=lora.get("trainable_token_indices"),
        limits=LoraLimits(max_rank=max(VLLM_RANKS)),
        param_prefix="version",
    )


def read_adapter_config(folder: Path) -> tuple[dict[str, Any] | None, list[str]]:
    path = folder / ADAPTER_CONFIG
    if not path.is_file():
        return None, [f"{ADAPTER_CONFIG} is missing from {folder}"]
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return None, [f"{ADAPTER_CONFIG} is unreadable: {exc}"]
    if not isinstance(config, dict):
        return None, [f"{ADAPTER_CONFIG} must hold a JSON object"]
    return config, []


def check_adapter_config(config: dict[str, Any], limits: LoraLimits | None = None) -> list[str]:
    reasons: list[str] = []
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        reasons.append(f"peft_type is {config.get('peft_type')!r}; only LORA adapters are served")
    r = config.get("r")
    if not isinstance(r, int):
        reasons.append(f"r must be an integer; got {r!r}")
        r = 1
    reasons += check_lora_settings(
        r=r,
        use_dora=bool(config.get("use_dora")),
        bias=str(config.get("bias") or "none"),
        modules_to_save=list(config.get("modules_to_save") or []),
        trainable_token_indices=config.get("trainable_token_indices"),
        limits=limits,
        param_prefix="adapter_config",
    )
    return reasons


def base_linear_shapes(base_folder: Path) -> dict[str, tuple[int, ...]]:
    """Module path (``model.layers.0.self_attn.q_proj``) -> weight shape, from safetensors headers."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for file in sorted(base_folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as fh:
            for key in fh.keys():  # noqa: SIM118 - safe_open is not a dict
                if key.endswith(".weight"):
                    shapes[key.removesuffix(".weight")] = tuple(fh.get_slice(key).get_shape())
    return shapes


def _module_matches(module: str, targets: Any) -> bool:
    if isinstance(targets, str):
        return targets == "all-linear" or re.fullmatch(targets, module) is not None
    return any(module == t or module.endswith(f".{t}") for t in targets or [])


def check_adapter_dir(
    folder: Path,
    *,
    limits: LoraLimits | None = None,
    base_shapes: dict[str, tuple[int, ...]] | None = None,
    vocab_size: int | None = None,
) -> list[str]:
    """Every reason the adapter in ``folder`` cannot be served (empty list: servable).

    With ``base_shapes`` (see :func:`base_linear_shapes`) the tensors are checked against the base
    model: each target module must exist and each A/B matrix must fit it.
    """
    config, reasons = read_adapter_config(folder)
    if config is not None:
        reasons += check_adapter_config(config, limits)
        if vocab_size is not None and config.get("vocab_size") not in (None, vocab_size):
            reasons.append(
                f"vocab_size {config['vocab_size']} differs from the base's {vocab_size}"
            )
    weights = folder / ADAPTER_WEIGHTS
    if not weights.is_file():
        reasons.append(f"{ADAPTER_WEIGHTS} is missing from {folder}")
        return reasons
    try:
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as fh:
            tensors = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises several types for truncated or garbage files
        reasons.append(f"{ADAPTER_WEIGHTS} is unreadable or truncated: {exc}")
        return reasons
    if not tensors:
        reasons.append(f"{ADAPTER_WEIGHTS} holds no tensors")
    r = config.get("r") if config else None
    seen: dict[str, set[str]] = {}
    for key, shape in tensors.items():
        match = _LORA_KEY.match(key)
        if match is None:
            if "embed" in key or "lm_head" in key:
                reasons.append(
                    f"tensor {key}: embedding/lm_head weights (added tokens or modules_to_save) "
                    "are not served"
                )
            else:
                reasons.append(f"tensor {key} is not a LoRA A/B matrix")
            continue
        module, part = match["module"], match["part"]
        seen.setdefault(module, set()).add(part)
        if len(shape) != 2:
            reasons.append(f"tensor {key} has shape {shape}; LoRA matrices are 2-D")
            continue
        rank_dim = shape[0] if part == "lora_A" else shape[1]
        if isinstance(r, int) and rank_dim != r:
            reasons.append(f"tensor {key} has rank {rank_dim}, adapter_config says r={r}")
        if base_shapes is not None:
            base = base_shapes.get(module)
            if base is None:
                reasons.append(f"target module {module} does not exist in the base model")
                continue
            out_f, in_f = base[0], base[-1]
            want = in_f if part == "lora_A" else out_f
            got = shape[1] if part == "lora_A" else shape[0]
            if got != want:
                reasons.append(
                    f"tensor {key} has shape {shape}, which does not fit the base model's "
                    f"{module} ({out_f} x {in_f})"
                )
    for module, parts in seen.items():
        if parts != {"lora_A", "lora_B"}:
            missing = {"lora_A", "lora_B"} - parts
            reasons.append(f"module {module} lacks its {', '.join(sorted(missing))} matrix")
    if config is not None and base_shapes is not None:
        targets = config.get("target_modules")
        if targets and not isinstance(targets, str):
            leaves = {m.rsplit(".", 1)[-1] for m in base_shapes}
            for target in targets:
                if target not in leaves and target not in base_shapes:
                    reasons.append(f"target module {target!r} does not exist in the base model")
    return reasons


def adapter_is_noop(folder: Path) -> bool:
    """True when every LoRA B matrix is zero: the adapter would answer exactly like the base."""
    from safetensors.torch import load_file

    tensors = load_file(str(folder / ADAPTER_WEIGHTS))
    b_mats = [t for k, t in tensors.items() if ".lora_B" in k]
    return bool(b_mats) and all(not bool(t.any()) for t in b_mats)
