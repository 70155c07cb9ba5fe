"""Fixtures for the server tests: a whole server against fake engines (fast), and helpers to put
adapters into the registry without the server's validation (to build bad ones)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.server.api.app import create_app
from services.server.config import ServerSettings
from services.server.service import ServerService
from services.server.validation import BaseIdentity
from shared.artifacts import open_store
from shared.basemodel import ResolvedBaseModel, register_base_model, weights_sha256
from shared.registry import adapters as reg
from shared.registry.db import Registry, open_registry
from tests.server.fakes import FakeEngine, ThreadServer, make_adapter, make_base

ADMIN = {"authorization": "Bearer admin-key"}


@dataclass
class Stack:
    """A running server (in a thread) in front of fake engines, with its registry and store."""

    settings: ServerSettings
    registry: Registry
    store: Any
    base: BaseIdentity
    engines: list[FakeEngine]
    engine_servers: list[ThreadServer]
    server: ThreadServer
    service: ServerService
    tmp: Path
    counter: list[int] = field(default_factory=lambda: [0])

    @property
    def url(self) -> str:
        return self.server.url

    def client(self, *, auth: bool = True, **kwargs: Any) -> httpx.Client:
        """A client that sends the admin key (every scope) unless ``auth=False`` or headers say
        otherwise: once any key is configured, every route but /health and /ready needs one."""
        admin = self.settings.admin_key
        if auth and admin is not None and "headers" not in kwargs:
            kwargs["headers"] = {"authorization": f"Bearer {admin.get_secret_value()}"}
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)

    def adapter(self, **kwargs: Any) -> Path:
        self.counter[0] += 1
        return make_adapter(self.tmp / f"adapter-{self.counter[0]}", seed=self.counter[0], **kwargs)

    def register(self, folder: Path, name: str, *, base: str | None = None) -> str:
        """Store and register ``folder`` as the next version of ``name``, unchecked."""
        sha = self.store.put_dir(folder)
        with self.registry.session() as session:
            row, _ = reg.register_version(
                session,
                reg.NewVersion(
                    adapter_name=name,
                    sha256=sha,
                    base_model=base or self.base.name,
                    rank=4,
                    size_bytes=1000,
                    manifest={},
                ),
            )
            return row.id

    def set_alias(self, name: str, alias: str, vid: str) -> None:
        with self.registry.session() as session:
            reg.set_alias(session, name, alias, vid)

    def reconcile(self) -> dict[str, Any]:
        with self.client() as c:
            r = c.post("/admin/reconcile", headers=ADMIN)
            assert r.status_code == 200, r.text
            return dict(r.json())

    def wait(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError("condition not reached in time")
            time.sleep(0.02)

    def wait_ready(self, timeout: float = 10.0) -> None:
        def ready() -> bool:
            with self.client() as c:
                return c.get("/ready").status_code == 200

        self.wait(ready, timeout)


def build_stack(tmp_path: Path, engines: int = 2, **overrides: Any) -> Stack:
    base_dir = make_base(tmp_path / "base")
    options: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "base_model": "tiny-base",
        "admin_key": "admin-key",
        "reconcile_interval_s": 0.2,
        "engine_health_interval_s": 0.1,
        "engine_health_timeout_s": 1.0,
        "engine_unhealthy_after": 1,
        "engine_restart_backoff_s": 0.1,
        "retry_after_s": 1,
        "max_loras": 1,
        "max_cpu_loras": 3,
        "drain_timeout_s": 5,
    }
    fakes = [FakeEngine() for _ in range(engines)]
    engine_servers = [ThreadServer(f.app()).start() for f in fakes]
    options["engine_urls"] = [s.url for s in engine_servers]
    options.update(overrides)
    settings = ServerSettings(**options)
    registry = open_registry(settings)
    store = open_store(settings)
    resolved = ResolvedBaseModel("tiny-base", base_dir, weights_sha256(base_dir), "test", "llama")
    with registry.session() as session:
        register_base_model(session, resolved)
    base = BaseIdentity(resolved.name, resolved.weights_sha256, base_dir)
    holder: list[ServerService] = []

    def factory() -> ServerService:
        service = ServerService(settings, registry=registry, store=store, base=base)
        holder.append(service)
        return service

    server = ThreadServer(create_app(settings, service_factory=factory)).start()
    return Stack(
        settings, registry, store, base, fakes, engine_servers, server, holder[0], tmp_path
    )


def stop_stack(stack: Stack) -> None:
    stack.server.stop()
    for s in stack.engine_servers:
        s.stop()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = build_stack(tmp_path)
    try:
        s.wait_ready()
        yield s
    finally:
        stop_stack(s)


@pytest.fixture
def one_engine(tmp_path: Path) -> Iterator[Stack]:
    s = build_stack(tmp_path, engines=1)
    try:
        s.wait_ready()
        yield s
    finally:
        stop_stack(s)


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key in [k for k in os.environ if k.startswith("LORAPLEX_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("LORAPLEX_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LORAPLEX_BASE_MODEL", str(make_base(tmp_path / "tiny-base")))
    return tmp_path
