"""Full fine-tuning (a job's ``adapter: none``): every weight of the base model trains, and the
result is a complete Hugging Face model folder instead of a LoRA adapter.

Only what differs from LoRA lives here: how the model is loaded (fp32 master weights) and how the
result is saved (the base's dtype, its tokenizer, chat template and generation config, checked
against the base with the server's own rules). The SFT recipe is otherwise the same: data, memory
plan (``shared.memory`` counts gradients and AdamW states for every weight), trainer, checkpoints
and the lineage manifest, which says ``kind: full``.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from services.trainer.recipes.context import RecipeContext
from services.trainer.schemas import JobSpec
from shared.basemodel import ResolvedBaseModel
from shared.errors import SystemFailure
from shared.servability import check_full_model_dir

# What a full model carries besides its weights and config.json, copied from the base as they are:
# the fine-tune answers to the base's tokenizer and prompt format, which it was trained with.
BASE_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)


def trains_full_model(spec: JobSpec) -> bool:
    return spec.adapter == "none"


def load_full_model(base: ResolvedBaseModel, attention: str) -> Any:
    """The base model with every weight trainable, in fp32 whatever the step computes in: AdamW's
    updates at full fine-tuning rates (~1e-5 of a weight) are below bf16's resolution (~4e-3 of
    it) and would round away, so a bf16 job runs its steps under autocast on fp32 weights."""
    import torch
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(
        base.path, dtype=torch.float32, attn_implementation=attention
    )
    model.requires_grad_(True)
    return model


def trainable_parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def stored_dtype(folder: Path) -> Any:
    """The floating dtype most of ``folder``'s weights are stored in (what the fine-tune is saved
    in, so it loads and serves like its base)."""
    import torch
    from safetensors import safe_open

    counts: Counter[str] = Counter()
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as fh:
            for key in fh.keys():  # noqa: SIM118 - safe_open is not a dict
                counts[str(fh.get_slice(key).get_dtype())] += 1
    names = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}
    floating = [(n, c) for n, c in counts.most_common() if n in names]
    return names[floating[0][0]] if floating else torch.float32


def save_full_model(trainer: Any, ctx: RecipeContext, base: ResolvedBaseModel) -> Path:
    """Write the complete model folder (weights in the base's dtype, config, the base's tokenizer,
    chat template and generation config) and check it against the base before it is kept."""
    final = ctx.output_dir / "final"
    tmp = ctx.output_dir / "final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(final, ignore_errors=True)
    model = trainer.accelerator.unwrap_model(trainer.model)
    # In place: training is over, and a second copy of the weights would double the peak.
    model.to(stored_dtype(base.path))
    # Gradient checkpointing turns the KV cache off for training; a served model wants it.
    model.config.use_cache = True
    model.save_pretrained(str(tmp), safe_serialization=True)
    for name in BASE_FILES:
        if (base.path / name).is_file():
            shutil.copy2(base.path / name, tmp / name)
    reasons = check_full_model_dir(tmp, base.path)
    if reasons:
        raise SystemFailure(
            f"the trained model is not servable: {reasons[0]}",
            code="unservable_model",
            details=reasons,
        )
    tmp.rename(final)
    return final
