"""On SQLite a GET takes no write lock: it answers while a writer holds the database, and never
makes writers queue behind readers."""

from __future__ import annotations

import json
import threading
import time

import httpx
from fastapi.testclient import TestClient
from sqlalchemy import text

from services.evaluator.api.app import create_app as evaluator_app
from services.evaluator.config import EvaluatorSettings
from services.trainer.api.app import create_app as trainer_app
from services.trainer.config import TrainerSettings
from shared.registry.db import open_registry
from shared.settings import SharedSettings
from tests.server.fakes import ThreadServer


def test_gets_answer_while_a_writer_holds_the_lock(settings: SharedSettings) -> None:
    trainer = TestClient(trainer_app(TrainerSettings(data_dir=settings.data_dir)))
    evaluator = TestClient(evaluator_app(EvaluatorSettings(data_dir=settings.data_dir)))
    with trainer, evaluator:
        registry = open_registry(settings)
        held, release = threading.Event(), threading.Event()

        def writer() -> None:
            with registry.session() as session:
                session.execute(text("SELECT 1"))  # BEGIN IMMEDIATE: the write lock, held
                held.set()
                release.wait(30)

        thread = threading.Thread(target=writer)
        thread.start()
        try:
            assert held.wait(10)
            started = time.monotonic()
            for client, path in (
                (trainer, "/v1/fine_tuning/jobs"),
                (trainer, "/v1/files"),
                (evaluator, "/v1/evaluations"),
            ):
                assert client.get(path).status_code == 200, path
            # A GET that waited for the lock would take the busy timeout (seconds), not this.
            assert time.monotonic() - started < 2.0
        finally:
            release.set()
            thread.join()
            registry.dispose()


def test_what_a_write_returns_is_committed_before_the_answer(settings: SharedSettings) -> None:
    """The commit runs before the response is sent: a reader that takes no lock, right after the
    200, sees the job (with the commit after the response it often got 404)."""
    app = trainer_app(TrainerSettings(data_dir=settings.data_dir))
    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}
        for i in range(12)
    ]
    data = "\n".join(json.dumps(r) for r in rows).encode()
    server = ThreadServer(app).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            file_id = client.post(
                "/v1/files",
                data={"purpose": "fine-tune"},
                files={"file": ("t.jsonl", data, "application/jsonl")},
            ).json()["id"]
            for _ in range(30):
                job = client.post(
                    "/v1/fine_tuning/jobs",
                    json={"training_file": file_id, "model": "smollm2-135m-instruct"},
                )
                assert job.status_code == 200, job.text
                r = client.get(f"/v1/fine_tuning/jobs/{job.json()['id']}/events")
                assert r.status_code == 200, r.text
    finally:
        server.stop()
