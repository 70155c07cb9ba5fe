"""`services.server.api.responses`: a client that leaves, streaming or not, frees the engine."""

from __future__ import annotations

import httpx
import pytest

from tests.server.conftest import Stack


def test_client_disconnect_cancels_the_upstream_request(stack: Stack) -> None:
    for engine in stack.engines:
        engine.chunk_delay = 0.2
        engine.chunks = 50
    with (
        stack.client() as c,
        c.stream(
            "POST", "/v1/completions", json={"model": "tiny-base", "prompt": "x", "stream": True}
        ) as r,
    ):
        for line in r.iter_lines():
            if line.startswith("data: {"):
                break  # leave after the first event
    stack.wait(lambda: sum(e.cancelled for e in stack.engines) == 1, timeout=5)
    stack.wait(lambda: stack.service.engines[0].in_flight + stack.service.engines[1].in_flight == 0)


def test_client_leaving_a_non_streamed_request_frees_the_engine_slot(one_engine: Stack) -> None:
    s = one_engine
    s.engines[0].chunk_delay = 0.5  # a 2.5 s answer
    with s.client() as c, pytest.raises(httpx.ReadTimeout):
        c.post("/v1/completions", json={"model": "tiny-base", "prompt": "x"}, timeout=0.5)
    s.wait(lambda: s.service.engines[0].in_flight == 0, timeout=1.5)
    with s.client() as c:
        metrics = c.get("/metrics").text
    assert 'status="499"' in metrics
