"""A job's hyperparameters: OpenAI's (``"auto"`` allowed) plus ours, and the curriculum defaults.

Its own module so the method registry (``services.trainer.methods``) can name each method's
hyperparameter model without importing the job schema that looks methods up.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from services.trainer.graders import Grader

Auto = Literal["auto"]

# Curriculum defaults for LoRA fine-tuning; "auto" resolves to these (the learning rate is the
# method's: services.trainer.methods).
DEFAULT_EPOCHS = 2
DEFAULT_BATCH_SIZE = 8
DEFAULT_BETA = 0.1


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Hyperparameters(Strict):
    """OpenAI's hyperparameters (``"auto"`` allowed) plus ours; all have curriculum defaults."""

    default_beta: ClassVar[float] = DEFAULT_BETA  # what ``beta: "auto"`` resolves to

    n_epochs: int | Auto = "auto"
    batch_size: int | Auto = "auto"
    learning_rate_multiplier: float | Auto = "auto"
    beta: float | Auto = "auto"
    learning_rate: float | None = Field(default=None, gt=0, description="Overrides the multiplier.")
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = Field(default=0.05, ge=0, lt=1)
    weight_decay: float = Field(default=0.01, ge=0)
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    micro_batch_size: int | Auto = Field(
        default="auto",
        description="Examples per forward pass; batch_size is reached by accumulation. 'auto': "
        "on CPU the smallest divisor of batch_size giving ~160 tokens per pass (less activation "
        "memory at the same speed), on GPU batch_size.",
    )
    max_steps: int | None = Field(default=None, ge=1, description="Stop after this many steps.")
    max_length: int = Field(default=1024, ge=16, description="Longest example in tokens.")
    save_steps: int | None = Field(default=None, ge=1, description="Checkpoint period (steps).")
    logging_steps: int = Field(default=1, ge=1)
    batching: Literal["auto", "padding_free", "group_by_length", "padded"] = "auto"
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    gradient_checkpointing: bool | Auto = "auto"

    @field_validator("n_epochs", "batch_size", "micro_batch_size")
    @classmethod
    def _positive(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("must be at least 1 or 'auto'")
        return value

    @model_validator(mode="after")
    def _micro_divides_batch(self) -> Hyperparameters:
        micro, batch = self.micro_batch_size, self.batch_size
        if isinstance(micro, int) and isinstance(batch, int) and batch % micro:
            raise ValueError("micro_batch_size must divide batch_size")
        return self

    @field_validator("learning_rate_multiplier", "beta")
    @classmethod
    def _positive_float(cls, value: float | str) -> float | str:
        if isinstance(value, float | int) and not (value > 0 and math.isfinite(value)):
            raise ValueError("must be a positive number or 'auto'")
        return value


class MethodParams(Strict):
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)


DEFAULT_KL_BETA = 0.04  # reinforcement: TRL's GRPO default for the KL penalty


class ReinforcementHyperparameters(Hyperparameters):
    """GRPO's knobs besides the common ones. ``batch_size`` counts prompts per optimizer step;
    each is sampled ``num_generations`` times, so a step scores batch_size x num_generations
    completions. ``beta`` is the KL penalty's weight against the starting policy."""

    default_beta: ClassVar[float] = DEFAULT_KL_BETA

    num_generations: int = Field(default=4, ge=2, le=64, description="Completions per prompt.")
    max_completion_length: int = Field(default=64, ge=1, le=4096)
    temperature: float = Field(default=1.0, gt=0, le=2)


class ReinforcementParams(Strict):
    """``method.reinforcement``: the grader (required) and the hyperparameters."""

    grader: Grader
    hyperparameters: ReinforcementHyperparameters = Field(
        default_factory=ReinforcementHyperparameters
    )
