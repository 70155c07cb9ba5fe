"""The trainer as a service, in separate processes: the official openai SDK drives a full SFT job;
a worker killed with SIGKILL mid-job is replaced and the job resumes from its checkpoint and ends
with exactly one adapter version; a cancel stops training and keeps nothing."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from services.trainer.config import TrainerSettings
from shared.artifacts import open_store
from shared.registry.adapters import list_versions
from shared.registry.db import open_registry
from shared.registry.models import TrainingJobRow
from tests.trainer.conftest import tiny_hyperparameters

REPO = Path(__file__).resolve().parents[2]
BASE = "smollm2-135m-instruct"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Processes:
    """Child processes of one test; all of them are killed at the end, by pid."""

    def __init__(self, settings: TrainerSettings, log_dir: Path) -> None:
        self.env = {
            **os.environ,
            "LORAPLEX_DATA_DIR": str(settings.data_dir),
            "LORAPLEX_WORKER_HEARTBEAT_S": "0.5",
            "LORAPLEX_WORKER_STALE_S": "4",
            "LORAPLEX_WORKER_POLL_S": "0.5",
            "LORAPLEX_TORCH_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
        }
        self.log_dir = log_dir
        self.children: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, *args: str, **env: str) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"{name}-{len(self.children)}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, *args], cwd=REPO, env={**self.env, **env}, stdout=log, stderr=log
        )
        self.children.append(proc)
        return proc

    def worker(self) -> subprocess.Popen[bytes]:
        return self.start("worker", "-m", "services.trainer.worker")

    def api(self) -> str:
        port = free_port()
        self.start("api", "-m", "services.trainer.api.app", LORAPLEX_TRAINER_PORT=str(port))
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _healthy(url), 60, "trainer API to start")
        return url

    def close(self) -> None:
        for proc in self.children:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)

    def logs(self) -> str:
        return "\n".join(p.read_text()[-3000:] for p in sorted(self.log_dir.glob("*.log")))


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def procs(trainer_model_settings: TrainerSettings, tmp_path: Path) -> Iterator[Processes]:
    p = Processes(trainer_model_settings, tmp_path)
    try:
        yield p
    finally:
        p.close()


def job_row(settings: TrainerSettings, job_id: str) -> TrainingJobRow:
    registry = open_registry(settings)
    try:
        with registry.session() as s:
            row = s.get(TrainingJobRow, job_id)
            assert row is not None
            s.expunge(row)
            return row
    finally:
        registry.dispose()


@pytest.mark.slow
def test_openai_sdk_drives_a_full_sft_job(
    procs: Processes, trainer_model_settings: TrainerSettings, sft_file: Path
) -> None:
    import openai

    url = procs.api()
    procs.worker()
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="not-needed", max_retries=0)
    with sft_file.open("rb") as fh:
        uploaded = client.files.create(file=fh, purpose="fine-tune")
    assert uploaded.id.startswith("file-") and uploaded.filename == "sft.jsonl"
    assert [f.id for f in client.files.list()] == [uploaded.id]
    job = client.fine_tuning.jobs.create(
        model=BASE,
        training_file=uploaded.id,
        # Our extra hyperparameters (max_steps, ...) ride along in the same dict.
        method=cast(
            Any,
            {"type": "supervised", "supervised": {"hyperparameters": tiny_hyperparameters()}},
        ),
        suffix="sdk",
        seed=11,
        metadata={"ticket": "42"},
        extra_body={"lora": {"r": 8, "lora_alpha": 16}},
    )
    assert job.status == "validating_files" and job.seed == 11
    final = wait_for(
        lambda: (
            (j := client.fine_tuning.jobs.retrieve(job.id)).status
            in ("succeeded", "failed", "cancelled")
            and j
        ),
        600,
        "the job to finish",
    )
    assert final.status == "succeeded", (final.error, procs.logs())
    assert final.fine_tuned_model == "sdk@v1" and final.finished_at is not None
    assert [j.id for j in client.fine_tuning.jobs.list()] == [job.id]

    events = list(client.fine_tuning.jobs.list_events(job.id, limit=5))  # auto-paginates
    messages = [e.message for e in events]
    assert any(m.startswith("fine-tuned adapter registered as sdk@v1") for m in messages)
    metrics = [dict(cast(Any, e.data)) for e in events if e.type == "metrics" and e.data]
    metrics = [m for m in metrics if "train_loss" in m]
    assert metrics and {"learning_rate", "tokens_per_second", "progress", "eta_seconds"} <= set(
        metrics[0]
    )
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert checkpoints and checkpoints[0].step_number == 2
    with pytest.raises(openai.ConflictError):
        client.fine_tuning.jobs.cancel(job.id)

    # The registered adapter is a standard PEFT folder: peft loads it on the base and generates.
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    registry = open_registry(trainer_model_settings)
    with registry.session() as s:
        (version,) = list_versions(s, "sdk")
        folder = open_store(trainer_model_settings).get_dir(version.sha256)
    registry.dispose()
    base_dir = trainer_model_settings.models_dir / BASE
    model: Any = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), folder
    )
    tok = AutoTokenizer.from_pretrained(base_dir)
    ids: Any = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]


def _upload_and_create(url: str, path: Path, hyperparameters: dict[str, Any], suffix: str) -> str:
    with path.open("rb") as fh:
        file_id = httpx.post(
            f"{url}/v1/files", files={"file": (path.name, fh)}, data={"purpose": "fine-tune"}
        ).json()["id"]
    body = {
        "model": BASE,
        "training_file": file_id,
        "suffix": suffix,
        "method": {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
    }
    resp = httpx.post(f"{url}/v1/fine_tuning/jobs", json=body)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["id"])


def _events(url: str, job_id: str) -> list[dict[str, Any]]:
    resp = httpx.get(f"{url}/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 1000})
    return list(reversed(resp.json()["data"]))


@pytest.mark.slow
def test_kill_9_worker_resumes_from_checkpoint_with_one_version(
    procs: Processes, trainer_model_settings: TrainerSettings, sft_file: Path
) -> None:
    url = procs.api()
    job_id = _upload_and_create(
        url, sft_file, tiny_hyperparameters(max_steps=4, save_steps=2), "resumed"
    )
    first = procs.worker()
    wait_for(
        lambda: any(
            (e.get("data") or {}).get("kind") == "checkpoint" for e in _events(url, job_id)
        ),
        600,
        "the first checkpoint",
    )
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    assert job_row(trainer_model_settings, job_id).status == "running"
    procs.worker()
    wait_for(
        lambda: job_row(trainer_model_settings, job_id).status in ("succeeded", "failed"),
        600,
        "the resumed job to finish",
    )
    row = job_row(trainer_model_settings, job_id)
    assert row.status == "succeeded", (row.error, procs.logs())
    assert row.attempts == 2 and row.result_version_id == "resumed@v1"
    messages = [e["message"] for e in _events(url, job_id)]
    assert any("taking over from" in m for m in messages)
    assert any(m.startswith("resuming from checkpoint-") for m in messages)
    registry = open_registry(trainer_model_settings)
    with registry.session() as s:
        (version,) = list_versions(s, "resumed")
        steps = [step for step, _ in version.manifest["loss_curve"]]
    registry.dispose()
    assert steps == [1, 2, 3, 4]
    assert not (trainer_model_settings.work_dir / job_id).exists()


@pytest.mark.slow
def test_cancel_stops_at_the_next_step_and_keeps_nothing(
    procs: Processes, trainer_model_settings: TrainerSettings, sft_file: Path
) -> None:
    url = procs.api()
    job_id = _upload_and_create(
        url, sft_file, tiny_hyperparameters(max_steps=40, save_steps=1), "cancelled"
    )
    procs.worker()
    wait_for(
        lambda: any(e["type"] == "metrics" for e in _events(url, job_id)), 600, "training to start"
    )
    resp = httpx.post(f"{url}/v1/fine_tuning/jobs/{job_id}/cancel")
    assert resp.status_code == 200 and resp.json()["cancel_requested"]
    wait_for(
        lambda: job_row(trainer_model_settings, job_id).status == "cancelled", 300, "cancellation"
    )
    steps = [e["data"]["step"] for e in _events(url, job_id) if e["type"] == "metrics"]
    assert max(steps) < 40
    assert not (trainer_model_settings.work_dir / job_id).exists()
    registry = open_registry(trainer_model_settings)
    with registry.session() as s:
        assert list_versions(s, "cancelled") == []
    registry.dispose()
    assert (
        json.loads(httpx.get(f"{url}/v1/fine_tuning/jobs/{job_id}").text)["fine_tuned_model"]
        is None
    )
