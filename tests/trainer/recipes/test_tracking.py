"""`services.trainer.recipes.tracking`: a job with ``integrations: [{"type": "tensorboard"}]``
writes TensorBoard event files that TensorBoard's own reader reads back with the loss the job
reported; a job without it writes none."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.trainer.config import TrainerSettings
from services.trainer.recipes import tracking
from tests.trainer.conftest import RecordingReporter, order_chat, run_in_process, write_jsonl
from tests.trainer.recipes.specs import make_ctx, sft_spec


def test_no_integration_no_tracker(tmp_path: Path) -> None:
    reporter = RecordingReporter()
    assert tracking.callbacks(make_ctx(tmp_path, reporter=reporter)) == []
    assert reporter.events == []


def test_the_log_dir_is_named_by_the_job_and_outlives_its_scratch_folder(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, {**sft_spec(), "integrations": [{"type": "tensorboard"}]})
    ctx.job_id = "ftjob-abc"
    assert tracking.tensorboard_dir(ctx) == ctx.settings.tracking_dir / "tensorboard" / "ftjob-abc"
    assert not tracking.tensorboard_dir(ctx).is_relative_to(ctx.output_dir)
    ctx.job_id = None  # `loraplex train run`: the adapter name and the time
    assert tracking.tensorboard_dir(ctx).name.startswith(f"{ctx.adapter_name}-")


@pytest.mark.slow
def test_tensorboard_reads_back_the_loss_the_job_reported(
    trainer_model_settings: TrainerSettings, tmp_path: Path
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train = write_jsonl(tmp_path / "sft.jsonl", [order_chat(i) for i in range(8)])
    spec = {**sft_spec(), "integrations": [{"type": "tensorboard"}]}
    _result, reporter = run_in_process(trainer_model_settings, spec, train)
    said = [e for e in reporter.events if (e["data"] or {}).get("tensorboard")]
    assert len(said) == 1
    log_dir = Path(said[0]["data"]["tensorboard"])
    assert log_dir.is_relative_to(trainer_model_settings.tracking_dir / "tensorboard")
    events = EventAccumulator(str(log_dir))
    events.Reload()
    logged = {e.step: e.value for e in events.Scalars("train/loss")}
    reported = {
        e["data"]["step"]: e["data"]["train_loss"]
        for e in reporter.events
        if e["type"] == "metrics" and "train_loss" in (e["data"] or {})
    }
    assert reported and sorted(logged) == sorted(reported) == [1, 2]
    for step, loss in reported.items():
        assert logged[step] == pytest.approx(loss, rel=1e-4)
    assert "train/learning_rate" in events.Tags()["scalars"]
