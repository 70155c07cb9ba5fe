"""Hot swap, drain, on-demand loading and eviction, against fake engines."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from services.server.proxy import VERSION_HEADER
from tests.events import assert_event
from tests.server.conftest import ADMIN, Stack


def test_alias_move_switches_new_requests_and_drains_the_old_version(stack: Stack) -> None:
    for engine in stack.engines:
        engine.chunk_delay = 0.1
        engine.chunks = 10  # a one-second stream
    v1 = stack.register(stack.adapter(), "support")
    v2 = stack.register(stack.adapter(), "support")
    stack.set_alias("support", "prod", v1)
    stack.reconcile()
    events: list[str] = []
    statuses: list[int] = []

    def long_stream() -> None:
        with (
            stack.client() as c,
            c.stream(
                "POST", "/v1/completions", json={"model": "support", "prompt": "x", "stream": True}
            ) as r,
        ):
            statuses.append(r.status_code)
            events.append(r.headers[VERSION_HEADER])
            for line in r.iter_lines():
                if line == "data: [DONE]":
                    events.append("done")

    t = threading.Thread(target=long_stream)
    t.start()
    stack.wait(lambda: sum(e.active for e in stack.engines) == 1)
    with stack.client() as c:
        r = c.put("/admin/aliases/support/prod", json={"version": v2}, headers=ADMIN)
        assert r.status_code == 200, r.text
        assert r.json() == {
            "alias": "support:prod",
            "version": v2,
            "previous": v1,
            "served": v2,
            "forced": False,
        }
        assert any(v1 in e.loras for e in stack.engines)  # not unloaded under the stream
        # New requests get v2 at once, while the v1 stream is still running.
        r = c.post("/v1/completions", json={"model": "support", "prompt": "x", "stream": True})
        assert r.headers[VERSION_HEADER] == v2
    t.join()
    assert statuses == [200] and events == [v1, "done"]
    stack.wait(lambda: all(v1 not in e.loras for e in stack.engines))
    assert all(v2 in e.loras for e in stack.engines)


def test_registry_change_by_someone_else_is_picked_up_by_the_loop(stack: Stack) -> None:
    v1 = stack.register(stack.adapter(), "support")
    stack.set_alias("support", "prod", v1)  # written straight to the registry (another process)
    started = time.monotonic()

    def served() -> bool:
        with stack.client() as c:
            r = c.post("/v1/completions", json={"model": "support", "prompt": "x"})
            return r.status_code == 200 and r.headers.get(VERSION_HEADER) == v1

    stack.wait(served, timeout=5)
    assert time.monotonic() - started < 2  # reconcile_interval_s is 0.2 here


def test_compare_and_set_alias_refuses_a_stale_expectation(stack: Stack) -> None:
    v1 = stack.register(stack.adapter(), "support")
    v2 = stack.register(stack.adapter(), "support")
    with stack.client() as c:
        r = c.put(
            "/admin/aliases/support/prod", json={"version": v1, "expected": ""}, headers=ADMIN
        )
        assert r.status_code == 200, r.text
        r = c.put(
            "/admin/aliases/support/prod",
            json={"version": v2, "expected": "support@v9"},
            headers=ADMIN,
        )
        assert r.status_code == 409
        r = c.post("/v1/completions", json={"model": "support", "prompt": "x"})
        assert r.headers[VERSION_HEADER] == v1
        r = c.put(
            "/admin/aliases/support/prod", json={"version": v2, "expected": v1}, headers=ADMIN
        )
        assert r.status_code == 200
        r = c.post("/admin/aliases/support/prod/rollback", headers=ADMIN)
        assert r.status_code == 200 and r.json()["version"] == v1
        r = c.post("/v1/completions", json={"model": "support", "prompt": "x"})
        assert r.headers[VERSION_HEADER] == v1


def test_refused_version_leaves_the_alias_where_it_was(stack: Stack) -> None:
    v1 = stack.register(stack.adapter(), "support")
    bad = stack.register(stack.adapter(use_dora=True), "support")
    with stack.client() as c:
        assert (
            c.put("/admin/aliases/support/prod", json={"version": v1}, headers=ADMIN).status_code
            == 200
        )
        r = c.put("/admin/aliases/support/prod", json={"version": bad}, headers=ADMIN)
        assert r.status_code == 422
        assert any("DoRA" in d for d in r.json()["error"]["details"])
        r = c.post("/v1/completions", json={"model": "support", "prompt": "x"})
        assert r.status_code == 200 and r.headers[VERSION_HEADER] == v1
    # Even when the registry is moved behind the server's back, traffic stays on v1.
    stack.set_alias("support", "prod", bad)
    report = stack.reconcile()
    assert bad in report["failures"]
    with stack.client() as c:
        r = c.post("/v1/completions", json={"model": "support", "prompt": "x"})
        assert r.headers[VERSION_HEADER] == v1
        ready = c.get("/ready").json()
        assert bad in ready["refused"]


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


def test_pins_keep_versions_loaded_and_unpin_releases_them(stack: Stack) -> None:
    v1 = stack.register(stack.adapter(), "support")
    with stack.client() as c:
        r = c.post("/admin/adapters/pin", json={"model": v1}, headers=ADMIN)
        assert r.status_code == 200, r.text
        assert all(v1 in e.loras for e in stack.engines)
        residency = c.get("/v1/adapters").json()["data"]
        assert all(a["pinned"] for d in residency for a in d["adapters"])
        r = c.post("/admin/adapters/unload", json={"model": v1}, headers=ADMIN)
        assert r.status_code == 409
        assert c.post("/admin/adapters/unpin", json={"model": v1}, headers=ADMIN).status_code == 200
    stack.wait(lambda: all(v1 not in e.loras for e in stack.engines))


def test_admin_load_and_unload(stack: Stack) -> None:
    v1 = stack.register(stack.adapter(), "support")
    with stack.client() as c:
        r = c.post(
            "/admin/adapters/load", json={"model": v1, "engines": ["engine-1"]}, headers=ADMIN
        )
        assert r.status_code == 200, r.text
        assert v1 in stack.engines[1].loras and v1 not in stack.engines[0].loras
        # Requests for it go where it is loaded.
        for _ in range(3):
            r = c.post("/v1/completions", json={"model": v1, "prompt": "x"})
            assert r.headers["x-loraplex-engine"] == "engine-1"
        r = c.post("/admin/adapters/unload", json={"model": v1}, headers=ADMIN)
        assert r.status_code == 200
        assert v1 not in stack.engines[1].loras
        r = c.post("/admin/adapters/load", json={"model": "support@v7"}, headers=ADMIN)
        assert r.status_code == 404


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
