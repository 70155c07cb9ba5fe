"""`services.server.admin_ops`: alias compare-and-set, and pins that keep versions loaded."""

from __future__ import annotations

from services.server.proxy import VERSION_HEADER
from tests.server.conftest import ADMIN, Stack


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
