"""``services.trainer.launch``: a job with ``processes: N`` trains under torchrun (DDP).

The slow test is the promise: on CPU with gloo, two processes train the same global batch as one
process and log the same loss curve (fp32), and both register a version; a run on other batches
(another seed) does not pass the same comparison, so the comparison can fail.

Tolerance: every logged loss within a relative 1e-3 of the one-process run. Two processes see
the same examples per optimizer step (each half of them) and normalise the loss over all the
step's tokens (transformers counts them across ranks), so the gradient is mathematically the
one-process gradient; what differs is summation order (micro-batch shapes, the gloo all-reduce).
fp32's unit roundoff is 6e-8, and reordering a sum of n terms moves it by at most about n
roundoffs relative to the sum of magnitudes: for the few thousand terms of a loss or gradient
component that is below 1e-4, ten times under the tolerance, and far less in practice (errors of
random sign grow like sqrt(n)). Adam's first updates are g/(|g|+eps), which a relative change of
g moves by the same relative amount, so the few steps here do not amplify it. Batches of other
examples, by contrast, differ in loss by the spread of per-example losses over a batch, which on
this data is percent-level (the control shows it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from services.trainer.config import TrainerSettings
from services.trainer.launch import (
    ATTEMPT_ENV,
    ERRORS_ENV,
    SETTINGS_ENV,
    WORKER_ENV,
    RankGroup,
    RankReporter,
    rank_command,
    rank_environment,
)
from services.trainer.schemas import JobSpec
from services.trainer.statuses import JobStatus
from shared.registry.adapters import get_version
from shared.registry.db import open_registry
from shared.registry.models import JobEventRow, TrainingJobRow
from tests.trainer.conftest import order_chat, write_jsonl

# Relative tolerance on each logged loss: see the module docstring for why it holds.
LOSS_RTOL = 1e-3


def test_ranks_start_under_torchrun_with_the_job_id() -> None:
    command = rank_command("ftjob-1", 4, python="/usr/bin/python3")
    assert command[:3] == ["/usr/bin/python3", "-m", "torch.distributed.run"]
    assert "--standalone" in command and "--nproc-per-node=4" in command
    assert command[-3:] == ["-m", "services.trainer.launch", "ftjob-1"]


def test_ranks_get_the_workers_settings_and_one_thread_each(tmp_path: Path) -> None:
    settings = TrainerSettings(data_dir=tmp_path, database_url="sqlite:///x.db", torch_threads=2)
    env = rank_environment(settings, worker_id="w-1", attempt=3, errors=tmp_path / "ranks")
    given = TrainerSettings(**json.loads(env[SETTINGS_ENV]))
    assert given.data_dir == tmp_path and given.database_url == "sqlite:///x.db"
    assert given.torch_threads == 1 and env["OMP_NUM_THREADS"] == "1"
    assert (env[WORKER_ENV], env[ATTEMPT_ENV], env[ERRORS_ENV]) == (
        "w-1",
        "3",
        str(tmp_path / "ranks"),
    )


def test_other_ranks_report_nothing_and_never_stop_on_their_own() -> None:
    reporter = RankReporter(1)
    reporter.event("step 1", data={"train_loss": 1.0})
    reporter.phase("running")
    assert reporter.should_stop() is None


def test_cancel_kills_every_process_of_the_group(tmp_path: Path) -> None:
    # A stand-in group: a parent that starts a child in the same session, both sleeping.
    script = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); time.sleep(600)"
    process = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    group = RankGroup(process, tmp_path)
    time.sleep(1.0)
    members = _group_members(process.pid)
    assert len(members) >= 2
    group.kill()
    assert group.poll() is not None
    deadline = time.monotonic() + 10
    while _group_members(process.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _group_members(process.pid)


def _group_members(pgid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def test_a_failing_rank_leaves_its_error_for_the_worker(tmp_path: Path) -> None:
    group = RankGroup(subprocess.Popen([sys.executable, "-c", "pass"]), tmp_path)
    (tmp_path / "rank-1.json").write_text(json.dumps({"rank": 1, "error": "OSError: disk"}))
    (tmp_path / "rank-0.json").write_text(json.dumps({"rank": 0, "error": "KeyError: x"}))
    assert [e["rank"] for e in group.rank_errors()] == [0, 1]
    group.process.wait()


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"processes": 0}, "greater than or equal to 1"),
        ({"processes": len(os.sched_getaffinity(0)) + 1}, "usable cores"),
        ({"processes": 2, "method": {"type": "dpo"}}, "'supervised' only"),
        ({"processes": 2, "lora": {"quantization": "nf4"}}, "QLoRA"),
        ({"processes": 2, "hyperparameters": {"batch_size": 3}}, "do not divide the batch size"),
    ],
)
def test_bad_processes_are_refused_naming_the_field(fields: dict[str, Any], why: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as caught:
        JobSpec(training_file="file-x", **fields)
    errors = caught.value.errors()
    assert errors[0]["loc"] == ("processes",) and why in errors[0]["msg"]


def test_processes_default_to_one_and_accept_a_divisor_of_the_batch() -> None:
    assert JobSpec(training_file="file-x").processes == 1
    if len(os.sched_getaffinity(0)) >= 2:
        spec = JobSpec(training_file="file-x", processes=2, hyperparameters={"batch_size": 4})
        assert spec.processes == 2


# -- the promise ---------------------------------------------------------------------------------
def _spec(training_file: str, *, processes: int, seed: int) -> JobSpec:
    return JobSpec.model_validate(
        {
            "training_file": training_file,
            "suffix": f"ddp-p{processes}-s{seed}",
            "seed": seed,
            "processes": processes,
            "method": {
                "type": "supervised",
                "supervised": {
                    "hyperparameters": {
                        "batch_size": 4,
                        "micro_batch_size": 2,
                        "n_epochs": 1,
                        "max_steps": 3,
                        "max_length": 128,
                        "logging_steps": 1,
                        "save_steps": 3,
                        "learning_rate": 1e-3,
                        "precision": "fp32",
                        # Random batch order, the same on 1 and N processes (length grouping
                        # builds its groups from the per-process batch size).
                        "batching": "padded",
                    }
                },
            },
            # Dropout draws different masks per process: the curves would agree only on average.
            "lora": {"r": 4, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
            "data": {"validation_fraction": 0.0},
        }
    )


def _train(settings: TrainerSettings, spec: JobSpec) -> tuple[list[list[float]], str]:
    """Create the job, let a worker run it; its loss curve and version id."""
    from services.trainer.jobs import create_job
    from services.trainer.worker import Worker

    worker = Worker(settings)
    try:
        with worker.registry.session() as session:
            job_id = create_job(session, settings, spec).id
        assert worker.claim(only=job_id) == job_id
        started = time.monotonic()
        worker.process(job_id)
        print(f"{spec.processes} process(es), seed {spec.seed}: {time.monotonic() - started:.0f} s")
        with worker.registry.session() as session:
            row = session.get(TrainingJobRow, job_id)
            assert row is not None
            events = [e.message for e in session.query(JobEventRow).filter_by(job_id=job_id)]
            assert row.status == JobStatus.SUCCEEDED, (row.error, events[-5:])
            if spec.processes > 1:
                assert f"training in {spec.processes} processes (torchrun, DDP)" in events
            assert row.result_version_id is not None
            version = get_version(session, row.result_version_id)
            manifest = version.manifest
        return manifest["loss_curve"], row.result_version_id
    finally:
        worker.registry.dispose()


def _upload(settings: TrainerSettings, path: Path) -> str:
    from services.trainer.files import create_file

    registry = open_registry(settings)
    try:
        with registry.session() as session:
            return create_file(
                session, settings, filename=path.name, purpose="fine-tune", path=path
            ).id
    finally:
        registry.dispose()


def _worst_relative_gap(a: list[list[float]], b: list[list[float]]) -> float:
    assert [step for step, _ in a] == [step for step, _ in b]
    return max(abs(x - y) / abs(x) for (_, x), (_, y) in zip(a, b, strict=True))


@pytest.mark.slow
def test_two_processes_train_the_one_process_loss_curve(
    trainer_model_settings: TrainerSettings, tmp_path: Path
) -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two usable cores")
    settings = trainer_model_settings
    train = _upload(
        settings, write_jsonl(tmp_path / "orders.jsonl", [order_chat(i) for i in range(16)])
    )

    one, one_version = _train(settings, _spec(train, processes=1, seed=7))
    two, two_version = _train(settings, _spec(train, processes=2, seed=7))
    assert len(one) == 3 and one_version != two_version
    gap = _worst_relative_gap(one, two)
    print(f"1 process {one}\n2 processes {two}\nworst relative gap {gap:.2e}")
    assert gap <= LOSS_RTOL, f"1 process {one} vs 2 processes {two}"

    # The control: the same run on other batches (another seed) fails the same comparison.
    other, _ = _train(settings, _spec(train, processes=1, seed=8))
    print(f"control (seed 8) {other}: gap {_worst_relative_gap(one, other):.2e}")
    assert _worst_relative_gap(one, other) > LOSS_RTOL, f"{one} vs {other}"
