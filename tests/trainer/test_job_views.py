"""``services.trainer.job_views``: jobs, events and checkpoints in OpenAI's shapes, and a job's
progress read from its newest metrics (or result) event."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy.orm import Session

from services.trainer.job_views import (
    checkpoint_to_api,
    event_id,
    event_to_api,
    job_progress,
    job_to_api,
    parse_event_id,
)
from services.trainer.jobs import add_event
from shared.errors import ValidationError
from shared.registry.db import open_registry
from shared.registry.models import JobEventRow, TrainingJobRow
from shared.settings import SharedSettings
from tests.trainer.conftest import BASE

T0 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def row(type: str, data: dict[str, object] | None, id: int = 7) -> JobEventRow:
    return JobEventRow(
        id=id, job_id="ftjob-a", created_at=T0, level="info", type=type, message="m", data=data
    )


def job(status: str = "running", **extra: object) -> TrainingJobRow:
    config = {
        "training_file": "file-x",
        "suffix": "shop",
        "seed": 5,
        "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.3}}},
    }
    return TrainingJobRow(
        id="ftjob-a",
        status=status,
        base_model=BASE,
        adapter_name="shop",
        training_file="file-x",
        config=config,
        cancel_requested=False,
        **({"created_at": T0} | extra),
    )


def test_event_ids_round_trip_and_a_bad_cursor_is_refused() -> None:
    assert event_id(row("message", {}, id=42)) == "ftevent-42"
    assert parse_event_id("ftevent-42") == 42 and parse_event_id("42") == 42
    assert parse_event_id(None) is None
    for bad in ("ftevent-x", "ftevent--1", "ftckpt-3"):
        with pytest.raises(ValidationError) as caught:
            parse_event_id(bad)
        assert caught.value.param == "after"


def test_events_map_onto_the_two_types_openai_knows() -> None:
    message = event_to_api(row("message", {}))
    assert (message.type, message.data, message.created_at) == (
        "message",
        None,
        int(T0.timestamp()),
    )
    metrics = event_to_api(row("metrics", {"step": 3, "train_loss": 1.2}))
    assert metrics.type == "metrics" and metrics.data == {"step": 3, "train_loss": 1.2}
    # Our own kinds travel as messages, the kind kept in the data.
    checkpoint = event_to_api(row("checkpoint", {"step": 2}))
    assert checkpoint.type == "message" and checkpoint.data == {"kind": "checkpoint", "step": 2}
    assert event_to_api(row("result", None)).data == {"kind": "result"}


def test_a_checkpoint_event_is_a_checkpoint_object() -> None:
    data = {"step": 4, "metrics": {"train_loss": 0.5, "valid_loss": None}}
    got = checkpoint_to_api(row("checkpoint", data, id=9))
    assert got.id == "ftckpt-9" and got.step_number == 4
    assert got.fine_tuned_model_checkpoint == "ftjob-a:checkpoint-4"
    assert got.fine_tuning_job_id == "ftjob-a"
    assert got.metrics.train_loss == 0.5 and got.metrics.valid_loss is None
    assert checkpoint_to_api(row("checkpoint", None)).step_number == 0


def test_a_job_in_openais_shape_with_our_fields() -> None:
    running = job_to_api(job(), progress=50.0, trained_tokens=1000, estimated_finish=123)
    assert running.model == BASE and running.seed == 5 and running.suffix == "shop"
    assert running.method["type"] == "dpo"
    assert running.method["dpo"]["hyperparameters"]["beta"] == 0.3
    assert running.hyperparameters == running.method["dpo"]["hyperparameters"]
    assert (running.progress, running.trained_tokens, running.estimated_finish) == (50.0, 1000, 123)
    assert running.error is None and running.metadata is None and running.finished_at is None
    # Only a running job has an estimated finish; the error keeps OpenAI's fields only.
    failed = job_to_api(
        job(
            "failed",
            error={"code": "bad_data", "message": "no", "param": "training_file", "trace": "x"},
            job_metadata={"team": "a"},
        ),
        estimated_finish=123,
    )
    assert failed.estimated_finish is None and failed.metadata == {"team": "a"}
    assert failed.error is not None and failed.error.code == "bad_data"
    assert "trace" not in failed.error.model_dump()


@pytest.fixture
def session(settings: SharedSettings) -> Iterator[Session]:
    registry = open_registry(settings)
    try:
        with registry.session() as s:
            yield s
    finally:
        registry.dispose()


def test_progress_comes_from_the_newest_metrics_or_result_event(session: Session) -> None:
    session.add(job(created_at=datetime.now(UTC)))
    session.flush()
    assert job_progress(session, "ftjob-a") == (None, None, None)
    add_event(session, "ftjob-a", "m", type="metrics", data={"progress": 10.0, "eta_seconds": 60})
    add_event(session, "ftjob-a", "m", type="metrics", data={"progress": 40.0, "eta_seconds": 30})
    add_event(session, "ftjob-a", "later, but not progress", type="checkpoint", data={"step": 1})
    session.flush()
    newest = max(session.query(JobEventRow).filter_by(type="metrics"), key=lambda r: r.id)
    created = int(newest.created_at.replace(tzinfo=newest.created_at.tzinfo or UTC).timestamp())
    assert job_progress(session, "ftjob-a") == (40.0, None, created + 30)
    result = {"progress": 100.0, "trained_tokens": 512}
    add_event(session, "ftjob-a", "done", type="result", data=result)
    session.flush()
    assert job_progress(session, "ftjob-a") == (100.0, 512, None)
