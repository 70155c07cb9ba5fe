"""`services.trainer.responses`: OpenAI's shapes, so the SDK reads them unchanged."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from services.trainer.responses import FineTuningJob, JobError, unix_time


def test_unix_time_reads_naive_datetimes_as_utc() -> None:
    assert unix_time(None) is None
    assert unix_time(datetime(1970, 1, 1, 0, 1)) == 60
    assert unix_time(datetime(1970, 1, 1, 1, 1, tzinfo=timezone(timedelta(hours=1)))) == 60
    assert unix_time(datetime(1970, 1, 1, 0, 1, tzinfo=UTC)) == 60


def test_a_job_parses_with_the_openai_sdk() -> None:
    from openai.types.fine_tuning import FineTuningJob as SdkJob

    job = FineTuningJob(
        id="ftjob-1",
        created_at=1,
        model="m",
        status="failed",
        training_file="file-1",
        hyperparameters={"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 1.0},
        seed=3,
        method={"type": "supervised"},
        error=JobError(code="bad", message="why", param="training_file"),
    )
    parsed = SdkJob.model_validate(job.model_dump(mode="json"))
    assert parsed.object == "fine_tuning.job" and parsed.status == "failed"
    assert parsed.error is not None and parsed.error.param == "training_file"
