"""Hot swap, drain, on-demand loading and eviction, against fake engines."""

from __future__ import annotations

import threading
import time

from services.server.proxy import VERSION_HEADER
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
