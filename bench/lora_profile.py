"""Where one decode step's LoRA time goes on CPU: vLLM's ops, our previous ops, the grouped ops.

Runs the LoRA calls of one decode step of the embedded model (SmolLM2-135M: 30 layers, each with
qkv and gate_up as merged column-parallel layers and o and down as row-parallel ones) exactly as
vLLM's layers make them: ``add_lora_linear`` (vLLM's own shrinks into zeroed float32 buffers and
expands) on a real ``PunicaWrapperCPU`` whose metadata came from a ``LoRAMapping``. The base
linears of the same step (the same shapes, no LoRA) are timed alongside as the yardstick;
attention, norms and sampling are not, so the real step is longer (the base figure of
``bench/multi_adapter.py``).

    python bench/lora_profile.py [--tokens 32] [--rank 16] [--dtype bfloat16] [--steps 20]

Prints ms per step per component and the number of torch ops per step for each variant and
batch (base only, one adapter, 8 mixed, 32 mixed) and records them via bench/_report.py.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.server import lora_ops

HIDDEN, INTER, Q, KV, LAYERS = 576, 1536, 576, 192, 30
# (output slices, input width, merged column layer?) of each LoRA linear of one decoder layer
LINEARS: list[tuple[tuple[int, ...], int, bool]] = [
    ((Q, KV, KV), HIDDEN, True),  # qkv_proj
    ((HIDDEN,), Q, False),  # o_proj
    ((INTER, INTER), HIDDEN, True),  # gate_up_proj
    ((HIDDEN,), INTER, False),  # down_proj
]


def previous_per_row(
    inputs: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """The plugin's op before the grouped kernels (one masked matmul per adapter per call)."""
    if weights.dim() == 4:
        weights = weights.squeeze(dim=1)
    out = torch.zeros((inputs.size(0), weights.size(-2)), dtype=dtype)
    for slot in torch.unique(indices).tolist():
        if slot < 0:
            continue
        weight_t = weights[slot].to(dtype).t()
        mask = indices == slot
        if bool(mask.all()):
            out = inputs.to(dtype) @ weight_t
        else:
            sel = mask.nonzero().squeeze(1)
            out[sel] = inputs[sel].to(dtype) @ weight_t
    return out


def _previous_shrink(x: Any, w: Any, out: Any, idx: Any, scale: float = 1.0) -> None:
    res = previous_per_row(x, w, idx, out.dtype)
    out[:, : res.shape[1]] = scale * res


def _previous_expand_slice(
    x: Any, w: Any, out: Any, idx: Any, off: int, size: int, add: bool = True
) -> None:
    res = previous_per_row(x, w, idx, out.dtype)
    if add:
        out[:, off : off + size] += res
    else:
        out[:, off : off + size] = res


@contextlib.contextmanager
def variant(name: str) -> Iterator[type]:
    """The wrapper class whose methods the layers would call under ``name``."""
    import vllm.lora.punica_wrapper.punica_cpu as cpu

    if name == "grouped":

        class Grouped(cpu.PunicaWrapperCPU):
            add_shrink = lora_ops.add_shrink
            add_expand = lora_ops.add_expand
            add_lora_linear = lora_ops.add_lora_linear

        yield Grouped
        return
    # punica_cpu calls the ops it imported by name; swap them for the previous plugin's.
    ops: dict[str, Any] = vars(cpu)
    saved = (ops["bgmv_shrink"], ops["bgmv_expand_slice"])
    if name == "previous":
        ops["bgmv_shrink"], ops["bgmv_expand_slice"] = _previous_shrink, _previous_expand_slice
    try:
        yield cpu.PunicaWrapperCPU
    finally:
        ops["bgmv_shrink"], ops["bgmv_expand_slice"] = saved


def make_weights(
    max_loras: int, rank: int, dtype: torch.dtype, adapter_rank: int
) -> list[list[tuple[torch.Tensor, tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]]]:
    gen = torch.Generator().manual_seed(0)
    layers = []
    for _ in range(LAYERS):
        per = []
        for slices, width, _merged in LINEARS:
            base = torch.randn(sum(slices), width, generator=gen).to(dtype) * 0.02
            a = tuple(
                (torch.randn(max_loras, 1, rank, width, generator=gen) * 0.02).to(dtype)
                for _ in slices
            )
            b = tuple(
                (torch.randn(max_loras, 1, s, rank, generator=gen) * 0.02).to(dtype) for s in slices
            )
            for t in a:  # vLLM pads each adapter to max_lora_rank with zeros
                t[:, :, adapter_rank:, :] = 0
            for t in b:
                t[..., adapter_rank:] = 0
            per.append((base, a, b))
        layers.append(per)
    return layers


def wrapper_for(cls: type, slots: list[int], max_loras: int) -> Any:
    from vllm.lora.layers import LoRAMapping

    wrapper = cls(max_num_batched_tokens=max(256, len(slots)), max_batches=256, device="cpu")
    ids = tuple(s + 1 for s in slots)  # LoRA ids; 0 = none, slot s holds id s + 1
    wrapper.update_metadata(
        LoRAMapping(ids, ids, is_prefill=False), [i + 1 for i in range(max_loras)], max_loras, 0
    )
    return wrapper


def one_step(
    wrapper: Any, layers: Any, x: dict[int, torch.Tensor], clock: dict[str, float]
) -> None:
    for per in layers:
        for (slices, width, _merged), (base, a, b) in zip(LINEARS, per, strict=True):
            inp = x[width]
            t0 = time.perf_counter()
            y = torch.nn.functional.linear(inp, base)
            t1 = time.perf_counter()
            wrapper.add_lora_linear(y, inp, a, b, 1.0, slices)
            t2 = time.perf_counter()
            clock["base linears"] += t1 - t0
            clock["lora"] += t2 - t1


def measure(
    name: str, slots: list[int], max_loras: int, args: argparse.Namespace
) -> dict[str, Any]:
    """Best of ``steps`` (the least disturbed by the host's other load) per component, and the
    op-level breakdown of one step from torch.profiler."""
    dtype = getattr(torch, args.dtype)
    layers = make_weights(max_loras, args.rank, dtype, args.adapter_rank)
    steps = args.steps
    gen = torch.Generator().manual_seed(1)
    x = {w: torch.randn(len(slots), w, generator=gen).to(dtype) for w in (HIDDEN, INTER)}
    with variant(name) as cls:
        best = {"base linears": float("inf"), "lora": float("inf"), "metadata": float("inf")}
        for i in range(steps + 1):
            t0 = time.perf_counter()
            wrapper = wrapper_for(cls, slots, max_loras)
            if name == "grouped":
                lora_ops.cached_grouping(wrapper, wrapper.token_lora_indices)
            meta = time.perf_counter() - t0
            clock = {"base linears": 0.0, "lora": 0.0}
            one_step(wrapper, layers, x, clock)
            if i:  # the first step packs the weights (once per adapter load)
                clock["metadata"] = meta
                best = {k: min(v, clock[k]) for k, v in best.items()}
        ops, top = op_breakdown(
            lambda: one_step(wrapper, layers, x, {"base linears": 0, "lora": 0})
        )
    return {
        "ms_per_step": {k: round(1000 * v, 2) for k, v in best.items()},
        "torch_ops_per_step": ops,
        "top_ops_ms_per_step": top,
    }


def op_breakdown(step: Callable[[], None]) -> tuple[int, dict[str, str]]:
    """Top-level torch calls per step (nested ones not counted twice), and the six ops with the
    most self time: 'ms (calls)'."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = prof.events()
    top_level = sum(1 for e in events if e.cpu_parent is None)
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:6]
    return top_level, {e.key: f"{e.self_cpu_time_total / 1000:.1f} ({e.count})" for e in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rank", type=int, default=16, help="max_lora_rank (the stacked width)")
    parser.add_argument("--adapter-rank", type=int, default=8, help="rank the adapters use")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--variants", default="vllm,previous,grouped")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: fewer stalls on a shared host)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n = args.tokens
    batches = {
        "base only": ([-1] * n, 8),
        "one adapter": ([0] * n, 8),
        "8 mixed": ([i % 8 for i in range(n)], 8),
        "32 mixed": ([i % 32 for i in range(n)], 32),
    }
    table: dict[str, dict[str, Any]] = {}
    for variant_name in args.variants.split(","):
        for batch, (slots, max_loras) in batches.items():
            got = measure(variant_name, slots, max_loras, args)
            table[f"{variant_name} / {batch}"] = got
            ms = got["ms_per_step"]
            print(
                f"{variant_name:9s} {batch:12s} base linears {ms['base linears']:7.2f} ms  "
                f"lora {ms['lora']:7.2f} ms  metadata {ms['metadata']:5.2f} ms  "
                f"torch calls/step {got['torch_ops_per_step']}  top: {got['top_ops_ms_per_step']}",
                flush=True,
            )
    publish(args, table)


def publish(args: argparse.Namespace, table: dict[str, dict[str, Any]]) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from _report import record

    figures: dict[str, Any] = {
        "step": f"{args.tokens} decode tokens, 30 layers x 4 LoRA linears, adapters of rank "
        f"{args.adapter_rank} in vLLM slots of rank {args.rank}, "
        f"{args.dtype}, {torch.get_num_threads()} threads",
    }
    ratios: dict[str, float] = {}
    for key, got in table.items():
        ms = got["ms_per_step"]
        figures[f"{key}: LoRA ms/step (base linears ms/step, torch calls/step)"] = (
            f"{ms['lora']} ({ms['base linears']}, {got['torch_ops_per_step']})"
        )
        if ms["base linears"]:
            ratios[f"{key}: LoRA time / base linears time"] = round(
                ms["lora"] / ms["base linears"], 3
            )
    record(
        "lora_profile",
        title="LoRA ops per decode step on CPU (vLLM's, our previous, grouped)",
        baseline="the base linears of the same step, timed alongside",
        figures=figures,
        ratios=ratios,
        targets={},
        notes="Synthetic step with the embedded model's shapes through a real PunicaWrapperCPU; "
        "attention, norms and sampling are not included (see multi_adapter for the real step).",
        extra={"table": table},
    )


if __name__ == "__main__":
    main()
