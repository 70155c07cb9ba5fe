"""Acceptance: the embedded base and a full fine-tune served at once, each behind an alias, through
the openai SDK, with real vLLM engines; then the full alias moves to another full version while
requests stream, and none fails.

Engines: the base's (with an adapter on it) and the full version's; the hot swap starts the
second full version's engine before the switch, so three run for the minute it takes to start
(max_model_engines=3). Each is kept small: 512 tokens of context, 1 GiB of KV cache (the least vLLM CPU takes), 8
sequences. Full versions are the base with seeded noise (``tests/full_models.py``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from services.server.api.app import create_app
from services.server.config import ServerSettings
from services.server.importer import base_identity, import_adapter
from services.server.proxy import VERSION_HEADER
from services.server.validation import AdapterValidator
from shared.artifacts import open_store
from shared.basemodel import ResolvedBaseModel
from shared.registry import adapters as reg
from shared.registry.db import open_registry
from tests.full_models import register_full_version, write_full_model
from tests.server.conftest import ADMIN
from tests.server.fakes import ThreadServer
from tests.server.test_real_engine import build_peft_adapters

# Two vLLM engines for the side-by-side test (`make test`); the hot swap starts a third, about 6
# more minutes on a loaded 2-core machine, so it is `heavy` (`make test-all`).
pytestmark = [pytest.mark.slow]

BASE = "smollm2-135m-instruct"
QUESTION: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Name three colours of the rainbow."}
]


@dataclass
class Served:
    url: str
    base: str
    adapter: str
    full: list[str]
    service: Any

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key="admin-key", max_retries=0)

    def wait(self, what: str, predicate: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                with httpx.Client(base_url=self.url, headers=ADMIN) as c:
                    ready = c.get("/ready").json()
                raise AssertionError(f"{what} not reached in {timeout}s; /ready: {ready}")
            time.sleep(0.5)


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, base_model: ResolvedBaseModel
) -> Iterator[Served]:
    tmp = Path(tmp_path_factory.mktemp("multi"))
    models = tmp / "data" / "models" / base_model.path.name
    models.mkdir(parents=True)
    for item in base_model.path.iterdir():
        os.link(item, models / item.name)
    settings = ServerSettings(
        data_dir=tmp / "data",
        admin_key="admin-key",
        engine_count=1,
        max_model_engines=3,
        kv_cache_gib=1,  # vLLM CPU reads whole GiB
        full_kv_cache_gib=1,
        max_model_len=512,
        max_num_seqs=8,
        max_loras=1,
        max_cpu_loras=2,
        reconcile_interval_s=0.5,
        engine_startup_timeout_s=500,
    )
    registry = open_registry(settings)
    store = open_store(settings)
    base = base_identity(settings, registry)
    validator = AdapterValidator(store, base, settings.max_lora_rank)
    assert base.path is not None
    (adapter_dir,) = build_peft_adapters(base.path, tmp, seeds=[1])
    adapter = import_adapter(registry, store, validator, adapter_dir, "support")[0].id
    full = [
        register_full_version(
            settings,
            base_model,
            write_full_model(base_model, tmp / f"full-{seed}", seed=seed, noise=0.05),
            name="big",
        )
        for seed in (1, 2)
    ]
    with registry.session() as session:
        reg.set_alias(session, "support", "prod", adapter)
        reg.set_alias(session, "big", "prod", full[0])
    registry.dispose()
    app = create_app(settings)
    server = ThreadServer(app).start(timeout=60)
    live = Served(server.url, base.name, adapter, full, None)
    try:
        live.service = app.state.service
        # Ready as /ready says it: the base's engine up with the adapter loaded and the full
        # alias served by its own engine (either engine may be ready first).
        live.wait(
            "the base, its adapter and the full alias served",
            lambda: (
                live.service.ready()[0]
                and live.service.names.table.aliases.get(("big", "prod")) == full[0]
            ),
            timeout=900,
        )
        yield live
    finally:
        server.stop()


def greedy(client: openai.OpenAI, model: str) -> tuple[str, str, str]:
    """(answer, version header, engine header) for the fixed question, greedy."""
    raw = client.chat.completions.with_raw_response.create(
        model=model,
        messages=QUESTION,
        max_tokens=16,
        temperature=0,
    )
    answer = raw.parse().choices[0].message.content or ""
    return answer, raw.headers[VERSION_HEADER], raw.headers["x-loraplex-engine"]


def test_base_adapter_and_full_model_answer_side_by_side(served: Served) -> None:
    client = served.client()
    base_text, base_version, base_engine = greedy(client, BASE)
    adapter_text, adapter_version, adapter_engine = greedy(client, "support")
    full_text, full_version, full_engine = greedy(client, "big")
    assert (base_version, adapter_version, full_version) == ("base", served.adapter, served.full[0])
    assert base_engine == adapter_engine == "engine-0" and full_engine.startswith("full-")
    assert base_text and adapter_text and full_text
    assert full_text != base_text, "the full fine-tune answered exactly like the base"
    assert greedy(client, served.full[0])[0] == full_text  # by version id: the same engine
    cards = {m.id: m for m in client.models.list().data}
    parents = {k: getattr(v, "parent", None) for k, v in cards.items()}
    assert parents[BASE] is None
    for name in (served.adapter, "support", "support:prod", served.full[0], "big", "big:prod"):
        assert parents[name] == BASE, (name, parents)
    assert cards[served.full[0]].model_extra["loraplex"]["version_kind"] == "full"  # type: ignore[index]


@pytest.mark.heavy
def test_full_alias_hot_swap_under_a_stream_of_requests_fails_none(served: Served) -> None:
    client = served.client()
    v1, v2 = served.full
    before = greedy(client, "big")[0]
    results: list[tuple[str, str]] = []
    failures: list[str] = []
    stop = threading.Event()

    def traffic() -> None:
        own = served.client()
        while not stop.is_set():
            try:
                raw = own.chat.completions.with_raw_response.create(
                    model="big", messages=QUESTION, max_tokens=8, temperature=0, stream=True
                )
                version = raw.headers[VERSION_HEADER]
                text = "".join(
                    chunk.choices[0].delta.content or "" for chunk in raw.parse() if chunk.choices
                )
                results.append((version, text))
            except Exception as exc:
                failures.append(repr(exc))

    threads = [threading.Thread(target=traffic) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        served.wait("traffic", lambda: len(results) >= 2, timeout=120)
        with httpx.Client(base_url=served.url, headers=ADMIN, timeout=600) as c:
            r = c.put("/admin/aliases/big/prod", json={"version": v2})
        assert r.status_code == 200, r.text
        assert r.json()["served"] == v2
        moved = len(results)
        served.wait("answers from v2", lambda: len(results) >= moved + 3, timeout=120)
        served.wait("v1's engine stopped", lambda: v1 not in served.service.full.slots, 120)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=120)
    assert failures == []
    versions = [v for v, _ in results]
    assert versions[0] == v1 and versions[-1] == v2
    assert all(v in (v1, v2) for v in versions)
    after, version, _ = greedy(client, "big")
    assert version == v2 and after != before, "v2 answered exactly like v1"
