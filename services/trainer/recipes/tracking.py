"""Experiment tracking: the job's ``integrations`` as trainer callbacks.

TensorBoard is transformers' own ``TensorBoardCallback`` (what ``report_to="tensorboard"`` would
add), given its writer so the event files go to a folder that outlives the job's scratch
directory and never depend on a process-wide environment variable (one worker runs many jobs):
``<data dir>/tracking/tensorboard/<job id>``. It logs what the trainer logs (``train/loss``,
``train/learning_rate``, ``eval/loss``, ...) at each logging step. A resumed job appends a new
event file to the same folder.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from services.trainer.recipes.context import RecipeContext


def tensorboard_dir(ctx: RecipeContext) -> Path:
    run = ctx.job_id or f"{ctx.adapter_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return ctx.settings.tracking_dir / "tensorboard" / run


def callbacks(ctx: RecipeContext) -> list[Any]:
    """One trainer callback per tracker the job asked for (none by default)."""
    kinds = {integration.type for integration in ctx.spec.integrations or []}
    out: list[Any] = []
    if "tensorboard" in kinds:
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations.integration_utils import TensorBoardCallback

        log_dir = tensorboard_dir(ctx)
        log_dir.mkdir(parents=True, exist_ok=True)
        out.append(TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(log_dir))))
        ctx.reporter.event(
            f"TensorBoard event files go to {log_dir}", data={"tensorboard": str(log_dir)}
        )
    return out
