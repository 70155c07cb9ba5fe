"""Whether a full fine-tune can fit this machine at all, checked when the job is created.

The worker's plan (``recipes.decisions.plan_memory``) needs the data's sequence lengths and this
CPU's precision, which are known only once the job runs. A full fine-tune's weights, gradients and
AdamW states are not: 16 bytes for every weight of the base, most of what it needs. So a full job
is refused at creation when even its smallest step cannot fit: one example per pass, of at most
``SMALLEST_PASS_TOKENS`` tokens, with gradient checkpointing (unless the job pinned it off). The
refusal names ``adapter`` and gives the estimates of the LoRA and QLoRA jobs that would fit
(``shared.memory_fit``); the worker plans the real step again before training.

The memory is what the planner uses everywhere: ``LORAPLEX_MEMORY_LIMIT_BYTES`` when set, else
what this machine has free.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session

from services.trainer.config import TrainerSettings
from services.trainer.methods import get_method
from services.trainer.schemas import JobSpec
from shared.memory import ModelShape, PlanInput, available_memory
from shared.memory_fit import plan_or_refuse
from shared.registry.models import BaseModelRow
from shared.settings import EMBEDDED_BASE_MODEL

# The shortest max_length the planner suggests: no job is planned on shorter passes.
SMALLEST_PASS_TOKENS = 128


def base_folder(session: Session, settings: TrainerSettings, name: str) -> Path | None:
    """The base model's folder when it is already prepared (config.json and weights at hand);
    None for one the worker still has to prepare or download."""
    folder: Path | None = None
    if name == EMBEDDED_BASE_MODEL:
        folder = settings.models_dir / EMBEDDED_BASE_MODEL
    elif (row := session.get(BaseModelRow, name)) is not None:
        folder = Path(row.path)
    if folder is None or not (folder / "config.json").is_file():
        return None
    return folder if any(folder.glob("*.safetensors")) else None


def smallest_full_step(spec: JobSpec) -> PlanInput:
    hp = spec.resolved()
    return PlanInput(
        quantization="none",
        r=spec.lora.r,
        target_modules=spec.lora.target_modules,
        batch_size=1,
        seq_len=min(hp.max_length, SMALLEST_PASS_TOKENS),
        gradient_checkpointing=hp.gradient_checkpointing is not False,
        # "auto" may become bf16, which only adds autocast's bf16 copy of the weights.
        weight_bytes=2 if hp.precision == "bf16" else 4,
        sequences_per_example=get_method(spec.method.type).sequences_per_example,
        full=True,
    )


def check_full_fits(session: Session, settings: TrainerSettings, spec: JobSpec) -> None:
    """Refuse (ValidationError naming ``adapter``) a full fine-tune whose smallest step does not
    fit; any other job, or a base not prepared yet, passes (the worker's plan checks it)."""
    if spec.adapter != "none":
        return
    folder = base_folder(session, settings, spec.model)
    if folder is None:
        return
    shape = ModelShape.from_folder(folder)
    step = smallest_full_step(spec)
    plan_or_refuse(
        shape,
        step,
        available_memory(settings.memory_limit_bytes),
        may_checkpoint=spec.resolved().gradient_checkpointing is not False,
    )
