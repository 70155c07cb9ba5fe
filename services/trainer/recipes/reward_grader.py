"""A ``score_model`` grader in a reinforcement job: a registered reward model scores each sampled
completion after its prompt, on [0, 1].

The reward model is the version the job was pinned to at submit (``jobs.check_score_model``,
checked again here: the registry may have changed since). Prompt and completion are rendered with
the base model's chat template, as the reward recipe rendered its pairs, and scored by
``shared.reward_models.score_sequences``, the function that measured its held-out pair accuracy;
the scalar goes through a sigmoid. The reward model shares the job's base model but is a second
copy of it in memory (a sequence-classification head on the base weights).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from services.trainer.graders import ScoreModelGrader, sigmoid
from services.trainer.recipes.context import RecipeContext
from services.trainer.recipes.training import ModelSetup
from shared import reward_models
from shared.datasets.records import Message

BatchScore = Callable[[Sequence[Any], Sequence[str]], list[float]]


def load_scorer(
    ctx: RecipeContext, grader: ScoreModelGrader, setup: ModelSetup
) -> tuple[BatchScore, dict[str, Any]]:
    """The batch scorer (prompts, completion texts -> rewards) and what the manifest records."""
    from services.trainer.jobs import check_score_model
    from shared.artifacts import open_store
    from shared.registry.db import open_registry
    from shared.registry.versions import get_version

    registry = open_registry(ctx.settings)
    try:
        with registry.read_session() as session:
            check_score_model(session, ctx.spec)
            version = get_version(session, grader.model)
            sha, manifest = version.sha256, dict(version.manifest or {})
    finally:
        registry.dispose()
    reward = manifest["reward"]
    pad = int(reward["pad_token_id"])
    dtype = "bfloat16" if setup.precision == "bf16" else "float32"
    model = reward_models.load(setup.base.path, open_store(ctx.settings).get_dir(sha), pad, dtype)
    record = {
        "id": grader.model,
        "sha256": sha,
        "heldout_pair_accuracy": reward.get("heldout_pair_accuracy"),
        "mapping": "sigmoid",
    }
    ctx.reporter.event(
        f"grader: reward model {grader.model} (held-out pair accuracy "
        f"{reward.get('heldout_pair_accuracy')}), scores through a sigmoid",
        data={"reward_model": record},
    )

    def score(prompts: Sequence[Any], texts: Sequence[str]) -> list[float]:
        sequences = [
            reward_models.answer_ids(setup.renderer, _messages(p), t)
            for p, t in zip(prompts, texts, strict=True)
        ]
        return [sigmoid(s) for s in reward_models.score_sequences(model, sequences, pad)]

    return score, record


def _messages(prompt: Any) -> list[Message]:
    """A TRL prompt (a list of chat messages, or plain text) as messages."""
    if isinstance(prompt, str):
        return [Message("user", prompt)]
    return [Message(str(m["role"]), str(m["content"])) for m in prompt]
