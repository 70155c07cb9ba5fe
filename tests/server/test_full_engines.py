"""Engines of full fine-tunes: start past the check, the engine limit, drain before stop."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.server.config import ServerSettings
from services.server.engine_client import ControlSession, EngineClient
from services.server.engines import Engine, EngineState
from services.server.full_engines import EngineLimit, FullEngines
from services.server.names import VersionInfo
from services.server.proxy import VERSION_HEADER
from services.server.validation import BaseIdentity
from shared.artifacts import open_store
from shared.errors import ValidationError
from shared.registry import adapters as reg
from shared.registry.versions import FULL_KIND
from tests.server.conftest import ADMIN, Stack, build_stack, stop_stack
from tests.server.fakes import FakeEngine, ThreadServer, make_base, make_info
from tests.shared.test_full_model_dir import make_full


class FakeSupervisor:
    def __init__(self, engine: Engine, folder: Path | None, log: list[str]) -> None:
        self.engine = engine
        self.folder = folder
        self.log = log

    def start(self) -> None:
        self.engine.state = EngineState.READY
        self.log.append(f"start {self.engine.served_name}")

    async def stop(self) -> None:
        self.engine.state = EngineState.STOPPED
        self.log.append(f"stop {self.engine.served_name} in_flight={self.engine.in_flight}")


def full_info(vid: str, sha: str = "a" * 64, base: str = "tiny-base") -> VersionInfo:
    return dataclasses.replace(make_info(vid), sha256=sha, base_model=base, rank=0, kind="full")


def make_pool(tmp_path: Path, **overrides: Any) -> tuple[FullEngines, list[str], Any]:
    base_dir = make_base(tmp_path / "base")
    options: dict[str, Any] = {"data_dir": tmp_path / "data", "max_model_engines": 3}
    settings = ServerSettings(**(options | overrides))
    store = open_store(settings)
    log: list[str] = []
    changes: list[int] = []

    def supervisor(engine: Engine, _: EngineClient, folder: Path | None) -> Any:
        return FakeSupervisor(engine, folder, log)

    pool = FullEngines(
        settings,
        store,
        BaseIdentity("tiny-base", "b" * 64, base_dir),
        ControlSession(),
        base_engines=1,
        on_ready=lambda _: None,
        on_change=lambda: changes.append(1),
        make_supervisor=supervisor,
    )
    return pool, log, store


def test_a_checked_version_gets_an_engine_serving_it_under_its_id(tmp_path: Path) -> None:
    pool, log, store = make_pool(tmp_path)
    sha = store.put_dir(make_full(pool.base.path, tmp_path / "full"))  # type: ignore[arg-type]
    info = full_info("big@v1", sha)
    asyncio.run(pool.ensure(info))
    asyncio.run(pool.ensure(info))  # idempotent: one engine per version
    assert log == ["start big@v1"]
    assert [e.served_name for e in pool.serving("big@v1")] == ["big@v1"]
    assert pool.ready_versions() == {"big@v1": info}
    assert pool.running == 2


def test_a_bad_folder_or_another_base_is_refused_before_any_start(tmp_path: Path) -> None:
    pool, log, store = make_pool(tmp_path)
    # A base with a chat template: its fine-tune must carry one too (the chat route needs it).
    (pool.base.path / "chat_template.jinja").write_text("{{ messages }}")  # type: ignore[operator]
    folder = make_full(pool.base.path, tmp_path / "full")  # type: ignore[arg-type]
    (folder / "chat_template.jinja").unlink()
    sha = store.put_dir(folder)
    with pytest.raises(ValidationError) as caught:
        asyncio.run(pool.ensure(full_info("big@v1", sha, base="other-base")))
    details = " ".join(caught.value.details)
    assert "other-base" in details and "chat template" in details
    with pytest.raises(ValidationError, match="missing from the store"):
        asyncio.run(pool.ensure(full_info("big@v2", "c" * 64)))
    assert log == [] and pool.slots == {} and pool.running == 1


def test_the_engine_limit_counts_the_base_and_names_what_runs(tmp_path: Path) -> None:
    pool, log, store = make_pool(tmp_path, max_model_engines=2)
    sha = store.put_dir(make_full(pool.base.path, tmp_path / "full"))  # type: ignore[arg-type]
    asyncio.run(pool.ensure(full_info("big@v1", sha)))
    with pytest.raises(EngineLimit) as caught:
        asyncio.run(pool.ensure(full_info("big@v2", sha)))
    assert "max_model_engines=2" in caught.value.message
    assert "full-1=big@v1" in caught.value.message
    assert log == ["start big@v1"]


def test_retire_stops_routing_at_once_and_stops_the_engine_after_its_requests(
    tmp_path: Path,
) -> None:
    pool, log, store = make_pool(tmp_path)
    sha = store.put_dir(make_full(pool.base.path, tmp_path / "full"))  # type: ignore[arg-type]

    async def scenario() -> None:
        await pool.ensure(full_info("big@v1", sha))
        engine = pool.serving("big@v1")[0]
        engine.in_flight = 2  # two requests hold leases on it
        retiring = asyncio.create_task(pool.retire("big@v1"))
        await asyncio.sleep(0.2)
        assert pool.serving("big@v1") == [] and pool.ready_versions() == {}
        assert log == ["start big@v1"]  # still draining
        engine.in_flight = 0
        await asyncio.wait_for(retiring, 5)

    asyncio.run(scenario())
    assert log == ["start big@v1", "stop big@v1 in_flight=0"]
    assert pool.slots == {} and pool.running == 1


def test_needed_again_while_draining_keeps_the_engine(tmp_path: Path) -> None:
    pool, log, store = make_pool(tmp_path)
    sha = store.put_dir(make_full(pool.base.path, tmp_path / "full"))  # type: ignore[arg-type]
    info = full_info("big@v1", sha)

    async def scenario() -> None:
        await pool.ensure(info)
        pool.serving("big@v1")[0].in_flight = 1
        retiring = asyncio.create_task(pool.retire("big@v1"))
        await asyncio.sleep(0.1)
        await pool.ensure(info)  # a rollback before the drain ended
        await asyncio.wait_for(retiring, 5)

    asyncio.run(scenario())
    assert log == ["start big@v1"]
    assert pool.ready_versions() == {"big@v1": info}


def test_attach_mode_needs_the_versions_engine_url(tmp_path: Path) -> None:
    pool, log, _ = make_pool(
        tmp_path,
        engine_urls=["http://base:8000"],
        full_engine_urls={"big@v1": "http://big-v1:8000"},
    )
    asyncio.run(pool.ensure(full_info("big@v1")))
    assert [e.url for e in pool.serving("big@v1")] == ["http://big-v1:8000"]
    assert not pool.serving("big@v1")[0].managed
    with pytest.raises(ValidationError, match="full_engine_urls"):
        asyncio.run(pool.ensure(full_info("big@v2")))
    assert log == ["start big@v1"]


# -- through the server, with fake engines in attach mode ---------------------------------------
@dataclasses.dataclass
class FullStack:
    stack: Stack
    fakes: dict[str, FakeEngine]
    servers: list[ThreadServer]


def register_full(stack: Stack, name: str, folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"folder": folder.name}))  # distinct bytes
    sha = stack.store.put_dir(folder)
    with stack.registry.session() as session:
        row, _ = reg.register_version(
            session,
            reg.NewVersion(
                adapter_name=name,
                sha256=sha,
                base_model=stack.base.name,
                rank=0,
                size_bytes=1000,
                manifest={"kind": FULL_KIND},
            ),
        )
        return row.id


@pytest.fixture
def full_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FullStack]:
    # Version ids are assigned in order, so the engines can be named before registration.
    fakes = {vid: FakeEngine(base=vid) for vid in ("big@v1", "big@v2")}
    servers = [ThreadServer(f.app()).start() for f in fakes.values()]
    urls = {vid: s.url for vid, s in zip(fakes, servers, strict=True)}
    stack = build_stack(tmp_path, engines=1, full_engine_urls=urls, max_model_engines=3)
    try:
        for i, vid in enumerate(fakes):
            assert register_full(stack, "big", tmp_path / f"full-{i}") == vid
        stack.wait_ready()
        yield FullStack(stack, fakes, servers)
    finally:
        stop_stack(stack)
        for s in servers:
            s.stop()


def ask(stack: Stack, model: str) -> httpx.Response:
    with stack.client() as c:
        return c.post("/v1/completions", json={"model": model, "prompt": "x", "max_tokens": 2})


def test_a_full_alias_routes_to_its_own_engine_and_adapters_to_the_base(
    full_stack: FullStack,
) -> None:
    stack, fakes = full_stack.stack, full_stack.fakes
    adapter = stack.register(stack.adapter(), "support")
    stack.set_alias("support", "prod", adapter)
    stack.set_alias("big", "prod", "big@v1")
    stack.reconcile()
    stack.wait(lambda: stack.service.names.table.aliases.get(("big", "prod")) == "big@v1")
    for model in ("big", "big:prod", "big@v1"):
        r = ask(stack, model)
        assert r.status_code == 200, r.text
        assert r.headers[VERSION_HEADER] == "big@v1"
        assert r.headers["x-loraplex-engine"] == "full-1"
        assert r.json()["model"] == "big@v1"
    assert [q["model"] for q in fakes["big@v1"].requests] == ["big@v1"] * 3
    r = ask(stack, "support")
    assert r.headers[VERSION_HEADER] == adapter and r.headers["x-loraplex-engine"] == "engine-0"
    assert stack.engines[0].requests[-1]["model"] == adapter
    assert "big@v1" not in stack.engines[0].loads  # never loaded as an adapter
    with stack.client() as c:
        cards = {m["id"]: m for m in c.get("/v1/models").json()["data"]}
    assert cards["tiny-base"]["parent"] is None
    assert cards["big@v1"]["parent"] == "tiny-base"
    assert cards["big@v1"]["loraplex"]["version_kind"] == "full"
    assert cards["big:prod"]["loraplex"]["target"] == "big@v1"
    assert cards[adapter]["loraplex"]["version_kind"] == "lora"
    with stack.client() as c:
        engines = [e["engine"] for e in c.get("/v1/adapters").json()["data"]]
    assert engines == ["engine-0", "full-1"]
    # /metrics: the full version's engine has its state gauges and its own series, by engine.
    with stack.client() as c:
        families = {f.name: f for f in text_string_to_metric_families(c.get("/metrics").text)}
    up = {s.labels["engine"]: s.value for s in families["loraplex_engine_up"].samples}
    assert up == {"engine-0": 1.0, "full-1": 1.0}
    served = {
        s.labels["engine"]: s.labels["model_name"] for s in families["vllm:prompt_tokens"].samples
    }
    assert served == {"engine-0": "tiny-base", "full-1": "big@v1"}


def test_a_full_version_no_alias_names_is_not_started_on_demand(full_stack: FullStack) -> None:
    r = ask(full_stack.stack, "big@v2")
    assert r.status_code == 422, r.text
    assert "alias or a pin" in r.json()["error"]["message"]
    assert full_stack.fakes["big@v2"].requests == []


def test_hot_swap_between_full_versions_fails_no_request(full_stack: FullStack) -> None:
    stack, fakes = full_stack.stack, full_stack.fakes
    for fake in fakes.values():
        fake.chunk_delay = 0.02
    stack.set_alias("big", "prod", "big@v1")
    stack.reconcile()
    stack.wait(lambda: stack.service.names.table.aliases.get(("big", "prod")) == "big@v1")
    answers: list[tuple[int, str]] = []
    stop = threading.Event()

    def traffic() -> None:
        with stack.client() as c:
            while not stop.is_set():
                r = c.post("/v1/completions", json={"model": "big", "prompt": "x", "stream": True})
                answers.append((r.status_code, r.headers.get(VERSION_HEADER, "")))

    threads = [threading.Thread(target=traffic) for _ in range(4)]
    for t in threads:
        t.start()
    stack.wait(lambda: len(answers) > 10)
    with stack.client() as c:
        r = c.put("/admin/aliases/big/prod", json={"version": "big@v2"}, headers=ADMIN)
        assert r.status_code == 200, r.text
        assert r.json()["served"] == "big@v2"
    moved = len(answers)
    stack.wait(lambda: len(answers) > moved + 10)
    with stack.client() as c:  # rollback is the same move back
        r = c.post("/admin/aliases/big/prod/rollback", json={}, headers=ADMIN)
        assert r.status_code == 200, r.text
    stack.wait(lambda: stack.service.names.table.aliases.get(("big", "prod")) == "big@v1")
    back = len(answers)
    stack.wait(lambda: len(answers) > back + 10)
    stop.set()
    for t in threads:
        t.join()
    assert [a for a in answers if a[0] != 200] == []
    served = [v for _, v in answers]
    assert served[0] == "big@v1" and "big@v2" in served and served[-1] == "big@v1"
    # The retired engine got nothing once the table moved away from it, and v2 was stopped.
    stack.wait(lambda: "big@v2" not in stack.service.full.slots)
    assert all(fake.active == 0 for fake in fakes.values())


def test_an_alias_moves_between_an_adapter_and_a_full_version(full_stack: FullStack) -> None:
    stack = full_stack.stack
    adapter = stack.register(stack.adapter(), "big")  # big@v3, an adapter of the same name
    stack.set_alias("big", "prod", adapter)
    stack.reconcile()
    assert ask(stack, "big").headers[VERSION_HEADER] == adapter
    stack.set_alias("big", "prod", "big@v2")
    stack.reconcile()
    stack.wait(lambda: stack.service.names.table.aliases.get(("big", "prod")) == "big@v2")
    assert ask(stack, "big").headers["x-loraplex-engine"] == "full-1"
    stack.wait(lambda: adapter not in stack.engines[0].loras)  # the adapter was unloaded
    stack.set_alias("big", "prod", adapter)
    stack.reconcile()
    stack.wait(lambda: stack.service.names.table.aliases.get(("big", "prod")) == adapter)
    assert ask(stack, "big").headers[VERSION_HEADER] == adapter
    stack.wait(lambda: stack.service.full.slots == {})


def test_past_the_engine_limit_the_alias_is_named_and_keeps_nothing_half_done(
    full_stack: FullStack,
) -> None:
    stack = full_stack.stack
    stack.service.settings.max_model_engines = 2  # the base's engine and one full model
    stack.set_alias("big", "prod", "big@v1")
    stack.set_alias("big", "canary", "big@v2")
    stack.reconcile()
    stack.wait(lambda: stack.service.names.table.aliases.get(("big", "prod")) == "big@v1")
    with stack.client() as c:
        report = c.get("/ready").json()
    reason = report["reasons"]["big@v2"]
    assert "big:canary" in reason and "max_model_engines=2" in reason, report
    r = ask(stack, "big:canary")
    assert r.status_code == 422
    assert "big:canary" in r.json()["error"]["message"]
    assert ask(stack, "big").status_code == 200
    with stack.client() as c:
        r = c.put("/admin/aliases/big/prod", json={"version": "big@v2"}, headers=ADMIN)
    assert r.status_code == 422 and "max_model_engines" in r.text
    assert stack.service.names.table.aliases[("big", "prod")] == "big@v1"


def test_a_version_with_an_engine_url_is_attached_even_when_the_base_is_managed(
    tmp_path: Path,
) -> None:
    pool, log, _ = make_pool(tmp_path, full_engine_urls={"big@v1": "http://big-v1:8000"})
    asyncio.run(pool.ensure(full_info("big@v1", "c" * 64)))  # no folder here: its pod has it
    assert [(e.url, e.managed) for e in pool.serving("big@v1")] == [("http://big-v1:8000", False)]
    assert log == ["start big@v1"]
