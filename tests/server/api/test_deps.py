"""`services.server.api.deps`: inference keys limit adapter names; only the admin key opens /admin."""

from __future__ import annotations

from pathlib import Path

from tests.server.conftest import ADMIN, build_stack, stop_stack


def test_inference_keys_limit_adapters_and_admin_key_is_separate(tmp_path: Path) -> None:
    s = build_stack(
        tmp_path,
        engines=1,
        api_keys={"k-all": ["*"], "k-support": ["support"]},
    )
    try:
        s.wait_ready()
        v1 = s.register(s.adapter(), "support")
        v2 = s.register(s.adapter(), "other")
        with s.client(auth=False) as c:
            assert c.post("/v1/completions", json={"model": v1, "prompt": "x"}).status_code == 401
            bad = {"authorization": "Bearer wrong"}
            assert (
                c.post(
                    "/v1/completions", json={"model": v1, "prompt": "x"}, headers=bad
                ).status_code
                == 401
            )
            ok = {"authorization": "Bearer k-support"}
            assert (
                c.post("/v1/completions", json={"model": v1, "prompt": "x"}, headers=ok).status_code
                == 200
            )
            r = c.post("/v1/completions", json={"model": v2, "prompt": "x"}, headers=ok)
            assert r.status_code == 403
            r = c.post("/v1/completions", json={"model": "tiny-base", "prompt": "x"}, headers=ok)
            assert r.status_code == 403
            models = c.get("/v1/models", headers=ok).json()["data"]
            assert "tiny-base" not in {m["id"] for m in models}
            full = {"authorization": "Bearer k-all"}
            assert (
                c.post(
                    "/v1/completions", json={"model": v2, "prompt": "x"}, headers=full
                ).status_code
                == 200
            )
            # Inference keys do not open the admin API.
            assert c.post("/admin/reconcile", headers=full).status_code == 403
            assert c.post("/admin/reconcile", headers=ADMIN).status_code == 200
    finally:
        stop_stack(s)
