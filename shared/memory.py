"""Training-memory estimates by the curriculum's rule of thumb.

memory = weights (params x bytes per param at the method's precision)
       + gradients of the trainable parameters
       + optimizer states (AdamW: 2 fp32 values per trainable parameter)
       + activations (batch x sequence x hidden x layers x a per-layer factor)
       + a fixed overhead

The numbers are estimates for planning, not promises: the trainer refuses a plan that does not fit
with a suggestion instead of crashing half-way, and ``loraplex doctor`` shows which methods fit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Method = Literal["full", "lora", "qlora"]
GiB = 1024**3

# Bytes per base-model parameter by method: full fine-tuning trains in fp32 master weights on CPU
# and bf16 on GPU; LoRA keeps the frozen base in the compute dtype; QLoRA stores it in 4-bit NF4
# (0.5 byte) plus quantisation constants (double-quantised: about 0.127 bit per parameter).
_WEIGHT_BYTES = {"full": None, "lora": None, "qlora": 0.5 + 0.127 / 8}
# Activation bytes per (token x hidden x layer) with gradient checkpointing off, by rough fit of
# transformer blocks (attention + MLP intermediates kept for backward).
_ACT_FACTOR = 34


@dataclass(frozen=True)
class ModelShape:
    params: int
    hidden_size: int
    num_layers: int
    intermediate_size: int
    num_linear_params: int  # parameters in the linear layers LoRA attaches to
    q_dim: int = 0  # heads x head_dim (0: hidden size)
    kv_dim: int = 0  # key/value heads x head_dim (0: hidden size)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelShape:
        h = int(config["hidden_size"])
        layers = int(config["num_hidden_layers"])
        inter = int(config.get("intermediate_size", 4 * h))
        heads = int(config.get("num_attention_heads", 1))
        kv = int(config.get("num_key_value_heads", heads))
        head_dim = int(config.get("head_dim", h // heads))
        vocab = int(config.get("vocab_size", 32000))
        attn = h * heads * head_dim * 2 + h * kv * head_dim * 2
        mlp = 3 * h * inter
        linear = layers * (attn + mlp)
        embed = vocab * h * (1 if config.get("tie_word_embeddings") else 2)
        return cls(
            linear + embed + layers * 2 * h,
            h,
            layers,
            inter,
            linear,
            heads * head_dim,
            kv * head_dim,
        )

    def lora_params(self, rank: int) -> int:
        # A (r x in) + B (out x r) for each of q, k, v, o, gate, up, down ("all-linear").
        h, q, kv = self.hidden_size, self.q_dim or self.hidden_size, self.kv_dim or self.hidden_size
        attn = (h + q) + 2 * (h + kv) + (q + h)
        mlp = 3 * (h + self.intermediate_size)
        return self.num_layers * rank * (attn + mlp)


@dataclass(frozen=True)
class MemoryEstimate:
    method: Method
    weights_gib: float
    gradients_gib: float
    optimizer_gib: float
    activations_gib: float
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
    """Estimate peak training memory in GiB. ``compute_bytes``: 4 for fp32 (CPU), 2 for bf16."""
    per_param = _WEIGHT_BYTES[method] or compute_bytes
    trainable = shape.params if method == "full" else shape.lora_params(rank)
    act_factor = _ACT_FACTOR / (4 if gradient_checkpointing else 1)
    activations = batch_size * seq_len * shape.hidden_size * shape.num_layers * act_factor
    activations *= compute_bytes / 2
    return MemoryEstimate(
        method=method,
        weights_gib=shape.params * per_param / GiB,
        gradients_gib=trainable * 4 / GiB,
        optimizer_gib=trainable * 8 / GiB,
        activations_gib=activations / GiB,
        overhead_gib=0.5,
        trainable_params=trainable,
    )
