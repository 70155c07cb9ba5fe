"""The training job as one typed object (the OpenAI-shaped objects the API answers with are in
:mod:`services.trainer.responses`).

``JobSpec`` is what ``POST /v1/fine_tuning/jobs`` takes and what ``loraplex train run config.yaml``
reads: the same fields, the same validation, the same defaults. OpenAI's fields (``model``,
``training_file``, ``method``, ``hyperparameters`` with ``"auto"``, ``suffix``, ``seed``,
``metadata``) keep their meaning; ``adapter``, ``lora``, ``data`` and ``base_adapter`` are our
extensions (the SDK sends them with ``extra_body``).
"""

from __future__ import annotations

import os
import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from services.trainer.hyperparameters import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_EPOCHS,
    Hyperparameters,
    MethodParams,
    ReinforcementParams,
    Strict,
)
from services.trainer.integrations import Integration
from services.trainer.methods import METHODS, get_method
from shared.pii import Kind as PiiKind
from shared.settings import EMBEDDED_BASE_MODEL

# One value per entry of services.trainer.methods.METHODS (a test keeps them equal); a Literal
# so the OpenAPI schema lists the methods.
MethodType = Literal["supervised", "dpo", "reward", "reinforcement"]


# peft reads a string ``target_modules`` as a regular expression and fullmatches it against every
# module name of the model, so a crafted pattern such as ``(.|.)*Z`` hangs a worker. Only forms
# without regex power are accepted: "all-linear", a plain module name, or a list of plain names
# (peft matches list entries by name or dotted suffix, never as a pattern).
ALL_LINEAR = "all-linear"
_PLAIN_MODULE = re.compile(r"[A-Za-z0-9_.]{1,128}")
MAX_TARGET_MODULES = 64


def target_modules_problem(value: str | list[str]) -> str | None:
    """Why ``lora.target_modules`` is refused, or None when it has a safe form."""
    hint = (
        f"use {ALL_LINEAR!r} or a list of module names such as ['q_proj', 'v_proj'] "
        "(letters, digits, '_' and '.'; regular expressions are not accepted)"
    )
    if value == ALL_LINEAR:
        return None
    names = [value] if isinstance(value, str) else value
    if not names:
        return f"the list is empty; {hint}"
    if len(names) > MAX_TARGET_MODULES:
        return f"{len(names)} module names is more than {MAX_TARGET_MODULES}; {hint}"
    for name in names:
        if not _PLAIN_MODULE.fullmatch(name):
            return f"{name[:64]!r} is not a plain module name; {hint}"
    return None


class LoraSpec(Strict):
    """LoRA / QLoRA settings (extension field ``lora``)."""

    r: int = Field(default=16, ge=1, description="LoRA rank.")
    alpha: int = Field(default=32, gt=0, alias="lora_alpha", description="LoRA alpha.")
    dropout: float = Field(default=0.05, ge=0, lt=1, alias="lora_dropout")
    target_modules: str | list[str] = Field(
        default=ALL_LINEAR,
        description="'all-linear', or module names such as ['q_proj', 'v_proj'] (letters, "
        "digits, '_', '.'); regular expressions are refused.",
    )
    quantization: Literal["none", "nf4"] = Field(
        default="none", description="'nf4': QLoRA (4-bit NF4 base, double quantisation)."
    )
    # Accepted so a request that asks for them gets a clear refusal rather than a schema error.
    use_dora: bool = False
    bias: str = "none"
    modules_to_save: list[str] | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Method(Strict):
    type: MethodType = "supervised"
    supervised: MethodParams | None = None
    dpo: MethodParams | None = None
    reward: MethodParams | None = None
    reinforcement: ReinforcementParams | None = None

    @model_validator(mode="after")
    def _matching_block(self) -> Method:
        for other in METHODS:
            if other != self.type and getattr(self, other, None) is not None:
                raise ValueError(f"method.type is {self.type!r} but method.{other} is set")
        if self.type == "reinforcement" and self.reinforcement is None:
            raise ValueError(
                "method.reinforcement is required for method 'reinforcement': give its grader"
            )
        return self


class DataSpec(Strict):
    """How the data is prepared (extension field ``data``)."""

    validation_fraction: float = Field(default=0.1, ge=0, lt=1)
    truncation: Literal["drop", "truncate"] = "drop"
    near_duplicate_threshold: float = Field(default=0.85, gt=0, le=1)
    pii: Literal["report", "redact", "refuse"] = Field(
        default="report",
        description="PII in the training data (e-mail, phone, card, IBAN, national id, IP, "
        "person name): 'report' lists where it is (file, line, field, kind) and trains on it; "
        "'redact' replaces each span with a placeholder such as [EMAIL] before training; "
        "'refuse' refuses the job naming each one.",
    )
    pii_kinds: list[PiiKind] | None = Field(
        default=None, description="Which PII kinds count; default: all of them."
    )
    keep_markup: bool = Field(
        default=False,
        description="keep HTML tags and entities when cleaning (for tasks whose output is HTML)",
    )


class JobSpec(BaseModel):
    """A fine-tuning job: the HTTP body of ``POST /v1/fine_tuning/jobs`` and the YAML of ``run``."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(default=EMBEDDED_BASE_MODEL, min_length=1, max_length=200)
    training_file: str = Field(min_length=1)
    validation_file: str | None = None
    method: Method = Field(default_factory=Method)
    hyperparameters: Hyperparameters | None = Field(
        default=None, description="Deprecated OpenAI top-level form of method hyperparameters."
    )
    suffix: str | None = Field(default=None, min_length=1, max_length=64)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    metadata: dict[str, str] | None = None
    integrations: list[Integration] | None = Field(
        default=None,
        max_length=4,
        description="Experiment tracking, default none: 'tensorboard' (event files), 'mlflow' "
        "(the trainer's LORAPLEX_MLFLOW_TRACKING_URI, else a local store) and 'wandb' (offline "
        "run folder), each under the trainer's tracking directory; where they write and any "
        "credential come from the trainer's settings, never from the job.",
    )
    # Before ``lora`` and ``base_adapter``: their validators read it.
    adapter: Literal["lora", "none"] = Field(
        default="lora",
        description="'none': full fine-tuning, every weight trains and the result is a complete "
        "model (method 'supervised' only; no lora block, no base_adapter).",
    )
    lora: LoraSpec = Field(default_factory=LoraSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    base_adapter: str | None = Field(
        default=None,
        description="Adapter version (name@vN) or alias (name:alias) to continue from, e.g. SFT "
        "before DPO; an alias is resolved to its version when the job is created.",
    )
    processes: int = Field(
        default=1,
        ge=1,
        description="Training processes (torchrun, DDP): one per GPU, or CPU processes of one "
        "thread each; each trains an equal share of every batch, so batch_size must divide by it.",
    )

    @field_validator("metadata")
    @classmethod
    def _metadata_limits(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None:
            if len(value) > 16:
                raise ValueError("at most 16 metadata keys")
            for k, v in value.items():
                if len(k) > 64 or len(v) > 512:
                    raise ValueError(f"metadata {k!r}: keys up to 64 and values up to 512 chars")
        return value

    @field_validator("processes")
    @classmethod
    def _processes_fit(cls, value: int, info: ValidationInfo) -> int:
        # Checked at creation and again by the worker that trains the job (its own cores).
        method, lora = info.data.get("method"), info.data.get("lora")
        if value == 1 or method is None or lora is None:
            return value  # a bad method or lora block has its own error
        if value > (cores := len(os.sched_getaffinity(0))):
            raise ValueError(f"{value} processes but this machine has {cores} usable cores")
        if method.type != "supervised":
            raise ValueError("more than one process is supported for method 'supervised' only")
        if lora.quantization != "none":
            raise ValueError("more than one process is not supported with QLoRA (nf4)")
        if info.data.get("adapter") == "none":
            # Not yet measured under DDP (a full model's gradients are all-reduced whole).
            raise ValueError("more than one process is not supported with full fine-tuning yet")
        block = getattr(method, method.type)
        hp = info.data.get("hyperparameters") or (
            block.hyperparameters if block else get_method(method.type).hyperparameters()
        )
        batch = DEFAULT_BATCH_SIZE if hp.batch_size == "auto" else hp.batch_size
        if batch % value:
            raise ValueError(
                f"{value} processes do not divide the batch size {batch}: each process trains "
                "an equal share of every batch"
            )
        return value

    @field_validator("adapter")
    @classmethod
    def _full_weights_need_a_method_that_trains_them(cls, value: str, info: ValidationInfo) -> str:
        method = info.data.get("method")  # absent when the method itself was refused
        if value == "none" and method and get_method(method.type).full_learning_rate is None:
            full = [m for m, e in METHODS.items() if e.full_learning_rate is not None]
            raise ValueError(
                f"adapter 'none' (full fine-tuning) is not available for method "
                f"{method.type!r}; methods that train every weight: {', '.join(full)}"
            )
        return value

    @field_validator("lora", "base_adapter")
    @classmethod
    def _no_adapter_settings_for_full_weights(cls, value: Any, info: ValidationInfo) -> Any:
        # Runs only for a value the job gave (defaults are not validated).
        if value is not None and info.data.get("adapter") == "none":
            raise ValueError(
                f"{info.field_name} is set but adapter is 'none': full fine-tuning trains every "
                "weight of the base model itself, with no LoRA and no starting adapter; remove "
                f"{info.field_name} or use adapter 'lora'"
            )
        return value

    @model_serializer(mode="wrap")
    def _no_lora_block_when_full(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A stored full fine-tuning job must validate again (the worker reads it back), and an
        # unused LoRA block in its manifest would only mislead.
        out: dict[str, Any] = handler(self)
        if self.adapter == "none":
            out.pop("lora", None)
        return out

    @model_validator(mode="after")
    def _reward_needs_held_out_pairs(self) -> JobSpec:
        # A reward model is judged by its held-out pair accuracy, so it needs pairs to hold out;
        # it trains a fresh score head on the base, not on top of a generation adapter.
        if self.method.type == "reward":
            if self.validation_file is None and self.data.validation_fraction == 0:
                raise ValueError(
                    "data.validation_fraction is 0 and there is no validation_file: a reward job "
                    "needs held-out pairs to measure its pair accuracy"
                )
            if self.lora.quantization != "none":
                raise ValueError(
                    "lora.quantization 'nf4' is not supported for method 'reward' (LoRA on the "
                    "bf16/fp32 base only)"
                )
            if self.base_adapter is not None:
                raise ValueError(
                    "base_adapter is not supported for method 'reward': a reward model is a "
                    "fresh LoRA and score head on the base model"
                )
        return self

    @model_validator(mode="after")
    def _hyperparameters_in_one_place(self) -> JobSpec:
        # OpenAI's deprecated top-level form exists for supervised fine-tuning only.
        if self.hyperparameters is not None:
            if self.method.type != "supervised" or self.method.supervised is not None:
                raise ValueError(
                    "give hyperparameters either at the top level (supervised only) or in "
                    "method.<type>.hyperparameters, not both"
                )
            self.method.supervised = MethodParams(hyperparameters=self.hyperparameters)
            self.hyperparameters = None
        return self

    @property
    def params(self) -> Hyperparameters:
        method = get_method(self.method.type)
        block: MethodParams | ReinforcementParams | None = getattr(self.method, method.type)
        return block.hyperparameters if block is not None else method.hyperparameters()

    @property
    def default_learning_rate(self) -> float:
        """What ``learning_rate_multiplier`` multiplies: the method's, or its full-weights one."""
        method = get_method(self.method.type)
        if self.adapter == "none" and method.full_learning_rate is not None:
            return method.full_learning_rate
        return method.default_learning_rate

    def resolved(self) -> ResolvedHyperparameters:
        hp = self.params
        default_lr = self.default_learning_rate
        multiplier = 1.0 if hp.learning_rate_multiplier == "auto" else hp.learning_rate_multiplier
        return ResolvedHyperparameters(
            n_epochs=DEFAULT_EPOCHS if hp.n_epochs == "auto" else hp.n_epochs,
            batch_size=DEFAULT_BATCH_SIZE if hp.batch_size == "auto" else hp.batch_size,
            learning_rate=hp.learning_rate or default_lr * float(multiplier),
            beta=type(hp).default_beta if hp.beta == "auto" else float(hp.beta),
            lr_scheduler_type=hp.lr_scheduler_type,
            warmup_ratio=hp.warmup_ratio,
            weight_decay=hp.weight_decay,
            gradient_accumulation_steps=hp.gradient_accumulation_steps,
            micro_batch_size=hp.micro_batch_size,
            max_steps=hp.max_steps,
            max_length=hp.max_length,
            save_steps=hp.save_steps,
            logging_steps=hp.logging_steps,
            batching=hp.batching,
            precision=hp.precision,
            gradient_checkpointing=hp.gradient_checkpointing,
            seed=42 if self.seed is None else self.seed,
        )

    def openai_hyperparameters(self) -> dict[str, Any]:
        r = self.resolved()
        method = get_method(self.method.type)
        out: dict[str, Any] = {
            "n_epochs": r.n_epochs,
            "batch_size": r.batch_size,
            "learning_rate_multiplier": r.learning_rate / self.default_learning_rate,
        }
        for name in method.openai_hyperparameters:
            out[name] = getattr(r, name)
        return out


class ResolvedHyperparameters(BaseModel):
    """Every knob with its final value; stored in the job and the adapter manifest."""

    n_epochs: int
    batch_size: int
    learning_rate: float
    beta: float
    lr_scheduler_type: str
    warmup_ratio: float
    weight_decay: float
    gradient_accumulation_steps: int
    micro_batch_size: int | str
    max_steps: int | None
    max_length: int
    save_steps: int | None
    logging_steps: int
    batching: str
    precision: str
    gradient_checkpointing: bool | str
    seed: int


# -- API objects (OpenAI shapes) ----------------------------------------------------------------
