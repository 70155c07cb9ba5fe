"""`services.server.engine_process`: which engine output lines say prompt log-probability requests
may share batches, and the engine's command line and environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.server.config import ServerSettings
from services.server.engine_process import engine_command, engine_env, plugin_reports_safe
from services.server.vllm_plugin import MARKER
from shared.doctor import vllm_on_cpu


# -- which engines need isolation ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("line", "safe"),
    [
        (MARKER, True),
        (f"(EngineCore_DP0 pid=42) INFO 01-01 00:00:00 [vllm_plugin.py:70] {MARKER}", True),
        ("loraplex-cpu-lora-plugin: not needed on cuda", True),
        ("(APIServer pid=7) loraplex-cpu-lora-plugin: not needed on rocm", True),
        ("loraplex-cpu-lora-plugin: failed", False),
        ("INFO Automatically detected platform cuda.", False),
        ("", False),
    ],
)
def test_plugin_report_lines(line: str, safe: bool) -> None:
    assert plugin_reports_safe(line) is safe


def test_the_command_serves_the_base_under_its_name_with_the_lora_limits(tmp_path: Path) -> None:
    settings = ServerSettings(
        data_dir=tmp_path,
        max_loras=2,
        max_cpu_loras=6,
        engine_python="/venv/bin/python",
        engine_extra_args=["--seed", "3"],
    )
    cmd = engine_command(settings, tmp_path / "base", "tiny-base", 8123)
    assert cmd[:3] == ["/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server"]

    def flag(name: str) -> str:
        return cmd[cmd.index(name) + 1]

    assert flag("--model") == str(tmp_path / "base")
    assert flag("--served-model-name") == "tiny-base" and flag("--port") == "8123"
    assert (flag("--max-loras"), flag("--max-cpu-loras")) == ("2", "6")
    assert "--enable-lora" in cmd and cmd[-2:] == ["--seed", "3"]
    assert "--gpu-memory-utilization" not in cmd


def test_the_engine_inherits_no_loraplex_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LORAPLEX_ADMIN_KEY", "secret")
    env, _cpus = engine_env(ServerSettings(data_dir=tmp_path))
    assert not [k for k in env if k.startswith("LORAPLEX_")]
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True" and env["PYTHONUNBUFFERED"] == "1"


def test_a_full_models_engine_reserves_no_adapter_slots_and_has_its_own_kv_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    settings = ServerSettings(data_dir=tmp_path, kv_cache_gib=2, full_kv_cache_gib=1)
    full = engine_command(settings, tmp_path, "big@v1", 8001, lora=False)
    assert "--enable-lora" not in full and "--max-loras" not in full
    assert ("--enforce-eager" in full) is vllm_on_cpu()
    assert full[full.index("--served-model-name") + 1] == "big@v1"
    assert "--enable-lora" in engine_command(settings, tmp_path, "base", 8000)
    assert engine_env(settings, kv_cache_gib=1)[0]["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert engine_env(settings)[0]["VLLM_CPU_KVCACHE_SPACE"] == "2"
