"""`services.server.manager`: versions load on demand and the least recently used is evicted."""

from __future__ import annotations

import logging

import pytest

from services.server.proxy import VERSION_HEADER
from tests.events import assert_event
from tests.server.conftest import Stack


def test_versions_load_on_demand_and_the_least_recently_used_is_evicted(
    one_engine: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    s = one_engine  # max_cpu_loras = 3
    engine = s.engines[0]
    vids = [s.register(s.adapter(), f"a{i}") for i in range(4)]
    s.set_alias("a0", "prod", vids[0])  # a0 is needed: never evicted
    s.reconcile()
    with s.client() as c:
        for vid in vids[1:3]:
            assert c.post("/v1/completions", json={"model": vid, "prompt": "x"}).status_code == 200
        assert set(engine.loras) == set(vids[:3])
        # Use a1 again so a2 becomes least recently used.
        c.post("/v1/completions", json={"model": vids[1], "prompt": "x"})
        r = c.post("/v1/completions", json={"model": vids[3], "prompt": "x"})
        assert r.status_code == 200 and r.headers[VERSION_HEADER] == vids[3]
    assert set(engine.loras) == {vids[0], vids[1], vids[3]}
    assert engine.unloads == [vids[2]]
    assert_event(caplog.records, "adapter.evicted", version=vids[2])
    assert_event(caplog.records, "adapter.loaded", version=vids[3])
