"""`services.evaluator.api.routes`: submit, status, report and their errors over HTTP."""

from __future__ import annotations

from services.evaluator.config import EvaluatorSettings
from shared.registry.db import Registry
from shared.registry.models import EvaluationRunRow
from tests.evaluator.helpers import count_rows


def test_api_submit_status_report_and_errors(
    ev_settings: EvaluatorSettings, ev_registry: Registry, adapter_v1: str
) -> None:
    from fastapi.testclient import TestClient

    from services.evaluator.api.app import create_app

    with TestClient(create_app(ev_settings)) as client:
        assert client.get("/health").json() == {"status": "ok"}
        bad = client.post("/v1/evaluations", json={"candidate": "ghost@v1"})
        assert bad.status_code == 404
        assert bad.json()["error"]["param"] == "candidate"
        typo = client.post("/v1/evaluations", json={"candidate": adapter_v1, "sute": "x"})
        assert typo.status_code == 422
        assert count_rows(ev_registry, EvaluationRunRow) == 0
        made = client.post("/v1/evaluations", json={"candidate": adapter_v1, "limit": 3})
        assert made.status_code == 201, made.text
        body = made.json()
        assert body["status"] == "queued" and body["candidate"] == adapter_v1
        got = client.get(f"/v1/evaluations/{body['id']}").json()
        assert got["progress"] == 0.0 and got["baseline"] == "smollm2-135m-instruct"
        assert client.get(f"/v1/evaluations/{body['id']}/report").status_code == 404
        assert client.get("/v1/evaluations/nope").status_code == 404
        assert [r["id"] for r in client.get("/v1/evaluations").json()["data"]] == [body["id"]]
