"""The service makes every part in ``__init__`` (no event loop needed) and ``stop`` stops them
whether or not ``start`` ran."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from services.server.config import ServerSettings
from services.server.service import ServerService
from services.server.validation import BaseIdentity
from shared.artifacts import open_store
from shared.basemodel import weights_sha256
from shared.registry.db import open_registry
from tests.server.fakes import make_base


def _service(tmp_path: Path) -> ServerService:
    base_dir = make_base(tmp_path / "base")
    settings = ServerSettings(
        data_dir=tmp_path / "data", base_model="tiny-base", engine_urls=["http://127.0.0.1:1"]
    )
    return ServerService(
        settings,
        registry=open_registry(settings),
        store=open_store(settings),
        base=BaseIdentity("tiny-base", weights_sha256(base_dir), base_dir),
    )


def test_parts_exist_before_start_and_stop_needs_no_start(tmp_path: Path) -> None:
    service = _service(tmp_path)  # outside any event loop
    assert [s.engine for s in service.supervisors] == service.engines
    assert set(service.clients) == {e.id for e in service.engines}
    with pytest.raises(RuntimeError, match="not open"):
        _ = service.clients["engine-0"].session
    asyncio.run(service.stop())


def test_start_then_stop(tmp_path: Path) -> None:
    service = _service(tmp_path)

    async def run() -> None:
        await service.start()
        assert service.clients["engine-0"].session is service.control.session
        await service.stop()
        assert not service.engines[0].ready

    asyncio.run(run())
