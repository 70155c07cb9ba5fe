"""`services.server.api.app`: without an admin key the admin API is not mounted at all."""

from __future__ import annotations

from pathlib import Path

from tests.server.conftest import ADMIN, build_stack, stop_stack


def test_admin_api_is_absent_without_an_admin_key(tmp_path: Path) -> None:
    s = build_stack(tmp_path, engines=1, admin_key=None)
    try:
        s.wait_ready()
        with s.client() as c:
            assert c.post("/admin/reconcile", headers=ADMIN).status_code == 404
            assert c.get("/openapi.json").json()["paths"].keys().isdisjoint({"/admin/reconcile"})
    finally:
        stop_stack(s)
