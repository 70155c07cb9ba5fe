"""The benchmarks' load generator: same-batch twin rounds (bench/serve_overhead.py), alias moves
under load and their attribution rule (bench/alias_load.py), broken streams."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp import web

from bench.loadgen import (
    AdminCall,
    allowed_versions,
    completion_bodies,
    run_alias_load,
    run_paired,
    run_streams,
)


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


# -- alias moves under load (bench/alias_load.py) -----------------------------------------------
ADMIN = {"authorization": "Bearer admin-key-0123456789"}
INFER = {"authorization": "Bearer infer-key-0123456789"}


def _move(to: str, started: float, done: float, status: int = 200) -> AdminCall:
    return AdminCall("move", to, started, done, status)


def test_allowed_versions_follows_the_moves_log() -> None:
    moves = [_move("v2", 10.0, 11.0), _move("v3", 20.0, 21.0)]
    # Answered before the first move was sent: the old version only.
    assert allowed_versions("v1", moves, 1.0, 9.9) == ["v1"]
    # In flight while the PUT was: either.
    assert allowed_versions("v1", moves, 9.0, 10.5) == ["v1", "v2"]
    assert allowed_versions("v1", moves, 10.5, 12.0) == ["v1", "v2"]
    # Sent after the PUT was answered: the new version only.
    assert allowed_versions("v1", moves, 11.0, 12.0) == ["v2"]
    # A long request across both moves may see any of the three.
    assert allowed_versions("v1", moves, 9.0, 20.5) == ["v1", "v2", "v3"]
    assert allowed_versions("v1", moves, 25.0, 26.0) == ["v3"]
    # A failed move did not happen.
    assert allowed_versions("v1", [_move("v2", 10.0, 11.0, 409)], 12.0, 13.0) == ["v1"]


async def _fake_server(*, swap_late: bool) -> tuple[web.AppRunner, str, dict[str, Any]]:
    """A stand-in for the server: an alias that a PUT moves (the table swaps half-way through
    the PUT, or, with ``swap_late``, only after it answered: the bug the rule must catch), load
    and unload, and streamed completions naming their version, all behind the two keys."""
    state: dict[str, Any] = {"alias": "a@v1", "loaded": set(), "calls": []}

    def check(request: web.Request, key: dict[str, str]) -> None:
        if request.headers.get("authorization") != key["authorization"]:
            raise web.HTTPUnauthorized()

    async def move(request: web.Request) -> web.Response:
        check(request, ADMIN)
        target = (await request.json())["version"]
        state["calls"].append(("move", target))
        await asyncio.sleep(0.02)  # loading the new version
        if swap_late:
            asyncio.get_running_loop().call_later(0.05, state.__setitem__, "alias", target)
        else:
            state["alias"] = target
        await asyncio.sleep(0.01)
        return web.json_response({"version": target})

    async def residency(request: web.Request) -> web.Response:
        check(request, ADMIN)
        model = (await request.json())["model"]
        action = request.path.rsplit("/", 1)[-1]
        state["calls"].append((action, model))
        (state["loaded"].add if action == "load" else state["loaded"].discard)(model)
        return web.json_response({"data": []})

    async def complete(request: web.Request) -> web.StreamResponse:
        check(request, INFER)
        body = await request.json()
        version = state["alias"] if body["model"] == "a" else body["model"]
        if version != state["alias"] and version not in state["loaded"]:
            raise web.HTTPNotFound()
        resp = web.StreamResponse(
            headers={"content-type": "text/event-stream", "x-loraplex-adapter-version": version}
        )
        await resp.prepare(request)
        for _ in range(2):
            await asyncio.sleep(0.005)
            chunk = {"choices": [{"text": version}]}
            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        usage = {"choices": [], "usage": {"completion_tokens": 2}}
        await resp.write(b"data: " + json.dumps(usage).encode() + b"\n\ndata: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_put("/admin/aliases/a/prod", move)
    app.router.add_post("/admin/adapters/load", residency)
    app.router.add_post("/admin/adapters/unload", residency)
    app.router.add_post("/v1/completions", complete)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}", state


def _alias_load(*, swap_late: bool, infer: dict[str, str] = INFER) -> tuple[Any, dict[str, Any]]:
    async def run() -> tuple[Any, dict[str, Any]]:
        runner, url, state = await _fake_server(swap_late=swap_late)
        try:
            load = await run_alias_load(
                url,
                model="a",
                alias_path="/admin/aliases/a/prod",
                initial="a@v1",
                targets=["a@v2", "a@v3", "a@v1"],
                move_at=[0.15, 0.3, 0.45],
                duration=0.6,
                concurrency=4,
                bodies=completion_bodies("", 2, 2),
                infer_headers=infer,
                admin_headers=ADMIN,
                churn=["b@v1", "c@v1"],
                churn_pause=0.05,
                ramp_s=0.05,
            )
            return load, state
        finally:
            await runner.cleanup()

    return asyncio.run(run())


def test_alias_load_attributes_every_answer_to_the_version_the_alias_named() -> None:
    load, state = _alias_load(swap_late=False)
    summary = load.summary()
    assert summary["failed"] == 0 and summary["misattributed"] == 0
    assert summary["admin_calls_failed"] == 0 and summary["churn_requests_failed"] == 0
    assert set(summary["answered_by"]) == {"a@v1", "a@v2", "a@v3"}
    assert [m["to"] for m in summary["moves"]] == ["a@v2", "a@v3", "a@v1"]
    assert summary["loads"] >= 2 and summary["unloads"] == summary["loads"]
    assert summary["tokens"] == 2 * summary["requests"] and summary["latency_p99_s"] is not None
    assert len(load.body_index) == len(load.requests)
    assert all(r.text == r.version * 2 for r in load.requests)
    # Some requests were in flight during a move, and those sent after one got the new version.
    assert summary["in_flight_during_a_move"] > 0
    actions = [a for a, _ in state["calls"]]
    assert actions.count("move") == 3 and "load" in actions and "unload" in actions


def test_alias_load_catches_an_alias_that_swaps_after_the_move_answered() -> None:
    load, _ = _alias_load(swap_late=True)
    summary = load.summary()
    assert summary["failed"] == 0
    assert summary["misattributed"] > 0
    example = summary["misattributed_examples"][0]
    assert example["version"] not in example["allowed"]


def test_alias_load_counts_refused_requests_as_failed() -> None:
    load, _ = _alias_load(swap_late=False, infer=ADMIN)  # the wrong key for /v1
    summary = load.summary()
    assert summary["failed"] == summary["requests"] > 0
    assert summary["misattributed"] == 0  # no answer, nothing to attribute
    assert summary["churn_requests_failed"] == summary["churn_requests"] > 0


def test_a_stream_that_ends_without_done_is_a_failure() -> None:
    async def handle(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"choices": [{"text": "a"}]}\n\n')
        return resp  # cut short: no usage, no [DONE]

    async def run() -> Any:
        app = web.Application()
        app.router.add_post("/v1/completions", handle)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1/completions"
        try:
            return await run_streams(url, completion_bodies("m", 2, 2), concurrency=2)
        finally:
            await runner.cleanup()

    result = asyncio.run(run())
    assert [r.ok for r in result.results] == [False, False]
    assert result.results[0].error == "stream ended without [DONE]"
    assert result.results[0].text == "a"
