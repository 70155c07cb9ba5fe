"""`services.server.api.admin`: the admin routes load and unload versions on engines."""

from __future__ import annotations

from tests.server.conftest import ADMIN, Stack


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
