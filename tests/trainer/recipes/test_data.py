"""`services.trainer.recipes.data`: the data phase reports its validation, forwards warnings, moves
the job to running only when the data passed, takes its settings from the job spec, and the
sequence lengths the decisions read."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from services.trainer.recipes.context import EventKind
from services.trainer.recipes.data import longest_sequence, mean_sequence, prepare_data
from services.trainer.statuses import JobStatus
from shared.basemodel import ResolvedBaseModel
from shared.datasets import ChatRenderer
from shared.errors import ValidationError
from tests.trainer.conftest import RecordingReporter, order_chat, write_jsonl
from tests.trainer.recipes.specs import make_ctx, sft_spec


@pytest.fixture(scope="module")
def renderer(base_model: ResolvedBaseModel) -> ChatRenderer:
    from transformers import AutoTokenizer

    return ChatRenderer(AutoTokenizer.from_pretrained(base_model.path))


def test_valid_data_is_reported_and_moves_the_job_to_running(
    tmp_path: Path, sft_file: Path, renderer: ChatRenderer
) -> None:
    reporter = RecordingReporter()
    ctx = make_ctx(tmp_path, sft_spec(), train=sft_file, reporter=reporter)
    data = prepare_data(ctx, renderer, "sft", ctx.spec.resolved())
    (event,) = [e for e in reporter.events if e["type"] == EventKind.VALIDATION]
    assert event["data"] is data.report and event["level"] == "info"
    warnings = len(data.report["warnings"])  # the names and cities read as PII: reported
    assert event["message"] == (
        f"validated 9 training and 1 validation examples (0 errors, {warnings} warnings)"
    )
    assert len(data.train_rendered) == 9 and len(data.validation_rendered) == 1
    assert reporter.phases == [JobStatus.RUNNING]


def test_a_validation_file_is_loaded_in_place_of_the_split(
    tmp_path: Path, sft_file: Path, renderer: ChatRenderer
) -> None:
    valid = write_jsonl(tmp_path / "valid.jsonl", [order_chat(i) for i in range(20, 23)])
    ctx = make_ctx(tmp_path, sft_spec(), train=sft_file, validation=valid)
    data = prepare_data(ctx, renderer, "sft", ctx.spec.resolved())
    assert data.report["validation_source"] == "validation_file"
    assert data.report["validation"]["examples"] == 3 and data.report["train"]["examples"] == 10


def test_the_spec_s_data_settings_apply_and_warnings_become_warn_events(
    tmp_path: Path, sft_file: Path, renderer: ChatRenderer
) -> None:
    reporter = RecordingReporter()
    spec = {**sft_spec(max_length=48), "data": {"truncation": "truncate"}}
    ctx = make_ctx(tmp_path, spec, train=sft_file, reporter=reporter)
    data = prepare_data(ctx, renderer, "sft", ctx.spec.resolved())
    assert data.report["truncation"] == "truncate" and data.report["max_length"] == 48
    assert all(r.n_tokens <= 48 for r in data.train_rendered)
    warned = [e["message"] for e in reporter.events if e["level"] == "warn"]
    assert warned == data.report["warnings"] and "9 training example(s) truncated" in warned


def test_bad_data_is_reported_as_an_error_and_refused_before_running(
    tmp_path: Path, sft_file: Path, renderer: ChatRenderer
) -> None:
    reporter = RecordingReporter()
    ctx = make_ctx(tmp_path, sft_spec(), train=sft_file, reporter=reporter)
    with pytest.raises(ValidationError) as info:
        prepare_data(ctx, renderer, "preference", ctx.spec.resolved())  # chats, not pairs
    assert info.value.code == "invalid_training_data"
    (event,) = [e for e in reporter.events if e["type"] == EventKind.VALIDATION]
    assert event["level"] == "error" and event["data"]["errors"] == info.value.details
    assert reporter.phases == []


def lengths(train: list[int], pairs: list[int], prompts: list[int] | None = None) -> Any:
    return SimpleNamespace(
        train_rendered=[SimpleNamespace(n_tokens=n) for n in train],
        train_pairs=[SimpleNamespace(n_tokens=n) for n in pairs],
        train_prompt_tokens=prompts or [],
    )


def test_sequence_lengths_count_rendered_examples_and_pairs() -> None:
    assert mean_sequence(lengths([10, 30], [])) == 20
    assert mean_sequence(lengths([], [4, 8, 12])) == 8
    assert mean_sequence(lengths([2], [4])) == 3
    assert longest_sequence(lengths([10, 30], [50])) == 50
    assert longest_sequence(lengths([70], [50])) == 70
    # Reinforcement prompts count too.
    assert mean_sequence(lengths([], [], [6, 10])) == 8
    assert longest_sequence(lengths([], [], [6, 90])) == 90
    # No data: no division by zero, and a length of at least one token.
    assert mean_sequence(lengths([], [])) == 0
    assert longest_sequence(lengths([], [])) == 1
