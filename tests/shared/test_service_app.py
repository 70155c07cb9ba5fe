"""The service skeleton: /health, and /metrics whose queue gauges are read from the registry."""

from __future__ import annotations

from datetime import timedelta

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from shared.errors import LoraplexError
from shared.registry.db import Registry
from shared.registry.models import EvaluationRunRow, TrainingJobRow, utcnow
from shared.service_app import QueueSpec, create_service_app
from shared.settings import SharedSettings

SPEC = QueueSpec(
    "trainer", TrainingJobRow, waiting=("validating_files", "queued"), running=("running",)
)


def _scrape(client: TestClient) -> dict[str, float]:
    resp = client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(resp.text)
        for sample in family.samples
    }


def _job(job_id: str, status: str, age_s: float = 0.0) -> TrainingJobRow:
    return TrainingJobRow(
        id=job_id,
        status=status,
        base_model="smollm2-135m-instruct",
        adapter_name="a",
        training_file="file-1",
        created_at=utcnow() - timedelta(seconds=age_s),
    )


def _app(settings: SharedSettings, spec: QueueSpec = SPEC) -> TestClient:
    return TestClient(create_service_app("t", settings, routers=[], queue=spec))


def test_queue_depth_counts_only_waiting_jobs(
    registry: Registry, registry_settings: SharedSettings
) -> None:
    with registry.session() as s:
        s.add_all(
            [
                _job("j1", "validating_files", age_s=120),
                _job("j2", "queued", age_s=30),
                _job("j3", "running"),
                _job("j4", "succeeded", age_s=999),
                _job("j5", "failed"),
            ]
        )
    with _app(registry_settings) as client:
        assert client.get("/health").json() == {"status": "ok"}
        samples = _scrape(client)
    assert samples["loraplex_trainer_queue_depth"] == 2
    assert samples["loraplex_trainer_jobs_running"] == 1
    assert samples["loraplex_trainer_registry_up"] == 1
    # The oldest waiting job is j1 (two minutes); a finished older job does not count.
    assert 110 < samples["loraplex_trainer_oldest_waiting_seconds"] < 600


def test_empty_queue_and_evaluator_prefix(settings: SharedSettings) -> None:
    spec = QueueSpec("evaluator", EvaluationRunRow, waiting=("queued",), running=("running",))
    with _app(settings, spec) as client:
        samples = _scrape(client)
    assert samples["loraplex_evaluator_queue_depth"] == 0
    assert samples["loraplex_evaluator_oldest_waiting_seconds"] == 0


def test_scrape_answers_when_the_database_is_gone(settings: SharedSettings) -> None:
    client = _app(settings)
    with client:
        client.app.state.registry.dispose()  # type: ignore[attr-defined]
        registry_path = settings.data_dir / "registry.db"
        registry_path.unlink()
        registry_path.mkdir()  # an unopenable database file
        samples = _scrape(client)
        registry_path.rmdir()
    assert samples["loraplex_trainer_registry_up"] == 0
    assert "loraplex_trainer_queue_depth" not in samples


def test_errors_are_installed(settings: SharedSettings) -> None:
    from fastapi import APIRouter

    router = APIRouter()

    @router.get("/boom")
    def boom() -> None:
        raise LoraplexError("bad thing", param="x")

    app = create_service_app("t", settings, routers=[router], queue=SPEC)
    with TestClient(app) as client:
        resp = client.get("/boom")
    assert resp.status_code >= 400
    assert "bad thing" in resp.text
