"""The training methods, one entry each: everything the trainer decides by method.

In the manner of torchtune's ``_recipe_registry.py``: a method is one :class:`TrainingMethod` entry
plus its recipe module. Job validation, the default learning rate and adapter name, the data file
kind, the memory plan and the recipe that runs all read the entry, so adding a method (GRPO, say)
is an entry here, a recipe, and a value in ``schemas.MethodType``; a method without an entry is
refused by :func:`get_method`, never run as another one. ``tests/trainer/test_methods.py`` checks
that every entry is complete and that ``MethodType`` and this registry agree.

The recipe is a lazy ``"module:function"`` path, so importing the registry (the API, the CLI's
``submit``) does not import torch or TRL.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from services.trainer.hyperparameters import Hyperparameters, ReinforcementHyperparameters
from shared.errors import ValidationError

if TYPE_CHECKING:
    from services.trainer.recipes.context import RecipeContext, RecipeResult

Recipe = Callable[["RecipeContext"], "RecipeResult"]
HyperparameterModel = type[Hyperparameters]  # named here: the entry's ``type`` field shadows it


@dataclass(frozen=True)
class TrainingMethod:
    """One training method and every per-method decision the trainer makes."""

    type: str  # ``method.type`` in a job, and the name of its ``method.<type>`` block
    adapter_suffix: str  # default adapter name: ``<base model>-<suffix>``
    data_kind: str  # the data file kind it trains on (``shared.datasets``: "sft", "preference")
    data_label: str  # that kind in words, for errors about a file of another kind
    default_learning_rate: float  # what ``learning_rate_multiplier`` multiplies
    hyperparameters: HyperparameterModel  # its hyperparameter model
    recipe: str  # "module:function" of its recipe, imported when a job runs
    sequences_per_example: int  # sequences in one forward pass per example (memory plan)
    openai_hyperparameters: tuple[str, ...] = ()  # resolved knobs shown beside OpenAI's three
    # The default learning rate when every weight trains (a job's ``adapter: none``); None: the
    # method trains adapters only.
    full_learning_rate: float | None = None

    def load_recipe(self) -> Recipe:
        """The recipe function, imported now (looked up on every call, so tests can patch it)."""
        module, _, name = self.recipe.partition(":")
        fn: Recipe = getattr(importlib.import_module(module), name)
        if not callable(fn):
            raise TypeError(f"recipe {self.recipe} of method {self.type!r} is not callable")
        return fn


# Data kinds in words (``DatasetRow.format``), for errors naming what a file holds.
DATA_KIND_LABELS = {
    "sft": "supervised (chat)",
    "preference": "preference",
    "prompt": "prompt (chat ending in a user turn)",
}

METHODS: dict[str, TrainingMethod] = {
    entry.type: entry
    for entry in (
        TrainingMethod(
            type="supervised",
            adapter_suffix="sft",
            data_kind="sft",
            data_label="chat data",
            default_learning_rate=2e-4,
            hyperparameters=Hyperparameters,
            recipe="services.trainer.recipes.sft:run_sft",
            sequences_per_example=1,
            # TRL's SFT default and the curriculum's full-SFT rate: a tenth of LoRA's, since every
            # weight moves rather than a small update added beside frozen ones.
            full_learning_rate=2e-5,
        ),
        TrainingMethod(
            type="dpo",
            adapter_suffix="dpo",
            data_kind="preference",
            data_label="preference pairs (prompt, chosen, rejected)",
            default_learning_rate=5e-5,
            hyperparameters=Hyperparameters,
            recipe="services.trainer.recipes.dpo:run_dpo",
            # The chosen and the rejected answer both go through the model.
            sequences_per_example=2,
            openai_hyperparameters=("beta",),
        ),
        TrainingMethod(
            type="reward",
            adapter_suffix="reward",
            data_kind="preference",
            data_label="preference pairs (prompt, chosen, rejected)",
            # Twice DPO's: the score head starts at random, not at a policy that is already
            # close to what it should be (docs/benchmarks.md, reward_model, for what it reaches).
            default_learning_rate=1e-4,
            hyperparameters=Hyperparameters,
            recipe="services.trainer.recipes.reward:run_reward",
            # Chosen and rejected are scored in one forward pass.
            sequences_per_example=2,
        ),
        TrainingMethod(
            type="reinforcement",
            adapter_suffix="rl",
            data_kind="prompt",
            data_label="prompts (messages ending in a user turn, plus the fields the grader reads)",
            # GRPO moves a policy by small steps from sampled answers (TRL's examples use 1e-6 to
            # 1e-5 for full weights; LoRA takes a larger one).
            default_learning_rate=1e-5,
            hyperparameters=ReinforcementHyperparameters,
            recipe="services.trainer.recipes.grpo:run_grpo",
            # Each prompt is answered num_generations (default 4) times.
            sequences_per_example=4,
            openai_hyperparameters=("beta",),
        ),
    )
}


def get_method(name: str) -> TrainingMethod:
    """The registry entry of ``name``; an unknown method is an error, never another method."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValidationError(
            f"unknown training method {name!r}; known methods: {', '.join(METHODS)}",
            param="method.type",
            code="unknown_method",
        ) from None
