"""``reward.score``: each subject's answers scored by a registered reward model.

A suite names the reward model (``reward: {enabled: true, model: rm@v1}``), a version trained with
``method: reward``. Every item's prompt plus the subject's answer is rendered with the chat
template of the reward model's base, as the trainer rendered its pairs, and scored with the same
function that measured its held-out pair accuracy (``shared.reward_models``). The metric is
continuous, higher is better and pairs item by item, so the gate compares candidate and baseline
with the paired bootstrap. An item whose prompt and answer exceed ``max_length`` tokens is left
out of n (and counted), not cut: the score is read at the last token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.evaluator.data import EvalItem
from services.evaluator.metrics import catalogue
from services.evaluator.results import SubjectResult
from services.evaluator.subjects import resolve_subject
from services.evaluator.suite import RewardPart
from shared import reward_models
from shared.basemodel import ResolvedBaseModel
from shared.errors import ValidationError
from shared.settings import SharedSettings

METRIC = "reward.score"
PARAM = "suite.reward.model"


@dataclass(frozen=True)
class RewardModel:
    """A registered reward model, resolved and checked before the run starts."""

    version_id: str
    adapter_path: Path
    adapter_sha256: str
    base: ResolvedBaseModel
    pad_token_id: int
    heldout_pair_accuracy: float | None

    def describe(self) -> dict[str, Any]:
        return {
            "reward_model": self.version_id,
            "reward_model_sha256": self.adapter_sha256,
            "reward_base_model": self.base.name,
            "heldout_pair_accuracy": self.heldout_pair_accuracy,
        }


def resolve(settings: SharedSettings, session: Any, name: str | None) -> RewardModel:
    """The suite's reward model, or a 4xx naming ``suite.reward.model`` and what is wrong."""
    if not name:
        raise ValidationError(
            "the reward component needs a reward model: set reward.model in the suite to a "
            "version trained with method 'reward' (name@vN or name:alias)",
            param=PARAM,
        )
    subject = resolve_subject(settings, session, name, param=PARAM)
    if subject.version_id is None or subject.adapter_path is None:
        raise ValidationError(
            f"reward model {name!r} is a base model; name a version trained with method 'reward'",
            param=PARAM,
        )
    if subject.is_full:
        raise ValidationError(
            f"{subject.version_id} is a full fine-tune; a reward model is a version trained with "
            "method 'reward' (a LoRA adapter with a score head). The answers it scores may come "
            "from a full model",
            param=PARAM,
        )
    reasons = reward_models.problems(subject.manifest)
    if reasons:
        raise ValidationError(
            f"{subject.version_id} cannot score answers: {reasons[0]}",
            param=PARAM,
            details=reasons,
        )
    reward = subject.manifest["reward"]
    return RewardModel(
        version_id=subject.version_id,
        adapter_path=subject.adapter_path,
        adapter_sha256=subject.adapter_sha256 or "",
        base=subject.base,
        pad_token_id=int(reward["pad_token_id"]),
        heldout_pair_accuracy=reward.get("heldout_pair_accuracy"),
    )


class Scorer:
    """Loads the reward model once per run, on first use."""

    def __init__(self, model: RewardModel, part: RewardPart, dtype: str) -> None:
        self.model, self.part, self.dtype = model, part, dtype
        self._loaded: tuple[Any, Any] | None = None

    def _load(self) -> tuple[Any, Any]:
        if self._loaded is None:
            from transformers import AutoTokenizer

            from shared.datasets import ChatRenderer

            m = self.model
            tokenizer = AutoTokenizer.from_pretrained(m.base.path)
            net = reward_models.load(m.base.path, m.adapter_path, m.pad_token_id, self.dtype)
            self._loaded = (ChatRenderer(tokenizer), net)
        return self._loaded

    def score(self, items: Sequence[EvalItem], answers: Sequence[str]) -> list[float | None]:
        """One score per item; None where prompt + answer exceed ``max_length`` tokens."""
        renderer, net = self._load()
        sequences = [
            reward_models.answer_ids(renderer, item.messages, answer)
            for item, answer in zip(items, answers, strict=True)
        ]
        kept = [i for i, s in enumerate(sequences) if len(s) <= self.part.max_length]
        scores = reward_models.score_sequences(
            net, [sequences[i] for i in kept], self.model.pad_token_id, self.part.batch_size
        )
        out: list[float | None] = [None] * len(sequences)
        for i, value in zip(kept, scores, strict=True):
            out[i] = value
        return out


def score(
    res: SubjectResult,
    items: Sequence[EvalItem],
    answers: Sequence[str],
    scorer: Scorer,
    confidence: float,
) -> None:
    values = scorer.score(items, answers)
    settings = {
        **scorer.model.describe(),
        "max_length": scorer.part.max_length,
        "too_long": sum(v is None for v in values),
        "dtype": scorer.dtype,
    }
    res.add_metric(
        catalogue.spec(METRIC),
        {i.item_id: v for i, v in zip(items, values, strict=True)},
        settings,
        confidence=confidence,
    )
