"""Server request handling under attack: malformed sampling fields, clients that leave while
queued for isolation, and engine-killing adapters (which engines need isolation at all is in
tests/server/test_engine_process.py and test_supervisor.py).

Each test performs the attack or fault against a server in front of fake engines
(tests/server/conftest.py) and asserts a 4xx (or the invariant) and that nothing leaked: no lease
left on an engine, the adapter still drainable, the isolation lock held only by its holder.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.server.errors import EngineError
from services.server.request_checks import check_request
from services.server.routes import CHAT, COMPLETIONS
from shared.errors import ValidationError
from tests.events import assert_event
from tests.server import test_real_engine as real_engine
from tests.server.conftest import ADMIN, Stack, build_stack, stop_stack
from tests.server.test_real_engine import PROMPT, Live

ECHO = {"prompt": "x", "echo": True, "logprobs": 1, "max_tokens": 1}

# (raw JSON fields merged into an echo+logprobs completion, the field the 422 must name)
BAD_FIELDS: list[tuple[str, str]] = [
    ('"n": "x"', "n"),
    ('"n": 1e999', "n"),
    ('"n": [2]', "n"),
    ('"n": -1', "n"),
    ('"n": 0', "n"),
    ('"n": 100000000000', "n"),
    ('"n": true', "n"),
    ('"n": 1.5', "n"),
    ('"best_of": "3"', "best_of"),
    ('"logprobs": "1"', "logprobs"),
    ('"logprobs": 1e999', "logprobs"),
    ('"logprobs": 999', "logprobs"),
    ('"logprobs": -1', "logprobs"),
    ('"top_logprobs": {}', "top_logprobs"),
    ('"prompt_logprobs": -1', "prompt_logprobs"),
    ('"prompt_logprobs": "all"', "prompt_logprobs"),
    ('"echo": "false"', "echo"),
    ('"echo": 1', "echo"),
    ('"max_tokens": 0', "max_tokens"),
    ('"max_tokens": "10"', "max_tokens"),
    ('"max_tokens": 1e999', "max_tokens"),
    ('"stream": "yes"', "stream"),
    ('"stream_options": "x"', "stream_options"),
    ('"temperature": 1e999', "temperature"),
    ('"temperature": -1', "temperature"),
    ('"temperature": NaN', "body"),  # not JSON at all
]


@pytest.fixture
def unpatched(tmp_path: Path) -> Iterator[Stack]:
    """One fake engine in attach mode without the plugin: prompt log-probability requests are
    isolated, the path where the leaks were."""
    s = build_stack(tmp_path, engines=1)
    try:
        s.wait_ready()
        assert not s.service.engines[0].patched
        yield s
    finally:
        stop_stack(s)


def _raw_echo(model: str, extra: str) -> bytes:
    body = json.dumps({"model": model, **ECHO})
    return (body[:-1] + ", " + extra + "}").encode()


def _leases(s: Stack) -> list[int]:
    engine = s.service.engines[0]
    return [engine.in_flight] + [r.in_flight for r in engine.adapters.values()]


def test_malformed_sampling_fields_are_422_before_any_lease_and_nothing_leaks(
    unpatched: Stack,
) -> None:
    s = unpatched
    v1 = s.register(s.adapter(), "support")
    with s.client() as c:
        r = c.post("/v1/completions", json={"model": v1, **ECHO})
        assert r.status_code == 200, r.text  # loaded on demand; the isolated path works
        for extra, field in BAD_FIELDS:
            r = c.post(
                "/v1/completions",
                content=_raw_echo(v1, extra),
                headers={"content-type": "application/json"},
            )
            # 400 for a body that is not JSON at all (NaN), 422 for a field (shared.http).
            expected = 400 if field == "body" else 422
            assert r.status_code == expected, (extra, r.status_code, r.text)
            error = r.json()["error"]
            assert error["param"] == field, (extra, error)
            assert error["type"] == "invalid_request_error", error
        # Chat: logprobs is a boolean there.
        r = c.post(
            "/v1/chat/completions",
            json={"model": v1, "messages": [{"role": "user", "content": "hi"}], "logprobs": 3},
        )
        assert r.status_code == 422 and r.json()["error"]["param"] == "logprobs"
        # n > 1 with prompt log-probabilities on an isolated engine: refused after the lease,
        # which must still be given back.
        r = c.post("/v1/completions", json={"model": v1, **ECHO, "n": 2})
        assert r.status_code == 422 and r.json()["error"]["param"] == "n"
    assert _leases(s) == [0, 0]
    engine = s.service.engines[0]
    assert not engine.isolation.exclusive_held and engine.isolation.shared == 0
    # The adapter drains and unloads at once (drain_timeout_s is 5 s: a leaked lease would
    # hold it that long and then keep it loaded).
    started = time.monotonic()
    with s.client() as c:
        r = c.post("/admin/adapters/unload", json={"model": v1}, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert time.monotonic() - started < 2
    assert v1 not in s.engines[0].loras and v1 not in engine.adapters


def test_well_formed_values_pass_and_integral_floats_become_ints() -> None:
    payload: dict[str, Any] = {"model": "m", "n": 2.0, "logprobs": 0, "echo": False}
    check_request(COMPLETIONS, payload)
    assert payload["n"] == 2 and isinstance(payload["n"], int)
    check_request(CHAT, {"model": "m", "logprobs": True, "top_logprobs": 5, "stream": True})
    check_request(COMPLETIONS, {"model": "m", "n": None, "stream_options": None})
    with pytest.raises(ValidationError) as info:
        check_request(COMPLETIONS, {"model": "m", "n": float("inf")})
    assert info.value.param == "n" and info.value.status_code == 422


def _post_bg(s: Stack, body: dict[str, Any], results: list[int], timeout: float = 30) -> None:
    try:
        with s.client() as c:
            results.append(c.post("/v1/completions", json=body, timeout=timeout).status_code)
    except httpx.TimeoutException:
        results.append(499)


def _starts(s: Stack) -> list[tuple[dict[str, Any], int, int]]:
    """(request body, active requests when it started, position in the engine log) per start."""
    engine = s.engines[0]
    positions = [i for i, ev in enumerate(engine.log) if ev[0] == "start"]
    return [
        (body, engine.log[pos][2], pos)
        for pos, body in zip(positions, engine.requests, strict=True)
    ]


def test_exclusive_request_leaving_while_queued_does_not_release_the_holders_lock(
    unpatched: Stack,
) -> None:
    s = unpatched
    fake = s.engines[0]
    fake.chunk_delay = 0.3  # 1.5 s per answer
    engine = s.service.engines[0]
    first: list[int] = []
    holder = threading.Thread(
        target=_post_bg, args=(s, {"model": "tiny-base", **ECHO, "prompt": "holder"}, first)
    )
    holder.start()
    s.wait(lambda: fake.active == 1)
    assert engine.isolation.exclusive_held
    # A second echo request queues for the lock, then its client leaves.
    left: list[int] = []
    _post_bg(s, {"model": "tiny-base", **ECHO, "prompt": "leaver"}, left, timeout=0.3)
    assert left == [499]
    time.sleep(0.2)  # the server has noticed and cancelled it
    assert engine.isolation.exclusive_held, "the leaving request released the holder's lock"
    # A plain request now must still wait for the holder.
    plain: list[int] = []
    _post_bg(s, {"model": "tiny-base", "prompt": "plain"}, plain)
    holder.join()
    assert first == [200] and plain == [200]
    starts = {body["prompt"]: (active, pos) for body, active, pos in _starts(s)}
    assert "leaver" not in starts  # it never reached the engine
    assert starts["plain"][0] == 1, fake.log  # alone: the holder had ended
    assert not engine.isolation.exclusive_held and engine.isolation.shared == 0
    assert _leases(s) == [0]


def test_shared_request_leaving_while_queued_does_not_end_the_isolation(
    unpatched: Stack,
) -> None:
    s = unpatched
    fake = s.engines[0]
    fake.chunk_delay = 0.3
    engine = s.service.engines[0]
    results: list[int] = []
    running = threading.Thread(
        target=_post_bg, args=(s, {"model": "tiny-base", "prompt": "running"}, results)
    )
    running.start()
    s.wait(lambda: fake.active == 1)
    # An echo request takes the lock and waits for the running request to finish ...
    echo = threading.Thread(
        target=_post_bg, args=(s, {"model": "tiny-base", **ECHO, "prompt": "echo"}, results)
    )
    echo.start()
    s.wait(lambda: engine.isolation.exclusive_held)
    # ... while a plain request queued behind it leaves.
    left: list[int] = []
    _post_bg(s, {"model": "tiny-base", "prompt": "leaver"}, left, timeout=0.3)
    assert left == [499]
    running.join()
    echo.join()
    assert results == [200, 200]
    starts = {body["prompt"]: active for body, active, _ in _starts(s)}
    assert starts["echo"] == 1, fake.log  # it ran alone, after "running" ended
    assert not engine.isolation.exclusive_held and engine.isolation.shared == 0
    assert engine.isolation.idle
    assert _leases(s) == [0]


# -- engine-killing adapters ---------------------------------------------------------------------
def test_an_adapter_that_killed_the_engine_twice_is_quarantined(
    unpatched: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    s = unpatched
    fake = s.engines[0]
    engine = s.service.engines[0]
    client = s.service.clients[engine.id]
    real_load = client.load_adapter
    bad = s.register(s.adapter(), "crasher")
    crashes: list[float] = []

    async def load(name: str, path: str, timeout: float) -> None:
        if name != bad:
            return await real_load(name, path, timeout)
        # What vLLM does with this adapter: the engine process dies mid-load.
        crashes.append(time.monotonic())
        fake.healthy = False
        asyncio.get_running_loop().call_later(0.3, setattr, fake, "healthy", True)
        raise EngineError(f"load {name}: engine {client.url} unreachable (ServerDisconnected)")

    client.load_adapter = load  # type: ignore[method-assign]
    s.set_alias("crasher", "prod", bad)  # the reconciler loads it into every (re)started engine
    s.wait(lambda: len(crashes) >= 2, timeout=20)
    s.wait(lambda: engine.ready, timeout=10)
    time.sleep(2)  # several reconcile passes (0.2 s apart) and no further crash: no crash loop
    assert len(crashes) == 2 and engine.ready
    restarts = engine.generation
    with s.client() as c:
        r = c.post("/v1/completions", json={"model": bad, "prompt": "x"})
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["code"] == "adapter_quarantined" and error["param"] == "model"
        assert "quarantined" in error["message"] and "failed while loading" in error["message"]
        assert len(error["details"]) == 2
        r = c.post("/v1/completions", json={"model": "tiny-base", "prompt": "x"})
        assert r.status_code == 200
        ready = c.get("/ready").json()
    assert bad in ready["refused"]
    assert len(crashes) == 2 and engine.generation == restarts
    refusal = assert_event(caplog.records, "adapter.refused", version=bad, stage="quarantine")
    assert "2 times" in refusal["reason"]
    assert _leases(s) == [0]


# -- the same against a real vLLM engine ---------------------------------------------------------
# Registers test_real_engine's module-scoped ``live`` fixture here: one engine for this module.
live = real_engine.live


@pytest.mark.slow
def test_real_engine_malformed_n_with_echo_is_422_and_the_adapter_still_drains(live: Live) -> None:
    service = live.service
    engine = service.engines[0]
    v2 = live.versions[1]  # loaded on demand, so it can be unloaded
    patched = engine.patched
    engine.patched = False  # as without the plugin: the isolated path, where the lease leaked
    json_type = {**ADMIN, "content-type": "application/json"}
    try:
        with live.client() as c:
            body = {"model": v2, **ECHO, "prompt": PROMPT, "temperature": 0}
            r = c.post("/v1/completions", json=body, headers=ADMIN)
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["logprobs"]["token_logprobs"]
            for extra in ('"n": "x"', '"n": 1e999', '"n": [2]', '"n": -1', '"logprobs": "1"'):
                r = c.post("/v1/completions", content=_raw_echo(v2, extra), headers=json_type)
                assert r.status_code == 422, (extra, r.text)
            r = c.post("/v1/completions", json={**body, "n": 2}, headers=ADMIN)
            assert r.status_code == 422 and r.json()["error"]["param"] == "n"
    finally:
        engine.patched = patched
    assert engine.in_flight == 0 and engine.adapters[v2].in_flight == 0
    assert not engine.isolation.exclusive_held and engine.isolation.shared == 0
    started = time.monotonic()
    with live.client() as c:
        r = c.post("/admin/adapters/unload", json={"model": v2}, headers=ADMIN)
        assert r.status_code == 200, r.text
        assert time.monotonic() - started < 10
        assert v2 not in engine.adapters
        assert c.get("/ready").status_code == 200
    assert engine.restarts == 0
