"""`services.evaluator.api.routes`: submit (with the promote scope), status, list, the report in
each format, gate policies, and their errors over HTTP."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from services.evaluator import service
from services.evaluator.api.app import create_app
from services.evaluator.config import EvaluatorSettings
from services.evaluator.schemas import EvaluationCreate
from shared.registry.db import Registry
from shared.registry.models import EvaluationRunRow
from tests.evaluator.helpers import count_rows
from tests.evaluator.helpers import run as synthetic_run


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


# -- without the model: runs made from a request alone --------------------------------------------


def test_the_report_is_served_in_each_format_once_written(
    bare_settings: EvaluatorSettings, bare_registry: Registry, tmp_path: Path
) -> None:
    request = EvaluationCreate(candidate="shop@v1")
    claim = service.create_run(bare_registry, request, None, "eval-rep", "running", owner="w1")
    assert claim is not None
    folder = tmp_path / "attempt-1"
    folder.mkdir()
    (folder / "report.html").write_text("<h1>report</h1>")
    (folder / "result.json").write_text('{"ok": true}')
    result = synthetic_run({"exact_match": [1, 1]})
    service.store_result(bare_registry, claim, result, None, folder / "report.html", {})
    with TestClient(create_app(bare_settings)) as client:
        html = client.get("/v1/evaluations/eval-rep/report")
        assert html.status_code == 200 and html.text == "<h1>report</h1>"
        assert html.headers["content-type"].startswith("text/html")
        as_json = client.get("/v1/evaluations/eval-rep/report", params={"format": "json"})
        assert as_json.json() == {"ok": True}
        assert as_json.headers["content-type"] == "application/json"
        junit = client.get("/v1/evaluations/eval-rep/report", params={"format": "junit"})
        assert junit.status_code == 404 and "junit.xml of eval-rep is missing" in junit.text
        odd = client.get("/v1/evaluations/eval-rep/report", params={"format": "pdf"})
        assert odd.status_code == 422
        listed = client.get("/v1/evaluations").json()["data"]
        assert listed[0]["report_url"] == "/v1/evaluations/eval-rep/report"
        assert listed[0]["results"] is None  # the list leaves results out
        assert client.get("/v1/evaluations/eval-rep").json()["results"] is not None
        assert client.get("/v1/evaluations", params={"limit": 0}).status_code == 422


def test_promote_needs_the_promote_scope_on_the_candidates_adapter(
    bare_settings: EvaluatorSettings,
) -> None:
    keys = [
        {"name": "ci", "key": "ci-key-0123456789abc", "scopes": ["evaluate"]},
        {"name": "rel", "key": "rel-key-0123456789ab", "scopes": ["evaluate", "promote"]},
        {"name": "other", "key": "other-key-0123456789", "scopes": ["evaluate", "promote"]},
        {"name": "shop", "key": "shop-key-0123456789a", "scopes": ["evaluate", "promote"]},
    ]
    keys[2]["adapters"] = ["other-*"]
    keys[3]["adapters"] = ["shop"]
    settings = EvaluatorSettings(data_dir=bare_settings.data_dir, keys=keys)

    def auth(key: object) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    promote = {"candidate": "shop@v1", "promote": "prod"}
    with TestClient(create_app(settings)) as client:
        no_scope = client.post("/v1/evaluations", json=promote, headers=auth(keys[0]["key"]))
        assert no_scope.status_code == 403 and no_scope.json()["error"]["param"] == "promote"
        # Without promote, the same key gets past the scope check (the candidate is unknown).
        plain = client.post(
            "/v1/evaluations", json={"candidate": "shop@v1"}, headers=auth(keys[0]["key"])
        )
        assert plain.status_code == 404
        ok = client.post("/v1/evaluations", json=promote, headers=auth(keys[1]["key"]))
        assert ok.status_code == 404  # past both checks: refused for the unknown candidate
        for body in (promote, {"candidate": "shop:prod"}, {"candidate": "shop"}):
            other = client.post("/v1/evaluations", json=body, headers=auth(keys[2]["key"]))
            assert other.status_code == 403 and other.json()["error"]["param"] == "candidate"
        base = client.post(
            "/v1/evaluations", json={"candidate": "base"}, headers=auth(keys[2]["key"])
        )
        assert base.status_code != 403  # the base model is no adapter
        for name in ("shop@v1", "shop:prod", "shop"):  # the adapter named in each form
            body = {"candidate": name, "promote": "prod"}
            mine = client.post("/v1/evaluations", json=body, headers=auth(keys[3]["key"]))
            assert mine.status_code == 404, mine.text


def test_policies_are_registered_under_the_callers_key_and_read_by_version(
    bare_settings: EvaluatorSettings,
) -> None:
    keys = [{"name": "ops", "key": "ops-key-0123456789abc", "scopes": ["admin"]}]
    settings = EvaluatorSettings(data_dir=bare_settings.data_dir, keys=keys)
    auth = {"Authorization": "Bearer ops-key-0123456789abc"}
    text = "metrics:\n  exact_match: {min: 0.5}\n"
    with TestClient(create_app(settings)) as client:
        first = client.post(
            "/v1/policies", json={"name": "shop-gate", "policy": text}, headers=auth
        )
        assert first.status_code == 201, first.text
        assert (first.json()["actor"], first.json()["version"]) == ("ops", 1)
        mapping = {"metrics": {"exact_match": {"min": 0.7}}}
        second = client.post(
            "/v1/policies", json={"name": "shop-gate", "policy": mapping}, headers=auth
        )
        assert second.json()["version"] == 2
        assert client.get("/v1/policies/shop-gate", headers=auth).json()["version"] == 2
        old = client.get("/v1/policies/shop-gate", params={"version": 1}, headers=auth).json()
        assert old["sha256"] == first.json()["sha256"]
        assert (
            client.get("/v1/policies/shop-gate", params={"version": 0}, headers=auth).status_code
            == 422
        )
        bad = client.post(
            "/v1/policies",
            json={"name": "shop-gate", "policy": "metrics:\n  bleurt: {min: 0.1}\n"},
            headers=auth,
        )
        assert bad.status_code == 422 and "unknown metric 'bleurt'" in bad.text
