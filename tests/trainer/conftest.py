"""Fixtures for the trainer: settings on a temporary data dir, the API client, tiny datasets,
registry jobs without a model, and the service run as child processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from fastapi.testclient import TestClient

from services.trainer.config import TrainerSettings
from services.trainer.jobs import add_event
from shared.registry.models import TrainingJobRow
from shared.settings import SharedSettings

if TYPE_CHECKING:
    from services.trainer.worker import Worker

REPO = Path(__file__).resolve().parents[2]
BASE = "smollm2-135m-instruct"

SYSTEM = "Extract the order as JSON with keys name, item, quantity, color, size, city."


def order_chat(i: int) -> dict[str, Any]:
    names = [
        "Ana Diaz",
        "Bo Chen",
        "Cy Park",
        "Di Ross",
        "Ed Moss",
        "Flo Hart",
        "Gus Lind",
        "Hal Roe",
    ]
    cities = ["Oslo", "Lima", "Rome", "Kyiv", "Baku", "Doha", "Riga", "Bern"]
    name, city, qty = names[i % 8], cities[(i * 3) % 8], i % 5 + 1
    answer = {
        "name": name,
        "item": "mug",
        "quantity": qty,
        "color": "red",
        "size": None,
        "city": city,
    }
    return {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"{name} from {city} wants {qty} red mugs."},
            {"role": "assistant", "content": json.dumps(answer)},
        ]
    }


def order_pair(i: int) -> dict[str, Any]:
    chat = order_chat(i)
    good = chat["messages"][2]["content"]
    return {
        "prompt": chat["messages"][:2],
        "chosen": good,
        "rejected": good.replace('"mug"', '"cup"'),
    }


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def sft_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "sft.jsonl", [order_chat(i) for i in range(10)])


@pytest.fixture
def dpo_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "dpo.jsonl", [order_pair(i) for i in range(10)])


@pytest.fixture
def trainer_settings(settings: SharedSettings) -> TrainerSettings:
    return TrainerSettings(data_dir=settings.data_dir, max_upload_bytes=20_000)


@pytest.fixture
def trainer_model_settings(model_settings: SharedSettings) -> Iterator[TrainerSettings]:
    """Trainer settings whose data dir holds the prepared embedded model."""
    import torch

    threads = torch.get_num_threads()
    # One torch thread: the test machine is shared, and an oversubscribed 2-thread OpenMP pool
    # runs about 10x slower than one thread. Restored afterwards for other tests in the session.
    yield TrainerSettings(
        data_dir=model_settings.data_dir,
        worker_heartbeat_s=0.5,
        worker_stale_s=3,
        torch_threads=1,
    )
    torch.set_num_threads(threads)


@pytest.fixture
def client(trainer_settings: TrainerSettings) -> Iterator[TestClient]:
    from services.trainer.api.app import create_app

    with TestClient(create_app(trainer_settings)) as c:
        yield c


def tiny_hyperparameters(**extra: Any) -> dict[str, Any]:
    return {
        "max_steps": 2,
        "batch_size": 2,
        "max_length": 256,
        "logging_steps": 1,
        "save_steps": 2,
        **extra,
    }


class RecordingReporter:
    """Collects events; can be told to stop after a number of metric events."""

    def __init__(self, stop_after_metrics: int | None = None) -> None:
        self.events: list[dict[str, Any]] = []
        self.stop_after_metrics = stop_after_metrics
        self.phases: list[str] = []

    def event(
        self, message: str, *, level: str = "info", type: str = "message", data: Any = None
    ) -> None:
        self.events.append({"message": message, "level": level, "type": type, "data": data})

    def should_stop(self) -> str | None:
        metrics = sum(1 for e in self.events if e["type"] == "metrics")
        if self.stop_after_metrics is not None and metrics >= self.stop_after_metrics:
            return "cancelled"
        return None

    def phase(self, status: str) -> None:
        self.phases.append(status)


def run_in_process(
    settings: TrainerSettings,
    spec: dict[str, Any],
    train: Path,
    *,
    validation: Path | None = None,
    adapter_name: str = "test-adapter",
    reporter: RecordingReporter | None = None,
    work: Path | None = None,
) -> tuple[Any, RecordingReporter]:
    """Run the spec's recipe in this process, registering into ``settings``' registry."""
    from services.trainer.adapters import store_and_register
    from services.trainer.files import DataFile
    from services.trainer.methods import get_method
    from services.trainer.recipes.context import RecipeContext
    from services.trainer.schemas import JobSpec

    job = JobSpec.model_validate({"training_file": str(train), **spec})
    reporter = reporter or RecordingReporter()
    base_dir, lineage = None, None
    if job.base_adapter:
        from shared.artifacts import open_store
        from shared.registry.adapters import get_version
        from shared.registry.db import open_registry

        registry = open_registry(settings)
        with registry.session() as s:
            version = get_version(s, job.base_adapter)
            base_dir = open_store(settings).get_dir(version.sha256)
            lineage = {"id": version.id, "sha256": version.sha256}
        registry.dispose()
    ctx = RecipeContext(
        spec=job,
        settings=settings,
        train_file=DataFile(train, train.name),
        validation_file=DataFile(validation, validation.name) if validation else None,
        output_dir=work or settings.data_dir / "work" / adapter_name,
        reporter=reporter,
        register=lambda folder, manifest, base: store_and_register(
            settings, folder, manifest, base, adapter_name
        ),
        adapter_name=adapter_name,
        base_adapter_dir=base_dir,
        base_adapter_lineage=lineage,
    )
    ctx.output_dir.mkdir(parents=True, exist_ok=True)
    return get_method(job.method.type).load_recipe()(ctx), reporter


@pytest.fixture
def tsettings(registry_settings: SharedSettings) -> TrainerSettings:
    return TrainerSettings(
        data_dir=registry_settings.data_dir,
        database_url=registry_settings.database_url,
        worker_stale_s=30,
        max_attempts=2,
    )


def make_jobs(worker: Worker, n: int) -> list[str]:
    ids = [f"ftjob-test{i:03d}" for i in range(n)]
    with worker.registry.session() as s:
        for job_id in ids:
            s.add(
                TrainingJobRow(
                    id=job_id,
                    status="validating_files",
                    base_model="smollm2-135m-instruct",
                    adapter_name="t",
                    training_file="file-x",
                    config={"training_file": "file-x"},
                )
            )
            s.flush()
            add_event(s, job_id, "created")
    return ids


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
