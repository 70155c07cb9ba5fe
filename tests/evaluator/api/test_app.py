"""`services.evaluator.api.app`: the scope each route needs, the queue gauges on /metrics, and
the settings it is built from."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.evaluator.api.app import create_app
from services.evaluator.config import EvaluatorSettings
from services.evaluator.runs import create_run
from services.evaluator.schemas import EvaluationCreate
from shared.registry.db import Registry

KEYS = [
    {"name": "reader", "key": "reader-key-0123456789", "scopes": ["read"]},
    {"name": "ci", "key": "ci-key-0123456789abc", "scopes": ["evaluate"]},
    {"name": "ops", "key": "ops-key-0123456789abc", "scopes": ["admin"]},
]
POLICY = {"name": "shop-gate", "policy": "metrics:\n  exact_match: {min: 0.5}\n"}


def _as(name: str) -> dict[str, str]:
    key = next(k["key"] for k in KEYS if k["name"] == name)
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def keyed(bare_settings: EvaluatorSettings) -> Iterator[TestClient]:
    settings = EvaluatorSettings(data_dir=bare_settings.data_dir, keys=KEYS)
    with TestClient(create_app(settings)) as client:
        yield client


def test_each_route_needs_its_scope(keyed: TestClient) -> None:
    assert keyed.get("/health").status_code == 200  # public
    assert keyed.get("/v1/evaluations").status_code == 401
    assert keyed.get("/v1/evaluations", headers=_as("reader")).status_code == 200
    assert keyed.get("/v1/evaluations/eval-x", headers=_as("reader")).status_code == 404
    submit = {"candidate": "ghost@v1"}
    assert keyed.post("/v1/evaluations", json=submit, headers=_as("reader")).status_code == 403
    # evaluate may submit (here refused for the unknown candidate, past the guard) but not read.
    assert keyed.post("/v1/evaluations", json=submit, headers=_as("ci")).status_code == 404
    assert keyed.get("/v1/evaluations", headers=_as("ci")).status_code == 403
    for who in ("reader", "ci"):
        assert keyed.post("/v1/policies", json=POLICY, headers=_as(who)).status_code == 403
    assert keyed.post("/v1/policies", json=POLICY, headers=_as("ops")).status_code == 201
    assert keyed.get("/v1/policies/shop-gate", headers=_as("reader")).status_code == 200
    assert keyed.get("/v1/policies/shop-gate", headers=_as("ci")).status_code == 403


def test_metrics_count_the_evaluation_queue(
    bare_settings: EvaluatorSettings, bare_registry: Registry
) -> None:
    request = EvaluationCreate(candidate="shop@v1")
    for run_id in ("eval-1", "eval-2"):
        create_run(bare_registry, request, None, run_id, "queued")
    create_run(bare_registry, request, None, "eval-3", "running", owner="w1")
    create_run(bare_registry, request, None, "eval-4", "failed")
    with TestClient(create_app(bare_settings)) as client:
        text = client.get("/metrics").text
    assert "loraplex_evaluator_registry_up 1.0" in text
    assert "loraplex_evaluator_queue_depth 2.0" in text
    assert "loraplex_evaluator_jobs_running 1.0" in text


def test_without_settings_the_app_reads_them_from_the_environment(
    bare_settings: EvaluatorSettings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LORAPLEX_DATA_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("LORAPLEX_EVALUATOR_PORT", "9123")
    app = create_app()
    assert isinstance(app.state.settings, EvaluatorSettings)
    assert app.state.settings.data_dir == tmp_path / "elsewhere"
    assert app.state.settings.evaluator_port == 9123
