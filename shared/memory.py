"""Training-memory estimates: one model for the trainer's planner and ``loraplex doctor``.

The estimate follows the curriculum's rule of thumb, made concrete from the model's own shapes
(its tensors when the weights are at hand, else its ``config.json``): frozen weights (bf16/fp32,
or NF4 for QLoRA) + trainable parameters with their gradients and Adam states + activations (per
token per layer; much less with gradient checkpointing) + the logits, which for a 49k vocabulary
are the largest single item on small models + what the allocator keeps between steps + a measured
framework overhead. It is deliberately a little pessimistic: refusing a job that would have fitted
costs a retry with a suggested setting; a job that dies out of memory costs the whole run. A test
checks it against the peak RSS of a real CPU run (tests/trainer/test_memory.py).

Full fine-tuning (``PlanInput.full``) trains every weight: fp32 master weights (plus the bf16
copies autocast makes of them for a bf16 step), an fp32 gradient and two AdamW moments for each.

- The trainer plans a job with :func:`estimate_plan` and ``shared.memory_fit.plan_or_refuse``,
  which refuses with the settings that would fit (for full fine-tuning: the LoRA and QLoRA jobs
  that would).
- ``loraplex doctor`` shows which methods fit with :func:`estimate` (full, LoRA, QLoRA).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

GIB = 1024**3
GiB = GIB  # the doctor's spelling
# torch, transformers, TRL, PEFT and the tokenizer: 0.76 GiB RSS measured before the weights load.
FRAMEWORK_OVERHEAD = int(1.0 * GIB)
ADAM_BYTES_PER_TRAINABLE = 16  # fp32 weight + grad + two Adam moments
GRAD_BYTES = 4  # of those 16, the fp32 gradient
FULL_MASTER_BYTES = 4  # of those 16, the fp32 weight: a full fine-tune's model itself
NF4_BITS = 4.127  # 4 bits + ~0.127 bits of double-quantised scales per quantised weight

Method = Literal["full", "lora", "qlora"]


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
    intermediate: int  # the MLP's width

    @classmethod
    def from_folder(cls, folder: Path) -> ModelShape:
        """From the weights' own tensor shapes (safetensors headers) and ``config.json``."""
        from shared.servability import base_linear_shapes

        shapes = base_linear_shapes(folder)
        cfg = json.loads((folder / "config.json").read_text())
        cfg = cfg.get("text_config", cfg)
        linear = {
            k: s
            for k, s in shapes.items()
            if len(s) == 2 and "embed" not in k and "lm_head" not in k
        }
        return cls(
            params=sum(math.prod(s) for s in shapes.values()),
            linear_params=sum(math.prod(s) for s in linear.values()),
            lora_dims=tuple((s[1], s[0]) for s in linear.values()),
            leaf_names=tuple(k.rsplit(".", 1)[-1] for k in linear),
            hidden=int(cfg["hidden_size"]),
            layers=int(cfg["num_hidden_layers"]),
            heads=int(cfg["num_attention_heads"]),
            vocab=int(cfg["vocab_size"]),
            intermediate=int(cfg.get("intermediate_size", 4 * int(cfg["hidden_size"]))),
        )

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelShape:
        """From ``config.json`` alone (a Llama-style decoder: q/k/v/o and gate/up/down per layer),
        for when the weights are not at hand yet."""
        cfg = config.get("text_config", config)
        h = int(cfg["hidden_size"])
        layers = int(cfg["num_hidden_layers"])
        heads = int(cfg.get("num_attention_heads", 1))
        kv = int(cfg.get("num_key_value_heads", heads))
        head_dim = int(cfg.get("head_dim", h // heads))
        inter = int(cfg.get("intermediate_size", 4 * h))
        vocab = int(cfg.get("vocab_size", 32000))
        q, k = heads * head_dim, kv * head_dim
        block = (
            ("q_proj", (h, q)),
            ("k_proj", (h, k)),
            ("v_proj", (h, k)),
            ("o_proj", (q, h)),
            ("gate_proj", (h, inter)),
            ("up_proj", (h, inter)),
            ("down_proj", (inter, h)),
        )
        linear = layers * sum(i * o for _, (i, o) in block)
        embeddings = vocab * h * (1 if cfg.get("tie_word_embeddings") else 2)
        norms = (2 * layers + 1) * h
        return cls(
            params=linear + embeddings + norms,
            linear_params=linear,
            lora_dims=tuple(dims for _ in range(layers) for _, dims in block),
            leaf_names=tuple(name for _ in range(layers) for name, _ in block),
            hidden=h,
            layers=layers,
            heads=heads,
            vocab=vocab,
            intermediate=inter,
        )


@dataclass(frozen=True)
class PlanInput:
    quantization: str  # none | nf4
    r: int
    target_modules: str | list[str]
    batch_size: int
    seq_len: int
    gradient_checkpointing: bool
    weight_bytes: int  # 2 for bf16 weights, 4 for fp32
    sequences_per_example: int = 1  # 2 for DPO: the chosen and the rejected answer
    full: bool = False  # every weight trains (a job's ``adapter: none``); r and targets unused


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


def estimate_plan(shape: ModelShape, p: PlanInput, available: int | None = None) -> MemoryPlan:
    """Peak training memory of a full, LoRA or QLoRA job, in bytes, by part."""
    activations, logits = _activations(shape, p)
    if p.full:
        # The weights train in fp32 whatever the step computes in (bf16 weights would round
        # away AdamW's small updates); a bf16 step adds autocast's bf16 copy of each weight.
        weights = shape.params * (FULL_MASTER_BYTES + (p.weight_bytes if p.weight_bytes < 4 else 0))
        trainable = shape.params
        # The master weight is counted above: its gradient and two moments remain.
        optimizer = trainable * (ADAM_BYTES_PER_TRAINABLE - FULL_MASTER_BYTES)
        total = weights + optimizer + activations + logits + FRAMEWORK_OVERHEAD
        return MemoryPlan(
            weights, trainable, optimizer, activations, logits, FRAMEWORK_OVERHEAD, total, available
        )
    if p.quantization == "nf4":
        # Quantised linear weights; embeddings, norms and the head stay in bf16.
        weights = int(shape.linear_params * NF4_BITS / 8 + (shape.params - shape.linear_params) * 2)
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
    total = weights + optimizer + activations + logits + FRAMEWORK_OVERHEAD
    return MemoryPlan(
        weights, trainable, optimizer, activations, logits, FRAMEWORK_OVERHEAD, total, available
    )


# Values per token kept for the backward pass by one decoder layer, in units of the hidden size
# and of the MLP width: the norms' inputs and outputs, q/k/v/o and RoPE outputs, the residuals
# and LoRA dropout's copy of every adapted input (~16 h); gate, up, SiLU, their product and its
# dropout copy (5 i). Counted from the Llama block, then checked against the measured peak RSS of
# a short CPU run (tests/trainer/test_memory.py).
HIDDEN_VALUES_PER_LAYER = 16
MLP_VALUES_PER_LAYER = 5
# Eager attention keeps each head's scores and softmax (SDPA keeps less: pessimistic there).
SCORE_VALUES_PER_HEAD = 2
# Seven fp32 copies of the logits: the logits, the loss's log-softmax, TRL's shifted copy for token
# accuracy and its entropy workspace, and in the backward the gradients of log-softmax and logits
# with the softmax between them.
LOGIT_BYTES = 28
# Freed activations stay in the allocator's pools and the next step's peak lands partly beside
# them: on CPU the RSS after step 1 stayed ~70% of the step's growth above the start, and step 2
# peaked 2-19% above step 1 (SmolLM2-135M, 176 and 882 tokens per pass).
ALLOCATOR_SLACK = 1.25


def _activations(shape: ModelShape, p: PlanInput) -> tuple[int, int]:
    """(activations kept for the backward pass, logits with their gradient) in bytes."""
    tokens = p.batch_size * p.sequences_per_example * p.seq_len
    act_bytes = p.weight_bytes  # activations are computed in the weights' precision
    per_layer_token = act_bytes * (
        HIDDEN_VALUES_PER_LAYER * shape.hidden
        + MLP_VALUES_PER_LAYER * shape.intermediate
        + SCORE_VALUES_PER_HEAD * shape.heads * p.seq_len
    )
    if p.gradient_checkpointing:
        # Each layer's input, plus one layer's full activations while it is recomputed.
        activations = tokens * (shape.layers * shape.hidden * act_bytes + per_layer_token)
    else:
        activations = tokens * shape.layers * per_layer_token
    logits = tokens * shape.vocab * LOGIT_BYTES
    return int(activations * ALLOCATOR_SLACK), int(logits * ALLOCATOR_SLACK)


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


def peak_resident_bytes() -> int:
    """This process's peak resident memory (VmHWM), counted from its own ``exec``.

    Not ``getrusage(...).ru_maxrss``: Linux carries the parent's high-water mark across fork and
    exec into it, so a child started by a 4 GiB test process reports at least 4 GiB.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024  # kB
    raise OSError("no VmHWM in /proc/self/status (not Linux?)")


# -- loraplex doctor: which methods fit ------------------------------------------------------
@dataclass(frozen=True)
class MemoryEstimate:
    method: Method
    weights_gib: float
    gradients_gib: float
    optimizer_gib: float
    activations_gib: float  # with the logits
    overhead_gib: float
    trainable_params: int

    @property
    def total_gib(self) -> float:
        return (
            self.weights_gib
            + self.gradients_gib
            + self.optimizer_gib
            + self.activations_gib
            + self.overhead_gib
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_gib": round(self.total_gib, 3)}


def estimate(
    shape: ModelShape,
    method: Method,
    *,
    rank: int = 16,
    batch_size: int = 4,
    seq_len: int = 1024,
    compute_bytes: int = 4,
    gradient_checkpointing: bool = False,
) -> MemoryEstimate:
    """Peak training memory in GiB of full fine-tuning, LoRA or QLoRA on every linear layer, by
    the planner's model. ``compute_bytes``: 4 for fp32 (CPU), 2 for bf16."""
    plan = estimate_plan(
        shape,
        PlanInput(
            quantization="nf4" if method == "qlora" else "none",
            r=rank,
            target_modules="all-linear",
            batch_size=batch_size,
            seq_len=seq_len,
            gradient_checkpointing=gradient_checkpointing,
            weight_bytes=compute_bytes,
            full=method == "full",
        ),
    )
    trainable = plan.trainable_params
    optimizer = plan.optimizer - trainable * GRAD_BYTES  # the gradients are shown on their own
    return MemoryEstimate(
        method=method,
        weights_gib=plan.weights / GIB,
        gradients_gib=trainable * GRAD_BYTES / GIB,
        optimizer_gib=optimizer / GIB,
        activations_gib=(plan.activations + plan.logits) / GIB,
        overhead_gib=plan.overhead / GIB,
        trainable_params=trainable,
    )
