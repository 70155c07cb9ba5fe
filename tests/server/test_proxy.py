"""The server end to end against fake engines: names, streaming, headers, auth, errors."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import httpx
import openai
from prometheus_client.parser import text_string_to_metric_families

from services.server.provenance import ADAPTER_SHA256_HEADER, BASE_HEADER, BASE_SHA256_HEADER
from services.server.proxy import VERSION_HEADER
from shared.registry import adapters as reg
from tests.server.conftest import ADMIN, Stack


def _chat(model: str, **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


def test_base_model_request_goes_to_an_engine_under_the_engine_name(stack: Stack) -> None:
    with stack.client() as c:
        r = c.post("/v1/chat/completions", json=_chat("tiny-base"))
    assert r.status_code == 200, r.text
    assert r.headers[VERSION_HEADER] == "base"
    assert r.json()["choices"][0]["message"]["content"] == "answer from tiny-base"
    seen = [req["model"] for e in stack.engines for req in e.requests]
    assert seen == ["tiny-base"]


def test_alias_version_and_bare_name_resolve_through_the_registry(stack: Stack) -> None:
    v1 = stack.register(stack.adapter(), "support")
    v2 = stack.register(stack.adapter(), "support")
    stack.set_alias("support", "prod", v1)
    stack.set_alias("support", "canary", v2)
    report = stack.reconcile()
    assert report["converged"], report
    # Every ready engine holds what the aliases need.
    for engine in stack.engines:
        assert set(engine.loras) == {v1, v2}
    client = openai.OpenAI(base_url=stack.url + "/v1", api_key="admin-key")
    for name, expected in [("support", v1), ("support:prod", v1), ("support:canary", v2), (v2, v2)]:
        raw = client.chat.completions.with_raw_response.create(
            model=name, messages=[{"role": "user", "content": "hi"}]
        )
        assert raw.headers[VERSION_HEADER] == expected
        assert raw.parse().choices[0].message.content == f"answer from {expected}"


def test_unknown_names_are_404_in_openai_shape(stack: Stack) -> None:
    with stack.client() as c:
        for name in ["nope", "nope@v3", "nope:prod", "tiny-base-x"]:
            r = c.post("/v1/completions", json={"model": name, "prompt": "x"})
            assert r.status_code == 404, (name, r.text)
            assert r.json()["error"]["code"] == "model_not_found"
        r = c.post("/v1/completions", content=b"{not json", headers={"content-type": "x"})
        assert r.status_code == 400  # not JSON at all, as on the trainer and the evaluator
        r = c.post("/v1/completions", json={"prompt": "x"})
        assert r.status_code == 422 and r.json()["error"]["param"] == "model"


def test_engine_errors_pass_through_with_their_status(stack: Stack) -> None:
    with stack.client() as c:
        r = c.post(
            "/v1/completions", json={"model": "tiny-base", "prompt": "x", "max_tokens": 10**6}
        )
    assert r.status_code == 400
    assert "max_tokens" in r.json()["error"]["message"]


def test_streaming_passes_events_through_and_hides_injected_usage(stack: Stack) -> None:
    client = openai.OpenAI(base_url=stack.url + "/v1", api_key="admin-key")
    chunks = list(
        client.chat.completions.create(
            model="tiny-base", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    assert [c.choices[0].delta.content for c in chunks] == [f"t{i} " for i in range(5)]
    # The engine was asked for usage (for metrics), the client did not ask and does not see it.
    assert stack.engines[0].requests or stack.engines[1].requests
    sent = (stack.engines[0].requests + stack.engines[1].requests)[0]
    assert sent["stream_options"] == {"include_usage": True}
    # When the client asks for usage it gets it.
    completion_chunks = list(
        client.completions.create(
            model="tiny-base", prompt="x", stream=True, stream_options={"include_usage": True}
        )
    )
    assert (
        completion_chunks[-1].usage is not None
        and completion_chunks[-1].usage.completion_tokens == 5
    )


def test_stream_chunks_arrive_as_the_engine_sends_them(stack: Stack) -> None:
    for engine in stack.engines:
        engine.chunk_delay = 0.3
    arrivals = []
    with (
        stack.client() as c,
        c.stream(
            "POST", "/v1/completions", json={"model": "tiny-base", "prompt": "x", "stream": True}
        ) as r,
    ):
        for line in r.iter_lines():
            if line.startswith("data: {"):
                arrivals.append(time.monotonic())
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert len(arrivals) == 5
    assert all(g > 0.15 for g in gaps), gaps  # not buffered into one burst


def test_every_response_names_the_answering_version_even_errors(stack: Stack) -> None:
    v1 = stack.register(stack.adapter(), "support")
    with stack.client() as c:
        r = c.post("/v1/completions", json={"model": v1, "prompt": "x", "max_tokens": 10**6})
    assert r.status_code == 400 and r.headers[VERSION_HEADER] == v1


def test_engine_down_answers_503_with_retry_after_never_hangs(one_engine: Stack) -> None:
    s = one_engine
    s.engines[0].healthy = False
    s.wait(lambda: not s.service.engines[0].ready, timeout=5)
    with s.client() as c:
        started = time.monotonic()
        r = c.post("/v1/completions", json={"model": "tiny-base", "prompt": "x"})
        assert time.monotonic() - started < 2
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert c.get("/ready").status_code == 503
        assert c.get("/health").status_code == 200
    s.engines[0].healthy = True
    s.wait_ready()


def test_engine_restart_behind_our_back_is_detected_and_adapters_reloaded(
    one_engine: Stack,
) -> None:
    s = one_engine
    v1 = s.register(s.adapter(), "support")
    s.set_alias("support", "prod", v1)
    s.reconcile()
    assert v1 in s.engines[0].loras
    s.engines[0].loras.clear()  # the engine lost its adapters (restarted elsewhere)
    s.wait(lambda: v1 in s.engines[0].loras, timeout=5)
    with s.client() as c:
        assert (
            c.post("/v1/completions", json={"model": "support", "prompt": "x"}).status_code == 200
        )


def test_prompt_logprob_requests_run_alone_on_engines_without_the_plugin(
    one_engine: Stack,
) -> None:
    s = one_engine
    engine = s.engines[0]
    engine.chunk_delay = 0.05
    assert not s.service.engines[0].patched  # attach mode, engines_patched=False
    results: list[int] = []

    def call(body: dict[str, object]) -> None:
        with s.client() as c:
            results.append(c.post("/v1/completions", json=body).status_code)

    plain = {"model": "tiny-base", "prompt": "x"}
    echo = {"model": "tiny-base", "prompt": "x", "echo": True, "logprobs": 1, "max_tokens": 1}
    threads = [
        threading.Thread(target=call, args=(b,)) for b in [plain, plain, echo, plain, echo, plain]
    ]
    for t in threads:
        t.start()
        time.sleep(0.02)
    for t in threads:
        t.join()
    assert results == [200] * 6
    assert sum(1 for body in engine.requests if body.get("echo")) == 2
    # Whenever an echo request started, it was the only request on the engine ...
    starts = [ev for ev in engine.log if ev[0] == "start"]
    assert len(starts) == 6
    echo_at = [ev[2] for ev, body in zip(starts, engine.requests, strict=True) if body.get("echo")]
    assert echo_at == [1, 1], engine.log
    # ... and nothing else started while it ran: the next event is its own end.
    start_positions = [i for i, ev in enumerate(engine.log) if ev[0] == "start"]
    for pos, body in zip(start_positions, engine.requests, strict=True):
        if body.get("echo"):
            assert engine.log[pos + 1][0] == "end", engine.log
    assert engine.max_active > 1  # the plain requests did overlap each other
    r = httpx.post(s.url + "/v1/completions", json={**echo, "n": 2}, headers=ADMIN, timeout=10)
    assert r.status_code == 422


def test_an_engine_that_already_holds_a_version_is_accepted(one_engine: Stack) -> None:
    s = one_engine
    v1 = s.register(s.adapter(), "support")
    s.engines[0].loras[v1] = "/somewhere"  # loaded before this server started
    with s.client() as c:
        r = c.post("/v1/completions", json={"model": v1, "prompt": "x"})
    assert r.status_code == 200


def test_answers_carry_the_version_and_content_hash_that_answered(stack: Stack) -> None:
    v1 = stack.register(stack.adapter(), "support")
    stack.set_alias("support", "prod", v1)
    with stack.registry.read_session() as session:
        sha = reg.get_version(session, v1).sha256
    client = openai.OpenAI(base_url=stack.url + "/v1", api_key="admin-key")
    for model in ("support", v1):
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": "hi"}]
        )
        assert raw.headers[VERSION_HEADER] == v1
        assert raw.headers[ADAPTER_SHA256_HEADER] == sha
        assert raw.headers[BASE_HEADER] == "tiny-base"
        assert raw.headers[BASE_SHA256_HEADER] == stack.base.weights_sha256
        extra = raw.parse().model_extra["loraplex"]  # type: ignore[index]
        assert extra == {
            "version": v1,
            "sha256": sha,
            "base_model": "tiny-base",
            "base_sha256": stack.base.weights_sha256,
        }
    # Streamed: the headers (the events pass through untouched).
    streamed = client.completions.with_raw_response.create(model=v1, prompt="x", stream=True)
    assert streamed.headers[VERSION_HEADER] == v1
    assert streamed.headers[ADAPTER_SHA256_HEADER] == sha
    assert [c.choices[0].text for c in streamed.parse()] == [f"t{i} " for i in range(5)]
    base = client.completions.with_raw_response.create(model="tiny-base", prompt="x")
    assert base.headers[VERSION_HEADER] == "base"
    assert ADAPTER_SHA256_HEADER not in base.headers
    assert base.headers[BASE_SHA256_HEADER] == stack.base.weights_sha256
    assert base.parse().model_extra["loraplex"]["version"] == "base"  # type: ignore[index]

    # The per-version series count these answers, and the info gauge ties the version to its hash.
    def scrape() -> dict[str, Any]:
        with stack.client() as c:
            return {f.name: f for f in text_string_to_metric_families(c.get("/metrics").text)}

    def counted() -> dict[tuple[str, str], float]:
        out: dict[tuple[str, str], float] = {}
        for s in scrape()["loraplex_requests"].samples:
            if s.name.endswith("_total") and s.labels["status"] == "200":
                key = (s.labels["adapter"], s.labels["version"])
                out[key] = out.get(key, 0) + s.value
        return out

    with stack.client() as c:
        assert (
            c.post("/v1/completions", json={"model": "nope@v9", "prompt": "x"}).status_code == 404
        )
    # (a streamed answer is counted when its relay closes, just after the client's last read)
    stack.wait(lambda: counted() == {("support", "v1"): 3.0, ("tiny-base", "base"): 1.0})
    families = scrape()
    info = {
        (s.labels["adapter"], s.labels["version"]): s.labels["sha256"]
        for s in families["loraplex_adapter_version_info"].samples
    }
    assert info == {("support", "v1"): sha, ("tiny-base", "base"): stack.base.weights_sha256}
    # An unknown name gets no series of its own: the labels stay bounded by registered versions.
    adapters = {s.labels["adapter"] for s in families["loraplex_requests"].samples}
    assert adapters == {"support", "tiny-base", "none"}
