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


# -- full models (a full fine-tune: a complete model folder, served by an engine of its own) ---
# config.json fields that fix a decoder's architecture and its tensors' shapes.
_ARCHITECTURE_KEYS = (
    "architectures",
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "tie_word_embeddings",
)
_SHOWN = 5  # names listed per kind of mismatch; the count says how many more


def _read_config(folder: Path) -> tuple[dict[str, Any] | None, str | None]:
    try:
        config = json.loads((folder / "config.json").read_text())
    except FileNotFoundError:
        return None, f"config.json is missing from {folder}"
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return None, f"config.json in {folder} is unreadable: {exc}"
    if not isinstance(config, dict):
        return None, f"config.json in {folder} must hold a JSON object"
    text = config.get("text_config")
    return {**config, **text} if isinstance(text, dict) else config, None


def _tensor_headers(folder: Path) -> tuple[dict[str, tuple[tuple[int, ...], str]], list[str]]:
    """Tensor name -> (shape, dtype) over every safetensors file of ``folder``."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return {}, [f"no *.safetensors weights in {folder}"]
    out: dict[str, tuple[tuple[int, ...], str]] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as fh:
                for key in fh.keys():  # noqa: SIM118 - safe_open is not a dict
                    part = fh.get_slice(key)
                    out[key] = (tuple(part.get_shape()), str(part.get_dtype()))
        except Exception as exc:  # safetensors raises several types for truncated files
            return out, [f"{file.name} is unreadable or truncated: {exc}"]
    return out, []


def _listed(names: list[str]) -> str:
    more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return ", ".join(sorted(names)[:_SHOWN]) + more


def _non_finite(folder: Path) -> list[str]:
    import torch
    from safetensors import safe_open

    bad: list[str] = []
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as fh:
            for key in fh.keys():  # noqa: SIM118 - safe_open is not a dict
                tensor = fh.get_tensor(key)
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    bad.append(key)
    return bad


def _has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and bool(config.get("chat_template"))


def check_full_model_dir(folder: Path, base_folder: Path) -> list[str]:
    """Every reason the full model in ``folder`` cannot stand in for ``base_folder``'s model
    (empty list: servable): the same architecture (``config.json``), the same tensor names with
    the same shapes and dtypes, only finite weights, and the files a server needs to load and
    prompt it (tokenizer, chat template and generation config where the base has them)."""
    reasons: list[str] = []
    config, problem = _read_config(folder)
    base_config, base_problem = _read_config(base_folder)
    reasons += [p for p in (problem, base_problem) if p]
    if config is not None and base_config is not None:
        for key in _ARCHITECTURE_KEYS:
            if config.get(key) != base_config.get(key):
                reasons.append(
                    f"config.json {key} is {config.get(key)!r}, the base model's is "
                    f"{base_config.get(key)!r}"
                )
    tensors, problems = _tensor_headers(folder)
    base_tensors, base_problems = _tensor_headers(base_folder)
    reasons += problems + [f"base model: {p}" for p in base_problems]
    if problems or base_problems:
        return reasons
    missing = [k for k in base_tensors if k not in tensors]
    extra = [k for k in tensors if k not in base_tensors]
    if missing:
        reasons.append(f"{len(missing)} tensors of the base model are missing: {_listed(missing)}")
    if extra:
        reasons.append(f"{len(extra)} tensors the base model lacks: {_listed(extra)}")
    shapes = [k for k in tensors if k in base_tensors and tensors[k][0] != base_tensors[k][0]]
    for key in sorted(shapes)[:_SHOWN]:
        reasons.append(
            f"tensor {key} has shape {tensors[key][0]}, the base model's {base_tensors[key][0]}"
        )
    if len(shapes) > _SHOWN:
        reasons.append(f"{len(shapes) - _SHOWN} more tensors differ in shape from the base's")
    dtypes = [k for k in tensors if k in base_tensors and tensors[k][1] != base_tensors[k][1]]
    if dtypes:
        key = sorted(dtypes)[0]
        reasons.append(
            f"{len(dtypes)} tensors are stored in another dtype than the base model's (e.g. "
            f"{key}: {tensors[key][1]}, the base's {base_tensors[key][1]})"
        )
    if not reasons and (bad := _non_finite(folder)):
        reasons.append(f"{len(bad)} tensors hold NaN or infinite values: {_listed(bad)}")
    if not ((folder / "tokenizer.json").is_file() or (folder / "tokenizer.model").is_file()):
        reasons.append(
            f"the tokenizer (tokenizer.json or tokenizer.model) is missing from {folder}"
        )
    if _has_chat_template(base_folder) and not _has_chat_template(folder):
        reasons.append(f"the chat template (chat_template.jinja) is missing from {folder}")
    if (base_folder / "generation_config.json").is_file() and not (
        folder / "generation_config.json"
    ).is_file():
        reasons.append(f"generation_config.json is missing from {folder}")
    return reasons
