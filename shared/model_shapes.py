"""Well-known decoder shapes (their published ``config.json`` values), smallest first.

``loraplex doctor`` runs the one memory model (:func:`shared.memory.estimate`) over these to name
the largest model each method fits on this machine, without downloading any of them.
"""

from __future__ import annotations

from typing import Any


def _config(
    hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int, vocab: int, tied: bool
) -> dict[str, Any]:
    return {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "intermediate_size": intermediate,
        "vocab_size": vocab,
        "tie_word_embeddings": tied,
    }


# name -> config.json as the estimate reads it, in increasing parameter count.
KNOWN_MODELS: dict[str, dict[str, Any]] = {
    "SmolLM2-135M": _config(576, 30, 9, 3, 1536, 49152, True),
    "SmolLM2-360M": _config(960, 32, 15, 5, 2560, 49152, True),
    "Qwen2.5-0.5B": _config(896, 24, 14, 2, 4864, 151936, True),
    "Qwen2.5-1.5B": _config(1536, 28, 12, 2, 8960, 151936, True),
    "SmolLM2-1.7B": _config(2048, 24, 32, 32, 8192, 49152, True),
    "Qwen2.5-7B": _config(3584, 28, 28, 4, 18944, 152064, False),
    "Llama-3.1-8B": _config(4096, 32, 32, 8, 14336, 128256, False),
    "Llama-3.1-70B": _config(8192, 80, 64, 8, 28672, 128256, False),
}
