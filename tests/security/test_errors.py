"""One error mapping: the same bad input gets the same status and the same OpenAI-shaped body on
the trainer, the evaluator and the server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from services.evaluator.api.app import create_app as evaluator_app
from services.evaluator.config import EvaluatorSettings
from services.trainer.api.app import create_app as trainer_app
from services.trainer.config import TrainerSettings
from shared.settings import SharedSettings
from tests.security.test_keys import KEYS, bearer
from tests.server.conftest import build_stack, stop_stack
from tests.server.fakes import ThreadServer

JSON = {"content-type": "application/json"}


def _shape(response: httpx.Response) -> dict[str, Any]:
    error = response.json()["error"]
    assert {"code", "message", "param", "type"} <= set(error), error
    assert error["type"] == "invalid_request_error"
    return dict(error)


@pytest.fixture
def urls(settings: SharedSettings, tmp_path: Path) -> Any:
    trainer = ThreadServer(trainer_app(TrainerSettings(data_dir=settings.data_dir, keys=KEYS)))
    evaluator = ThreadServer(
        evaluator_app(EvaluatorSettings(data_dir=settings.data_dir, keys=KEYS))
    )
    stack = build_stack(tmp_path / "server", engines=1, admin_key=None, keys=KEYS)
    trainer.start()
    evaluator.start()
    try:
        stack.wait_ready()
        yield {
            "trainer": trainer.url + "/v1/fine_tuning/jobs",
            "evaluator": evaluator.url + "/v1/evaluations",
            "server": stack.url + "/v1/completions",
        }
    finally:
        trainer.stop()
        evaluator.stop()
        stop_stack(stack)


def test_same_bad_input_same_answer_everywhere(urls: dict[str, str]) -> None:
    headers = {**bearer("admin"), **JSON}
    cases = {
        "not JSON": (b"{not json", 400),
        "nested too deeply": (b"[" * 100_000 + b"]" * 100_000, 400),
        "not an object": (b"[1, 2]", None),
    }
    for label, (body, expected) in cases.items():
        seen = {}
        for service, url in urls.items():
            r = httpx.post(url, content=body, headers=headers, timeout=30)
            assert 400 <= r.status_code < 500, (label, service, r.status_code, r.text[:200])
            _shape(r)
            seen[service] = r.status_code
        if expected is not None:
            assert set(seen.values()) == {expected}, (label, seen)
        else:
            assert len(set(seen.values())) == 1, (label, seen)
    # No key, wrong key, valid key without the scope: the same everywhere.
    for headers, status, code in (
        (JSON, 401, "invalid_api_key"),
        ({**JSON, "authorization": "Bearer sk-nobody-0123456789"}, 401, "invalid_api_key"),
        ({**JSON, **bearer("scraper")}, 403, "permission_denied"),
    ):
        for service, url in urls.items():
            r = httpx.post(url, content=b"{}", headers=headers, timeout=30)
            assert r.status_code == status, (service, r.text)
            assert _shape(r)["code"] == code
