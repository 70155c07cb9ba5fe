"""`shared.http`: errors answered as JSON with their status, Retry-After when there is one, and a
request that fails validation as one error naming each field."""

from __future__ import annotations

import json

from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel

from shared.errors import NotFoundError, RateLimited
from shared.http import error_response_parts, install_error_handlers


class Body(BaseModel):
    name: str
    count: int


def _app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/things")
    def make(body: Body) -> dict[str, str]:
        raise NotFoundError(f"no {body.name}", param="name")

    return app


def test_an_error_is_its_status_and_json_body_with_retry_after() -> None:
    status, headers, body = error_response_parts(RateLimited("slow", retry_after=3))
    assert status == 429
    assert (b"retry-after", b"3") in headers
    assert json.loads(body)["error"]["code"] == "rate_limit_exceeded"


def test_handlers_answer_raised_errors_and_invalid_requests() -> None:
    client = TestClient(_app())
    r = client.post("/things", json={"name": "x", "count": 1})
    assert r.status_code == 404
    assert r.json()["error"] == {
        "code": "not_found",
        "message": "no x",
        "param": "name",
        "type": "invalid_request_error",
    }
    r = client.post("/things", json={"count": "many"})
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["code"] == "invalid_request" and error["param"] == "name"
    assert [d.split(":")[0] for d in error["details"]] == ["name", "count"]
    r = client.post("/things", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400
