"""The benchmarks' load generator: same-batch twin rounds (bench/serve_overhead.py)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp import web

from services.server.loadgen import completion_bodies, run_paired


async def _serve(seen: list[tuple[str, str]]) -> tuple[web.AppRunner, str]:
    """A stand-in engine on two paths: two token events, the usage event, [DONE]."""

    async def handle(request: web.Request) -> web.StreamResponse:
        body: dict[str, Any] = await request.json()
        seen.append((request.path, body["prompt"]))
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for token in ("a", "b"):
            await resp.write(
                b"data: " + json.dumps({"choices": [{"text": token}]}).encode() + b"\n\n"
            )
        usage = {"choices": [], "usage": {"completion_tokens": 2}}
        await resp.write(b"data: " + json.dumps(usage).encode() + b"\n\ndata: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_post("/direct", handle)
    app.router.add_post("/server", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("swap", [False, True])
def test_run_paired_gives_every_request_a_twin_with_the_same_prompt(swap: bool) -> None:
    seen: list[tuple[str, str]] = []
    bodies = completion_bodies("m", 16, 2)

    async def run() -> Any:
        runner, url = await _serve(seen)
        try:
            urls = {"direct": url + "/direct", "server": url + "/server"}
            return await run_paired(urls, bodies, concurrency=4, swap=swap)
        finally:
            await runner.cleanup()

    result = asyncio.run(run())
    direct, server = result.sides["direct"], result.sides["server"]
    assert set(direct) == set(server) and len(direct) == 8  # 16 requests, 8 twin pairs
    assert all(r.ok and r.tokens == 2 for side in (direct, server) for r in side.values())
    # Each side got the same prompts, the same number of times.
    prompts = {path: sorted(p for q, p in seen if q == path) for path in ("/direct", "/server")}
    assert prompts["/direct"] == prompts["/server"] and len(prompts["/direct"]) == 8


def test_run_paired_refuses_an_odd_concurrency() -> None:
    with pytest.raises(ValueError, match="even"):
        asyncio.run(run_paired({"a": "x", "b": "y"}, [], concurrency=3, swap=False))
