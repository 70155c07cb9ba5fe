"""Schemathesis against the OpenAPI of all three services, with keys: at least 500 cases each and
not one 5xx. The services run under uvicorn in threads; the server in front of a fake engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.evaluator.api.app import create_app as evaluator_app
from services.evaluator.config import EvaluatorSettings
from services.trainer.api.app import create_app as trainer_app
from services.trainer.config import TrainerSettings
from shared.settings import SharedSettings
from tests.fuzz import fuzz_openapi
from tests.security.test_keys import KEYS, bearer
from tests.server.conftest import build_stack, stop_stack
from tests.server.fakes import ThreadServer

CASES = 500


def _check(result_cases: int, failures: list[str], statuses: list[int]) -> None:
    assert result_cases >= CASES
    assert failures == []
    # The key was accepted: most answers got past the guard (not every one a 401/403).
    assert sum(s not in (401, 403) for s in statuses) > len(statuses) // 2


@pytest.mark.slow
@pytest.mark.parametrize(
    ("service", "operations"), [("trainer", 8), ("evaluator", 4)], ids=["trainer", "evaluator"]
)
def test_api_has_no_server_errors(settings: SharedSettings, service: str, operations: int) -> None:
    app = (
        trainer_app(TrainerSettings(data_dir=settings.data_dir, keys=KEYS))
        if service == "trainer"
        else evaluator_app(EvaluatorSettings(data_dir=settings.data_dir, keys=KEYS))
    )
    server = ThreadServer(app).start()
    try:
        result = fuzz_openapi(server.url, bearer("admin"), cases=CASES)
    finally:
        server.stop()
    assert result.operations >= operations
    _check(result.cases, result.failures, result.statuses)


@pytest.mark.slow
def test_server_api_has_no_server_errors(tmp_path: Path) -> None:
    s = build_stack(tmp_path, engines=1, admin_key=None, keys=KEYS)
    try:
        s.wait_ready()
        vid = s.register(s.adapter(), "support")
        s.set_alias("support", "prod", vid)
        with s.client(headers=bearer("admin")) as c:
            assert c.post("/admin/reconcile").status_code == 200
        result = fuzz_openapi(s.url, bearer("admin"), cases=CASES)
    finally:
        stop_stack(s)
    assert result.operations >= 12
    _check(result.cases, result.failures, result.statuses)
