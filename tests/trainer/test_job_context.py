"""``services.trainer.job_context``: a claimed job as its recipe's context (stored data files with
their lineage, the adapter it continues from, its scratch folder), and the ``register`` that marks
the job succeeded in the transaction that registers its version, or rolls both back."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.trainer.adapters import store_and_register
from services.trainer.config import TrainerSettings
from services.trainer.files import create_file
from services.trainer.job_context import job_context, registrar
from services.trainer.job_reporter import CLAIM_LOST
from services.trainer.recipes.context import Stopped
from shared.basemodel import ResolvedBaseModel
from shared.errors import NotFoundError, ValidationError
from shared.registry.adapters import list_versions
from shared.registry.db import Registry, open_registry
from shared.registry.models import JobEventRow, TrainingJobRow
from shared.settings import SharedSettings
from tests.trainer.conftest import BASE, RecordingReporter


@pytest.fixture
def tset(settings: SharedSettings) -> TrainerSettings:
    return TrainerSettings(data_dir=settings.data_dir)


@pytest.fixture
def reg(tset: TrainerSettings) -> Iterator[Registry]:
    registry = open_registry(tset)
    yield registry
    registry.dispose()


@pytest.fixture
def base(tmp_path: Path) -> ResolvedBaseModel:
    return ResolvedBaseModel(name=BASE, path=tmp_path / "base", weights_sha256="a" * 64, source="t")


def adapter_folder(path: Path, weights: bytes = b"w") -> Path:
    path.mkdir()
    (path / "adapter_config.json").write_text(json.dumps({"r": 4}))
    (path / "adapter_model.safetensors").write_bytes(weights)
    return path


def add_job(reg: Registry, config: dict[str, Any], **extra: Any) -> TrainingJobRow:
    fields: dict[str, Any] = {
        "id": "ftjob-c",
        "status": "running",
        "base_model": BASE,
        "adapter_name": "shop",
        "training_file": config["training_file"],
        "validation_file": config.get("validation_file"),
        "config": config,
        "cancel_requested": False,
    }
    row = TrainingJobRow(**(fields | extra))
    with reg.session() as s:
        s.add(row)
        s.flush()
        s.expunge(row)
    return row


def upload(reg: Registry, tset: TrainerSettings, sft_file: Path, name: str) -> tuple[str, str]:
    with reg.session() as s:
        row = create_file(s, tset, filename=name, purpose="fine-tune", path=sft_file)
        return row.id, row.sha256


def never(*args: Any) -> str:
    raise AssertionError("register is not called here")


def test_a_job_becomes_its_recipes_context(
    reg: Registry, tset: TrainerSettings, sft_file: Path, base: ResolvedBaseModel, tmp_path: Path
) -> None:
    train_id, train_sha = upload(reg, tset, sft_file, "train.jsonl")
    valid_id, _ = upload(reg, tset, sft_file, "valid.jsonl")
    previous = store_and_register(tset, adapter_folder(tmp_path / "prev"), {}, base, "shop")
    config = {
        "training_file": train_id,
        "validation_file": valid_id,
        "base_adapter": previous,
        "seed": 3,
    }
    job = add_job(reg, config)
    reporter = RecordingReporter()
    ctx = job_context(tset, reg, job, reporter, never)
    assert (ctx.train_file.file_id, ctx.train_file.sha256) == (train_id, train_sha)
    assert ctx.train_file.name == "train.jsonl" and ctx.train_file.path.is_file()
    assert ctx.validation_file is not None and ctx.validation_file.file_id == valid_id
    assert ctx.spec.seed == 3 and ctx.adapter_name == "shop" and ctx.job_id == "ftjob-c"
    assert ctx.output_dir == tset.work_dir / "ftjob-c" and ctx.output_dir.is_dir()
    assert ctx.base_adapter_lineage is not None and ctx.base_adapter_lineage["id"] == previous
    assert ctx.base_adapter_dir is not None
    assert (ctx.base_adapter_dir / "adapter_config.json").is_file()
    assert ctx.reporter is reporter and ctx.register is never


def test_a_job_without_a_validation_file_or_base_adapter(
    reg: Registry, tset: TrainerSettings, sft_file: Path
) -> None:
    train_id, _ = upload(reg, tset, sft_file, "train.jsonl")
    ctx = job_context(
        tset, reg, add_job(reg, {"training_file": train_id}), RecordingReporter(), never
    )
    assert ctx.validation_file is None
    assert ctx.base_adapter_dir is None and ctx.base_adapter_lineage is None


def test_a_stored_spec_is_checked_again(reg: Registry, tset: TrainerSettings) -> None:
    # Queued before target_modules was checked at creation: refused before peft sees it.
    job = add_job(reg, {"training_file": "file-x", "lora": {"target_modules": ".*proj"}})
    with pytest.raises(ValidationError) as caught:
        job_context(tset, reg, job, RecordingReporter(), never)
    assert caught.value.param == "lora.target_modules"
    assert not (tset.work_dir / "ftjob-c").exists()
    missing = add_job(reg, {"training_file": "file-gone"}, id="ftjob-d")
    with pytest.raises(NotFoundError) as gone:
        job_context(tset, reg, missing, RecordingReporter(), never)
    assert gone.value.param == "training_file"


def test_a_stored_spec_this_worker_cannot_train_is_a_user_error(
    reg: Registry, tset: TrainerSettings
) -> None:
    import os

    too_many = len(os.sched_getaffinity(0)) + 1
    job = add_job(reg, {"training_file": "file-x", "processes": too_many})
    with pytest.raises(ValidationError) as caught:
        job_context(tset, reg, job, RecordingReporter(), never)
    assert caught.value.param == "processes" and "usable cores" in caught.value.message


class Fence:
    """A stand-in for Worker.guarded_update: records the writes, holds the claim or not."""

    def __init__(self, holds: bool = True) -> None:
        self.holds = holds
        self.calls: list[dict[str, Any]] = []

    def __call__(self, session: Session, job_id: str, **values: Any) -> bool:
        self.calls.append(values)
        if self.holds:
            job = session.get(TrainingJobRow, job_id)
            assert job is not None
            for key, value in values.items():
                setattr(job, key, value)
        return self.holds


def test_register_marks_the_job_succeeded_with_its_version(
    reg: Registry, tset: TrainerSettings, base: ResolvedBaseModel, tmp_path: Path
) -> None:
    add_job(reg, {"training_file": "file-x"})
    fence = Fence()
    register = registrar(tset, "ftjob-c", "shop", fence)
    manifest = {"trained_tokens": 99, "metrics": {"train_loss": 0.5}}
    assert register(adapter_folder(tmp_path / "a"), manifest, base) == "shop@v1"
    assert fence.calls[0]["status"] == "succeeded"
    assert fence.calls[0]["result_version_id"] == "shop@v1"
    with reg.session() as s:
        job = s.get(TrainingJobRow, "ftjob-c")
        assert job is not None and job.status == "succeeded" and job.finished_at is not None
        (version,) = list_versions(s, "shop")
        assert version.job_id == "ftjob-c"
        event = s.scalars(select(JobEventRow).where(JobEventRow.type == "result")).one()
        assert event.message == "fine-tuned adapter registered as shop@v1"
        assert event.data["trained_tokens"] == 99 and event.data["progress"] == 100.0
    # The same content again (a second worker finishing the same job) says so.
    with reg.session() as s:
        job = s.get(TrainingJobRow, "ftjob-c")
        assert job is not None
        job.status = "running"
    assert register(adapter_folder(tmp_path / "b"), manifest, base) == "shop@v1"
    with reg.session() as s:
        messages = list(s.scalars(select(JobEventRow.message).where(JobEventRow.type == "result")))
    assert messages[-1].endswith("(identical content was already registered)")


@pytest.mark.parametrize(
    ("cancelled", "holds", "reason"),
    [
        (True, True, "cancelled"),
        (False, False, CLAIM_LOST),
    ],
)
def test_a_cancel_or_a_lost_claim_rolls_the_registration_back(
    reg: Registry,
    tset: TrainerSettings,
    base: ResolvedBaseModel,
    tmp_path: Path,
    cancelled: bool,
    holds: bool,
    reason: str,
) -> None:
    add_job(reg, {"training_file": "file-x"}, cancel_requested=cancelled)
    register = registrar(tset, "ftjob-c", "shop", Fence(holds))
    with pytest.raises(Stopped) as caught:
        register(adapter_folder(tmp_path / "a"), {}, base)
    assert caught.value.reason == reason
    with reg.session() as s:
        assert list_versions(s, "shop") == []
        job = s.get(TrainingJobRow, "ftjob-c")
        assert job is not None and job.status == "running" and job.result_version_id is None
        assert s.scalars(select(JobEventRow).where(JobEventRow.type == "result")).all() == []
