"""Memory planning before training: estimate, compare with what the machine has, refuse early.

The estimate follows the curriculum's rule of thumb, made concrete from the model's own tensor
shapes: frozen weights (bf16/fp32, or NF4 for QLoRA) + trainable LoRA parameters with their
gradients and Adam states + activations (per token per layer; much less with gradient
checkpointing) + the logits, which for a 49k vocabulary are the largest single item on small
models. It is deliberately a little pessimistic: refusing a job that would have fitted costs a
retry with a suggested setting; a job that dies out of memory costs the whole run.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from shared.errors import ValidationError
from shared.servability import base_linear_shapes

GIB = 1024**3
FRAMEWORK_OVERHEAD = int(1.0 * GIB)  # torch + transformers + tokenizer, measured ~0.9 GiB RSS
ADAM_BYTES_PER_TRAINABLE = 16  # fp32 weight + grad + two Adam moments


@dataclass(frozen=True)
class ModelShape:
    params: int
    linear_params: int  # quantisable 2-D weights (not embeddings / lm_head)
    lora_dims: tuple[tuple[int, int], ...]  # (in, out) of every linear LoRA can target
    leaf_names: tuple[str, ...]
    hidden: int
    layers: int
    heads: int
    vocab: int

    @classmethod
    def from_folder(cls, folder: Path) -> ModelShape:
        shapes = base_linear_shapes(folder)
        cfg = json.loads((folder / "config.json").read_text())
        cfg = cfg.get("text_config", cfg)
        params = sum(math.prod(s) for s in shapes.values())
        linear = {
            k: s
            for k, s in shapes.items()
            if len(s) == 2 and "embed" not in k and "lm_head" not in k
        }
        return cls(
            params=params,
            linear_params=sum(math.prod(s) for s in linear.values()),
            lora_dims=tuple((s[1], s[0]) for s in linear.values()),
            leaf_names=tuple(k.rsplit(".", 1)[-1] for k in linear),
            hidden=int(cfg["hidden_size"]),
            layers=int(cfg["num_hidden_layers"]),
            heads=int(cfg["num_attention_heads"]),
            vocab=int(cfg["vocab_size"]),
        )


@dataclass(frozen=True)
class PlanInput:
    sequences_per_example: int  # 1, or 2 for DPO's chosen and rejected (methods.py)
    quantization: str  # none | nf4
    r: int
    target_modules: str | list[str]
    batch_size: int
    seq_len: int
    gradient_checkpointing: bool
    weight_bytes: int  # 2 for bf16 weights, 4 for fp32


@dataclass(frozen=True)
class MemoryPlan:
    weights: int
    trainable_params: int
    optimizer: int
    activations: int
    logits: int
    overhead: int
    total: int
    available: int | None

    @property
    def fits(self) -> bool:
        return self.available is None or self.total <= self.available

    def summary(self) -> dict[str, float | int | None]:
        out: dict[str, float | int | None] = {
            k: round(v / GIB, 3) if isinstance(v, int) and k != "trainable_params" else v
            for k, v in asdict(self).items()
        }
        out["fits"] = self.fits
        return out


def estimate(shape: ModelShape, p: PlanInput, available: int | None = None) -> MemoryPlan:
    if p.quantization == "nf4":
        # 4 bits + ~0.127 bits of double-quantised scales per quantised weight; the rest in bf16.
        weights = int(shape.linear_params * 4.127 / 8 + (shape.params - shape.linear_params) * 2)
    else:
        weights = shape.params * p.weight_bytes
    targets = p.target_modules
    dims = [
        d
        for d, leaf in zip(shape.lora_dims, shape.leaf_names, strict=True)
        if targets == "all-linear" or (isinstance(targets, list) and leaf in targets)
    ]
    trainable = sum(p.r * (i + o) for i, o in dims)
    optimizer = trainable * ADAM_BYTES_PER_TRAINABLE
    sequences = p.batch_size * p.sequences_per_example
    tokens = sequences * p.seq_len
    act_bytes = 2  # activations live in bf16 under autocast, in fp32 otherwise: take the mean-ish
    per_layer_token = 34 * shape.hidden * act_bytes // 2 + 5 * shape.heads * p.seq_len
    if p.gradient_checkpointing:
        activations = tokens * (shape.layers * shape.hidden * act_bytes + per_layer_token)
    else:
        activations = tokens * shape.layers * per_layer_token
    # fp32 logits, their gradient and the softmax workspace.
    logits = tokens * shape.vocab * 12
    total = weights + optimizer + activations + logits + FRAMEWORK_OVERHEAD
    return MemoryPlan(
        weights, trainable, optimizer, activations, logits, FRAMEWORK_OVERHEAD, total, available
    )


def available_memory(limit: int | None = None) -> int | None:
    """Bytes this process may still use: the configured limit, else free RAM (cgroup-aware)."""
    if limit is not None:
        return limit
    try:
        import torch

        if torch.cuda.is_available():
            free, _total = torch.cuda.mem_get_info()
            return int(free)
    except Exception:  # no torch or no driver: fall back to host memory
        pass
    candidates = []
    try:
        import psutil

        candidates.append(int(psutil.virtual_memory().available))
    except ImportError:
        pass
    cgroup = Path("/sys/fs/cgroup/memory.max")
    try:
        raw = cgroup.read_text().strip()
        if raw != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            candidates.append(int(raw) - used)
    except (OSError, ValueError):
        pass
    return min(candidates) if candidates else None


def plan_or_refuse(
    shape: ModelShape, p: PlanInput, available: int | None
) -> tuple[MemoryPlan, PlanInput]:
    """The plan for ``p`` (gradient checkpointing switched on if that makes it fit), or a refusal
    that lists settings which would fit."""
    plan = estimate(shape, p, available)
    if plan.fits:
        return plan, p
    if not p.gradient_checkpointing:
        with_gc = replace(p, gradient_checkpointing=True)
        plan_gc = estimate(shape, with_gc, available)
        if plan_gc.fits:
            return plan_gc, with_gc
    suggestions = []
    options: list[tuple[str, PlanInput]] = []
    if p.quantization != "nf4":
        options.append(("use QLoRA: lora.quantization = 'nf4'", replace(p, quantization="nf4")))
    bs = p.batch_size
    while bs > 1:
        bs //= 2
        factor = p.batch_size // bs
        options.append(
            (
                f"micro_batch_size {bs} (batch_size unchanged: {factor} accumulated passes per "
                "step) with gradient checkpointing",
                replace(p, batch_size=bs, gradient_checkpointing=True),
            )
        )
    length = p.seq_len
    while length > 128:
        length //= 2
        options.append((f"max_length {length}", replace(p, seq_len=length)))
    for text, option in options:
        if estimate(shape, option, available).fits:
            suggestions.append(text)
    need, have = plan.total / GIB, (available or 0) / GIB
    raise ValidationError(
        f"this job needs about {need:.1f} GiB but only {have:.1f} GiB is available; "
        + (f"try: {suggestions[0]}" if suggestions else "no smaller setting fits this machine"),
        param="hyperparameters",
        code="insufficient_memory",
        details=[
            f"estimate (GiB): {plan.summary()}",
            *(f"would fit: {s}" for s in suggestions),
        ],
    )


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
