"""`services.server.engine_client`: an engine that refuses a load is a 4xx with its reason."""

from __future__ import annotations

from tests.server.conftest import Stack


def test_engine_refusal_is_a_4xx_with_the_engine_reason(one_engine: Stack) -> None:
    s = one_engine
    v1 = s.register(s.adapter(), "support")
    s.engines[0].refuse.add(v1)
    with s.client() as c:
        r = c.post("/v1/completions", json={"model": v1, "prompt": "x"})
        assert r.status_code == 422
        assert "bad tensors" in " ".join(r.json()["error"]["details"])
        assert (
            c.post("/v1/completions", json={"model": "tiny-base", "prompt": "x"}).status_code == 200
        )
