"""Step 3 of a recipe, training's progress: loss, learning rate, tokens/s, progress and ETA as
events, checkpoints as events, and stopping at the next step on request."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from services.trainer.recipes.context import EventKind, Reporter


def agreed(reason: str | None) -> str | None:
    """Rank 0's stop decision on every rank of a multi-process job (a no-op in one process): a
    rank that stopped alone would leave the others waiting in their next gradient all-reduce."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return reason
    box = [reason]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def make_progress_callback(reporter: Reporter) -> Any:
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        """Loss, learning rate, tokens/s, progress and ETA as events; stop on request."""

        def __init__(self) -> None:
            self.start = time.monotonic()
            self.last_time = self.start
            self.last_tokens = 0.0
            self.stop_reason: str | None = None
            self.last_check = 0.0

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.start = self.last_time = time.monotonic()
            reporter.event(
                f"training started at step {state.global_step} of {state.max_steps}",
                type=EventKind.STARTED,
                data={"step": state.global_step, "total_steps": state.max_steps},
            )

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            now = time.monotonic()
            # Under several processes every rank checks at every step (the check is a
            # collective, so all must call it at the same steps; wall clocks differ).
            distributed = args.world_size > 1
            if distributed or now - self.last_check >= 0.5 or state.global_step >= state.max_steps:
                self.last_check = now
                reason = agreed(reporter.should_stop() if state.is_world_process_zero else None)
                if reason:
                    self.stop_reason = reason
                    control.should_training_stop = True
                    control.should_save = False
                    control.should_evaluate = False

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            logs = dict(logs or {})
            now = time.monotonic()
            step, total = state.global_step, max(1, state.max_steps)
            tokens = float(logs.get("num_tokens", 0.0))
            rate = (tokens - self.last_tokens) / max(1e-6, now - self.last_time) if tokens else None
            self.last_time, self.last_tokens = now, tokens or self.last_tokens
            progress = step / total
            elapsed = now - self.start
            eta = elapsed / progress * (1 - progress) if progress > 0 else None
            if "loss" in logs:
                data = {
                    "step": step,
                    "total_steps": total,
                    "train_loss": logs.get("loss"),
                    "learning_rate": logs.get("learning_rate"),
                    "tokens_per_second": round(rate, 1) if rate else None,
                    "progress": round(100 * progress, 1),
                    "eta_seconds": round(eta, 1) if eta is not None else None,
                    "epoch": logs.get("epoch"),
                }
                for key in (
                    "mean_token_accuracy",
                    "rewards/accuracies",
                    "rewards/margins",
                    # GRPO: the grader's mean and spread over the step's completions, and the KL
                    # from the reference policy.
                    "reward",
                    "reward_std",
                    "kl",
                ):
                    if key in logs:
                        data[key.replace("/", "_")] = logs[key]
                reporter.event(
                    f"step {step}/{total}: training loss={logs['loss']:.4f}",
                    type=EventKind.METRICS,
                    data=data,
                )
            elif "eval_loss" in logs:
                reporter.event(
                    f"step {step}/{total}: validation loss={logs['eval_loss']:.4f}",
                    type=EventKind.METRICS,
                    data={
                        "step": step,
                        "valid_loss": logs["eval_loss"],
                        "valid_mean_token_accuracy": logs.get("eval_mean_token_accuracy"),
                    },
                )

        def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            losses = [h["loss"] for h in state.log_history if "loss" in h]
            evals = [h["eval_loss"] for h in state.log_history if "eval_loss" in h]
            accs = [
                h["mean_token_accuracy"] for h in state.log_history if "mean_token_accuracy" in h
            ]
            reporter.event(
                f"checkpoint saved at step {state.global_step}",
                type=EventKind.CHECKPOINT,
                data={
                    "step": state.global_step,
                    "path": str(Path(args.output_dir) / f"checkpoint-{state.global_step}"),
                    "metrics": {
                        "step": state.global_step,
                        "train_loss": losses[-1] if losses else None,
                        "valid_loss": evals[-1] if evals else None,
                        "train_mean_token_accuracy": accs[-1] if accs else None,
                    },
                },
            )

    return ProgressCallback()
