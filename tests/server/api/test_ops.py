"""`services.server.api.ops`: liveness always, readiness once an engine serves, metrics as text."""

from __future__ import annotations

from tests.server.conftest import Stack


def test_health_ready_and_metrics(stack: Stack) -> None:
    with stack.client(auth=False) as c:
        assert c.get("/health").json() == {"status": "ok"}
        ready = c.get("/ready")
    assert ready.status_code == 200
    with stack.client() as c:
        metrics = c.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    assert "loraplex_engine_in_flight" in metrics.text
