"""``services.trainer.jobs``: fine-tuning jobs in the registry, without a model: the checks at
creation, the adapter name's base binding, listing, cancel, events and checkpoints."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from services.trainer.config import TrainerSettings
from services.trainer.job_reporter import JobReporter
from services.trainer.jobs import (
    add_event,
    cancel_job,
    check_adapter_base,
    check_base_model,
    create_job,
    default_adapter_name,
    list_checkpoints,
    list_events,
    list_jobs,
)
from services.trainer.schemas import JobSpec
from services.trainer.worker import Worker
from shared.errors import ConflictError, NotFoundError, ValidationError
from shared.registry.adapters import NewVersion, register_version
from shared.registry.db import Registry, open_registry
from shared.registry.models import BaseModelRow, TrainingJobRow, utcnow
from tests.trainer.api.requests import GOOD_SFT, _job, assert_refused, upload
from tests.trainer.conftest import BASE, make_jobs


@pytest.fixture
def reg(tsettings: TrainerSettings) -> Iterator[Registry]:
    registry = open_registry(tsettings)
    yield registry
    registry.dispose()


def add_job(
    s: Session,
    job_id: str,
    *,
    status: str = "queued",
    base: str = BASE,
    name: str = "t",
    **kw: object,
) -> TrainingJobRow:
    row = TrainingJobRow(
        id=job_id,
        status=status,
        base_model=base,
        adapter_name=name,
        training_file="file-x",
        config={"training_file": "file-x"},
        **kw,
    )
    s.add(row)
    s.flush()
    return row


def add_base(s: Session, name: str) -> None:
    s.add(BaseModelRow(name=name, weights_sha256="0" * 64, path="/x", source="t"))
    s.flush()


def test_cancel_before_and_after_a_worker_claims(tsettings: TrainerSettings) -> None:
    w = Worker(tsettings, "w")
    first, second = make_jobs(w, 2)
    with w.registry.session() as s:
        assert cancel_job(s, first).status == "cancelled"
    assert w.claim() == second  # the cancelled job is never claimed
    with w.registry.session() as s:
        job = cancel_job(s, second)
        assert job.status == "validating_files" and job.cancel_requested
    assert JobReporter(w, second).should_stop() == "cancelled"
    w.registry.dispose()


def test_base_adapter_alias_is_pinned_to_its_version_at_creation(
    client: TestClient, trainer_settings: TrainerSettings
) -> None:
    from shared.registry.adapters import NewVersion, register_version, set_alias
    from shared.registry.models import BaseModelRow

    registry = open_registry(trainer_settings)
    try:
        with registry.session() as s:
            s.add(
                BaseModelRow(
                    name="smollm2-135m-instruct", weights_sha256="0" * 64, path="/x", source="t"
                )
            )
            s.flush()
            for n in (1, 2):
                register_version(
                    s, NewVersion("shop", f"{n:064d}", "smollm2-135m-instruct", 8, 1, {})
                )
            set_alias(s, "shop", "prod", "shop@v1")
    finally:
        registry.dispose()
    file_id = upload(client, GOOD_SFT).json()["id"]
    resp = client.post("/v1/fine_tuning/jobs", json=_job(file_id, base_adapter="shop:prod"))
    assert resp.status_code == 200, resp.text
    job_id = resp.json()["id"]
    registry = open_registry(trainer_settings)
    try:
        with registry.session() as s:
            # The alias may move later; the job keeps the version it meant.
            assert s.get(TrainingJobRow, job_id).config["base_adapter"] == "shop@v1"  # type: ignore[union-attr]
    finally:
        registry.dispose()
    assert_refused(
        client.post("/v1/fine_tuning/jobs", json=_job(file_id, base_adapter="shop:canary")),
        422,
        "canary",
    )


def test_the_adapter_name_is_the_suffix_or_the_model_and_method() -> None:
    assert (
        default_adapter_name(JobSpec.model_validate({"training_file": "f", "suffix": "Shop"}))
        == "shop"
    )
    spec = JobSpec.model_validate({"training_file": "f", "model": "Big-" + "m" * 80})
    name = default_adapter_name(spec)
    assert name.startswith("big-mmm") and len(name) == 63


def test_a_base_model_must_be_known(reg: Registry) -> None:
    with reg.session() as s:
        check_base_model(s, BASE)  # the embedded model needs no row
        add_base(s, "qwen-small")
        check_base_model(s, "qwen-small")
        with pytest.raises(ValidationError) as caught:
            check_base_model(s, "llama-9000")
    assert caught.value.param == "model" and caught.value.code == "model_not_found"
    assert f"known base models: qwen-small, {BASE}" in caught.value.message


def test_an_adapter_name_is_bound_to_its_first_versions_base(reg: Registry) -> None:
    with reg.session() as s:
        add_base(s, BASE)
        register_version(s, NewVersion("shop", "1" * 64, BASE, 8, 1, {}))
        check_adapter_base(s, "shop", BASE)
        check_adapter_base(s, "fresh", "other-base")  # a new name binds nothing yet
        with pytest.raises(ConflictError) as caught:
            check_adapter_base(s, "shop", "other-base", "model")
    assert caught.value.param == "model" and caught.value.code == "base_model_mismatch"
    assert "its first version" in caught.value.message


def test_an_unfinished_job_binds_a_new_name_a_finished_one_does_not(reg: Registry) -> None:
    with reg.session() as s:
        add_job(s, "ftjob-done", status="failed", base="other-base", name="new")
        check_adapter_base(s, "new", BASE)
        add_job(s, "ftjob-live", status="running", base="other-base", name="new")
        with pytest.raises(ConflictError, match="unfinished job ftjob-live"):
            check_adapter_base(s, "new", BASE)
        check_adapter_base(s, "new", "other-base")


def test_create_job_refuses_with_every_problem_and_names_the_first_param(
    reg: Registry, tsettings: TrainerSettings
) -> None:
    spec = JobSpec.model_validate(
        {"training_file": "file-missing", "model": "nope", "lora": {"r": 64}}
    )
    with reg.session() as s, pytest.raises(ValidationError) as caught:
        create_job(s, tsettings, spec)
    error = caught.value
    assert error.param == "model" and error.code == "invalid_job"
    assert error.details is not None and len(error.details) == 3
    assert [d.split(":")[0] for d in error.details] == ["model", "training_file", "lora"]
    with reg.session() as s:
        assert list_jobs(s) == ([], False)


def test_list_jobs_filters_by_metadata_and_pages_newest_first(reg: Registry) -> None:
    now = utcnow()
    with reg.session() as s:
        for i in range(4):
            add_job(
                s,
                f"ftjob-{i}",
                job_metadata={"team": "a" if i % 2 else "b", "env": "dev" if i > 1 else "prod"},
                created_at=now + timedelta(seconds=i),
            )
    with reg.session() as s:
        rows, more = list_jobs(s, limit=2)
        assert [r.id for r in rows] == ["ftjob-3", "ftjob-2"] and more
        rows, more = list_jobs(s, after="ftjob-2", limit=2)
        assert [r.id for r in rows] == ["ftjob-1", "ftjob-0"] and not more
        rows, more = list_jobs(s, metadata={"team": "a"})
        assert [r.id for r in rows] == ["ftjob-3", "ftjob-1"] and not more
        rows, _ = list_jobs(s, metadata={"team": "a", "env": "dev"})  # every pair must match
        assert [r.id for r in rows] == ["ftjob-3"]
        assert list_jobs(s, after="ftjob-unknown") == ([], False)


def test_cancel_refuses_finished_jobs_and_asks_a_running_worker_once(reg: Registry) -> None:
    with reg.session() as s:
        add_job(s, "ftjob-ok", status="succeeded")
        add_job(s, "ftjob-run", status="running", worker_id="w", attempts=1)
        add_job(s, "ftjob-gone", status="cancelled")
    with reg.session() as s:
        with pytest.raises(ConflictError, match="already succeeded"):
            cancel_job(s, "ftjob-ok")
        assert cancel_job(s, "ftjob-gone").status == "cancelled"
        for _ in range(2):
            job = cancel_job(s, "ftjob-run")
        assert job.status == "running" and job.cancel_requested and job.finished_at is None
        with pytest.raises(NotFoundError):
            cancel_job(s, "ftjob-nope")
    with reg.session() as s:
        events, _ = list_events(s, "ftjob-run")
        assert [e.message for e in events] == [
            "cancellation requested; training stops at its next step"
        ]
        assert list_events(s, "ftjob-gone") == ([], False)


def test_events_page_both_ways_and_checkpoints_are_only_checkpoint_events(
    reg: Registry,
) -> None:
    with reg.session() as s:
        add_job(s, "ftjob-e")
        add_job(s, "ftjob-other")
        for i in range(5):
            kind = "checkpoint" if i in (1, 3) else "message"
            add_event(s, "ftjob-e", f"e{i}", type=kind, data={"step": i})
        add_event(s, "ftjob-other", "elsewhere", type="checkpoint")
    with reg.session() as s:
        newest, more = list_events(s, "ftjob-e", limit=2)
        assert [e.message for e in newest] == ["e4", "e3"] and more
        older, more = list_events(s, "ftjob-e", after=newest[-1].id, limit=10)
        assert [e.message for e in older] == ["e2", "e1", "e0"] and not more
        oldest, more = list_events(s, "ftjob-e", limit=2, newest_first=False)
        assert [e.message for e in oldest] == ["e0", "e1"] and more
        later, _ = list_events(s, "ftjob-e", after=oldest[-1].id, newest_first=False)
        assert [e.message for e in later] == ["e2", "e3", "e4"]
        assert [c.message for c in list_checkpoints(s, "ftjob-e")] == ["e3", "e1"]
        with pytest.raises(NotFoundError):
            list_checkpoints(s, "ftjob-nope")
