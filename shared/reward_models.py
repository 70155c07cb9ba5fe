"""Reward models: registered versions trained with ``method: reward`` (a LoRA plus a one-output
score head on the base model, ``services/trainer/recipes/reward.py``).

The trainer scores its held-out pairs with :func:`score_sequences`; the evaluator loads a
registered one with :func:`load` and scores each subject's answers with it (``reward.score``).
One scoring function for both, so the evaluator reads a reward model exactly as it was measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shared.datasets.records import Message

SCORE_BATCH = 8  # sequences per forward pass


def problems(manifest: dict[str, Any]) -> list[str]:
    """Why a registered version's manifest is not a usable reward model (empty: it is)."""
    if manifest.get("method") != "reward":
        return [f"it was trained with method {manifest.get('method') or 'unknown'!r}, not 'reward'"]
    reward = manifest.get("reward")
    if not isinstance(reward, dict) or not isinstance(reward.get("pad_token_id"), int):
        return ["its manifest has no reward section with the pad token id it was trained with"]
    return []


def answer_ids(renderer: Any, messages: Sequence[Message], answer: str) -> list[int]:
    """How a reward model reads an answer: the prompt's turns and the answer as the assistant's
    turn, rendered with the base's chat template (``ChatRenderer``), as the reward recipe rendered
    each side of its pairs. Every scorer of answers goes through here, so they cannot drift."""
    ids: list[int] = renderer.ids([*messages, Message("assistant", answer)])
    return ids


def score_sequences(
    model: Any, sequences: Sequence[list[int]], pad_id: int, batch: int = SCORE_BATCH
) -> list[float]:
    """The model's scalar score of each token sequence (right-padded batches, eval mode)."""
    import torch

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    scores: list[float] = []
    try:
        with torch.no_grad():
            for start in range(0, len(sequences), batch):
                chunk = sequences[start : start + batch]
                width = max(len(s) for s in chunk)
                ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for i, s in enumerate(chunk):
                    ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
                    mask[i, : len(s)] = 1
                out = model(input_ids=ids.to(device), attention_mask=mask.to(device))
                scores += [float(x) for x in out.logits.float().view(-1).cpu()]
    finally:
        model.train(was_training)
    return scores


def load(base_dir: Path, adapter_dir: Path, pad_token_id: int, dtype: str = "float32") -> Any:
    """The base model with the reward version's LoRA and score head, in eval mode."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    base: Any = AutoModelForSequenceClassification.from_pretrained(
        base_dir, num_labels=1, dtype=getattr(torch, dtype)
    )
    # The score is read at the last token that is not padding, as in training.
    base.config.pad_token_id = pad_token_id
    model = PeftModel.from_pretrained(base, adapter_dir)
    model.eval()
    return model
