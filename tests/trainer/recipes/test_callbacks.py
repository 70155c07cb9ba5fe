"""`services.trainer.recipes.callbacks`: the progress callback turns the trainer's hooks into
events (start, training and validation metrics with progress and ETA, checkpoints) and stops
training at the next step when the reporter asks, without saving or evaluating on the way out."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest

from services.trainer.recipes.callbacks import make_progress_callback
from services.trainer.recipes.context import EventKind
from tests.trainer.conftest import RecordingReporter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class AskingReporter(RecordingReporter):
    """Counts the stop questions and answers ``reason``."""

    def __init__(self, reason: str | None = None) -> None:
        super().__init__()
        self.reason = reason
        self.asked = 0

    def should_stop(self) -> str | None:
        self.asked += 1
        return self.reason


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(time, "monotonic", clock)  # the module reads time.monotonic()
    return clock


def state(
    step: int, total: int = 10, history: list[dict[str, Any]] | None = None, rank: int = 0
) -> Any:
    return SimpleNamespace(
        global_step=step,
        max_steps=total,
        log_history=history or [],
        is_world_process_zero=rank == 0,
    )


def control() -> Any:
    return SimpleNamespace(should_training_stop=False, should_save=True, should_evaluate=True)


ARGS = SimpleNamespace(output_dir="/work/job", world_size=1)


def test_training_start_is_an_event_with_the_step(clock: Clock) -> None:
    reporter = RecordingReporter()
    callback = make_progress_callback(reporter)
    callback.on_train_begin(ARGS, state(4), control())
    (event,) = reporter.events
    assert event["type"] == EventKind.STARTED
    assert event["data"] == {"step": 4, "total_steps": 10}
    assert event["message"] == "training started at step 4 of 10"


def test_a_stop_request_ends_training_without_saving_or_evaluating(clock: Clock) -> None:
    reporter = AskingReporter("cancelled")
    callback = make_progress_callback(reporter)
    ctl = control()
    callback.on_step_end(ARGS, state(1), ctl)
    assert callback.stop_reason == "cancelled"
    assert (ctl.should_training_stop, ctl.should_save, ctl.should_evaluate) == (True, False, False)


def test_no_stop_request_leaves_training_alone(clock: Clock) -> None:
    callback = make_progress_callback(AskingReporter(None))
    ctl = control()
    callback.on_step_end(ARGS, state(1), ctl)
    assert callback.stop_reason is None
    assert (ctl.should_training_stop, ctl.should_save, ctl.should_evaluate) == (False, True, True)


def test_the_stop_question_is_asked_twice_a_second_and_always_at_the_last_step(
    clock: Clock,
) -> None:
    reporter = AskingReporter(None)
    callback = make_progress_callback(reporter)
    callback.on_step_end(ARGS, state(1), control())
    clock.now += 0.2
    callback.on_step_end(ARGS, state(2), control())
    assert reporter.asked == 1  # too soon after the last question
    clock.now += 0.3
    callback.on_step_end(ARGS, state(3), control())
    assert reporter.asked == 2
    clock.now += 0.1
    callback.on_step_end(ARGS, state(10), control())
    assert reporter.asked == 3  # the last step asks however soon it comes


def test_a_training_log_is_a_metrics_event_with_rate_progress_and_eta(clock: Clock) -> None:
    reporter = RecordingReporter()
    callback = make_progress_callback(reporter)
    callback.on_train_begin(ARGS, state(0), control())
    clock.now += 10.0
    logs = {
        "loss": 1.23456,
        "learning_rate": 2e-4,
        "num_tokens": 500.0,
        "epoch": 0.5,
        "mean_token_accuracy": 0.7,
        "rewards/accuracies": 0.75,
        "rewards/margins": 0.1,
    }
    callback.on_log(ARGS, state(2), control(), logs=logs)
    event = reporter.events[-1]
    assert event["type"] == EventKind.METRICS
    assert event["message"] == "step 2/10: training loss=1.2346"
    assert event["data"] == {
        "step": 2,
        "total_steps": 10,
        "train_loss": 1.23456,
        "learning_rate": 2e-4,
        "tokens_per_second": 50.0,  # 500 tokens in 10 s
        "progress": 20.0,
        "eta_seconds": 40.0,  # 10 s for 20%: 40 s for the other 80%
        "epoch": 0.5,
        "mean_token_accuracy": 0.7,
        "rewards_accuracies": 0.75,
        "rewards_margins": 0.1,
    }
    # The rate counts only the tokens since the previous log.
    clock.now += 5.0
    callback.on_log(ARGS, state(4), control(), logs={"loss": 1.0, "num_tokens": 1500.0})
    assert reporter.events[-1]["data"]["tokens_per_second"] == 200.0
    # Without a token count there is no rate, and nothing else is made up.
    callback.on_log(ARGS, state(5), control(), logs={"loss": 1.0})
    data = reporter.events[-1]["data"]
    assert data["tokens_per_second"] is None and "mean_token_accuracy" not in data


def test_a_validation_log_is_a_metrics_event_with_the_validation_loss(clock: Clock) -> None:
    reporter = RecordingReporter()
    callback = make_progress_callback(reporter)
    logs = {"eval_loss": 0.5, "eval_mean_token_accuracy": 0.9}
    callback.on_log(ARGS, state(5), control(), logs=logs)
    (event,) = reporter.events
    assert event["type"] == EventKind.METRICS
    assert event["message"] == "step 5/10: validation loss=0.5000"
    assert event["data"] == {"step": 5, "valid_loss": 0.5, "valid_mean_token_accuracy": 0.9}
    # Anything else the trainer logs (its final summary) is no event.
    callback.on_log(ARGS, state(10), control(), logs={"train_runtime": 3.0})
    assert len(reporter.events) == 1


def test_a_checkpoint_is_an_event_with_its_path_and_latest_metrics(clock: Clock) -> None:
    reporter = RecordingReporter()
    callback = make_progress_callback(reporter)
    history = [
        {"loss": 2.0, "mean_token_accuracy": 0.5, "step": 1},
        {"eval_loss": 1.9, "step": 2},
        {"loss": 1.5, "mean_token_accuracy": 0.6, "step": 2},
    ]
    callback.on_save(ARGS, state(2, history=history), control())
    (event,) = reporter.events
    assert event["type"] == EventKind.CHECKPOINT
    assert event["data"] == {
        "step": 2,
        "path": "/work/job/checkpoint-2",
        "metrics": {
            "step": 2,
            "train_loss": 1.5,
            "valid_loss": 1.9,
            "train_mean_token_accuracy": 0.6,
        },
    }
    callback.on_save(ARGS, state(0), control())
    assert reporter.events[-1]["data"]["metrics"] == {
        "step": 0,
        "train_loss": None,
        "valid_loss": None,
        "train_mean_token_accuracy": None,
    }


def test_a_grpo_log_carries_the_reward_its_spread_and_the_kl(clock: Clock) -> None:
    reporter = RecordingReporter()
    callback = make_progress_callback(reporter)
    callback.on_train_begin(ARGS, state(0), control())
    logs = {"loss": 0.01, "reward": 0.5, "reward_std": 0.25, "kl": 0.003, "entropy": 1.0}
    callback.on_log(ARGS, state(1), control(), logs=logs)
    data = reporter.events[-1]["data"]
    assert (data["reward"], data["reward_std"], data["kl"]) == (0.5, 0.25, 0.003)
    assert "entropy" not in data


def test_under_several_processes_rank_0_decides_at_every_step(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every rank takes part in the (collective) stop decision at every step, whatever its clock
    says; only rank 0 asks its reporter, and what it answers is every rank's answer."""
    from services.trainer.recipes import callbacks

    said: list[str | None] = []

    def broadcast(reason: str | None) -> str | None:  # rank 0's answer reaches every rank
        said.append(reason)
        return "cancelled"

    monkeypatch.setattr(callbacks, "agreed", broadcast)
    two = SimpleNamespace(output_dir="/work/job", world_size=2)
    other = AskingReporter(None)
    callback = make_progress_callback(other)
    callback.on_step_end(two, state(1, rank=1), control())
    callback.on_step_end(two, state(2, rank=1), control())  # same instant: asked again
    assert said == [None, None] and other.asked == 0
    assert callback.stop_reason == "cancelled"
    first = AskingReporter("cancelled")
    make_progress_callback(first).on_step_end(two, state(1), control())
    assert said[-1] == "cancelled" and first.asked == 1


def test_one_process_decides_alone() -> None:
    from services.trainer.recipes.callbacks import agreed

    assert agreed("cancelled") == "cancelled" and agreed(None) is None


def _agree(rank: int, port: int, answers: Any) -> None:
    import torch.distributed as dist

    from services.trainer.recipes.callbacks import agreed

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        answers[rank] = agreed("cancelled" if rank == 0 else None)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_agree_on_rank_0s_stop_decision() -> None:
    import multiprocessing

    from tests.trainer.conftest import free_port

    spawn = multiprocessing.get_context("spawn")
    port = free_port()
    with spawn.Manager() as manager:
        answers = manager.dict()
        ranks = [spawn.Process(target=_agree, args=(r, port, answers)) for r in (0, 1)]
        for rank in ranks:
            rank.start()
        for rank in ranks:
            rank.join(120)
        assert [rank.exitcode for rank in ranks] == [0, 0]
        assert dict(answers) == {0: "cancelled", 1: "cancelled"}
