"""Throughput of one engine through the server: base model only, one adapter, eight and 32
adapters mixed, with the loraplex vLLM plugin and without it (vLLM's stock CPU LoRA ops), side by
side in one run (one engine at a time), plus the time to load an adapter.

The same workload (REQUESTS streaming completions, fixed prompts, MAX_TOKENS generated tokens each,
CONCURRENCY in flight) runs once per row; in the mixed rows request i uses adapter i mod 8 (or
i mod 32). The engine runs with max_loras = 32 so every adapter of a row fits in one batch.

    python bench/multi_adapter.py [--requests 32] [--max-tokens 64] [--concurrency 32]
        [--rounds 3] [--modes plugin,without]

The rows run interleaved, ``--rounds`` times, and each row's figure is its median round.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.loadgen import (
    completion_bodies,
    machine,
    prepare_data_dir,
    register_adapters,
    run_streams,
    server_process,
    write_result,
)

BASE = "smollm2-135m-instruct"


ADAPTERS = 32
TARGETS = {"one_adapter": 0.9, "eight_adapters_mixed": 0.8}


def run_mode(
    data_dir: Path, versions: list[str], args: argparse.Namespace, *, plugin: bool
) -> dict[str, Any]:
    """Every row on one engine; the adapters are loaded (and timed) before the first row."""
    env = {
        "LORAPLEX_KV_CACHE_GIB": "2",
        "LORAPLEX_MAX_LORAS": str(ADAPTERS),
        "LORAPLEX_MAX_CPU_LORAS": str(ADAPTERS),
        "LORAPLEX_MAX_NUM_SEQS": str(max(32, args.concurrency)),
    }
    if not plugin:
        env["VLLM_PLUGINS"] = ""  # an allowlist that matches no plugin
    runs: dict[str, Any] = {}
    load_s: list[float] = []
    with server_process(data_dir, port=args.port, env=env) as server:
        for vid in versions:
            started = time.perf_counter()
            server.admin("POST", "/admin/adapters/load", {"model": vid})
            load_s.append(time.perf_counter() - started)
        url = server.url + "/v1/completions"
        key = server.infer_headers
        # warm-up (also the first step with each adapter in a slot)
        asyncio.run(run_streams(url, completion_bodies(BASE, 8, 8), concurrency=8, headers=key))
        asyncio.run(
            run_streams(url, completion_bodies(versions, 32, 8), concurrency=32, headers=key)
        )
        rows = [
            ("base", BASE),
            ("one_adapter", versions[0]),
            ("eight_adapters_mixed", versions[:8]),
            ("thirty_two_adapters_mixed", versions),
        ]
        # Rows interleaved round by round, each figure the median of its rounds: a row of a
        # few seconds on a shared 2-core host moves by tens of percent from one run to the next,
        # and interleaving puts every row through the same drift.
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in rows}
        for round_no in range(1, args.rounds + 1):
            for name, models in rows:
                res = asyncio.run(
                    run_streams(
                        url,
                        completion_bodies(models, args.requests, args.max_tokens),
                        concurrency=args.concurrency,
                        headers=key,
                    )
                )
                got = res.summary()
                rounds[name].append(got)
                print(
                    f"{'plugin' if plugin else 'without plugin'} round {round_no} {name}: "
                    f"{got['tokens_per_s']} tok/s, median TTFT {got['ttft_median_s']}s, "
                    f"failed {got['failed']}",
                    flush=True,
                )
        for name, got_rounds in rounds.items():
            ordered = sorted(got_rounds, key=lambda r: r["tokens_per_s"])
            runs[name] = {
                **ordered[len(ordered) // 2],
                "tokens_per_s_rounds": [r["tokens_per_s"] for r in got_rounds],
                "failed": sum(r["failed"] for r in got_rounds),
            }
    base_tps = runs["base"]["tokens_per_s"] or 1.0
    return {
        "runs": runs,
        "relative_to_base": {k: round(v["tokens_per_s"] / base_tps, 3) for k, v in runs.items()},
        "adapter_load_s": {
            "median": round(statistics.median(load_s), 3),
            "max": round(max(load_s), 3),
            "count": len(load_s),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of all rows; each figure is the median"
    )
    parser.add_argument("--port", type=int, default=18313)
    parser.add_argument(
        "--modes",
        default="plugin,without",
        help="'plugin' (the loraplex vLLM plugin) and/or 'without' (stock CPU LoRA ops)",
    )
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="loraplex-bench-multi-"))
    prepare_data_dir(data_dir)
    versions = register_adapters(
        data_dir, [(f"tenant{i}", i + 1) for i in range(ADAPTERS)], rank=args.rank
    )
    workload = {
        "requests": args.requests,
        "max_tokens": args.max_tokens,
        "concurrency": args.concurrency,
        "rank": args.rank,
        "max_loras": ADAPTERS,
        "rounds": args.rounds,
    }
    for mode in args.modes.split(","):
        plugin = mode == "plugin"
        result = {
            "benchmark": "multi_adapter",
            "workload": workload,
            "machine": machine(),
            **run_mode(data_dir, versions, args, plugin=plugin),
        }
        name = "multi_adapter" if plugin else "multi_adapter_without_plugin"
        path = write_result(name, result)
        publish(name, result)
        print(f"{name}: relative to base {result['relative_to_base']}; written to {path}")


def publish(name: str, result: dict[str, Any]) -> None:
    """The figures for docs/benchmarks.md (see bench/_report.py)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from _report import record

    w = result["workload"]
    record(
        name,
        title="Multi-adapter throughput" + (" (without the plugin)" if "without" in name else ""),
        baseline="the base model alone on the same engine and workload",
        figures={
            "workload": f"{w['requests']} requests x {w['max_tokens']} tokens, "
            f"{w['concurrency']} concurrent, rank {w['rank']}, max_loras {w['max_loras']}, "
            f"median of {w['rounds']} interleaved rounds",
            **{
                f"{k} tokens/s (median; rounds)": f"{v['tokens_per_s']} ("
                + ", ".join(str(r) for r in v["tokens_per_s_rounds"])
                + ")"
                for k, v in result["runs"].items()
            },
            "adapter load s (median / max of "
            f"{result['adapter_load_s']['count']})": f"{result['adapter_load_s']['median']} / "
            f"{result['adapter_load_s']['max']}",
            "load average at start": result["machine"].get("load_avg_1m_at_start"),
        },
        ratios={f"{k} / base": v for k, v in result["relative_to_base"].items()},
        targets={f"{k} / base": f">= {v}" for k, v in TARGETS.items()},
        notes="Both modes run in one invocation, one engine after the other, on a shared host; "
        "the rows run interleaved, round by round, and each ratio is of the rows' medians. "
        "Compare ratios, not tokens/s across runs. bench/lora_profile.py breaks the LoRA "
        "time of one decode step down by op.",
    )


if __name__ == "__main__":
    main()
