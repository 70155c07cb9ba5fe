"""Throughput of one engine through the server: base model only, one adapter, eight adapters mixed.

The same workload (REQUESTS streaming completions, fixed prompts, MAX_TOKENS generated tokens each,
CONCURRENCY in flight) runs three times; in the mixed run request i uses adapter i mod 8. The
engine runs with max_loras = 8 so all eight fit in one batch.

    python bench/multi_adapter.py [--requests 32] [--max-tokens 64] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--port", type=int, default=18313)
    parser.add_argument(
        "--without-plugin",
        action="store_true",
        help="Run the engine without the loraplex vLLM plugin (stock CPU LoRA ops), to compare.",
    )
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="loraplex-bench-multi-"))
    prepare_data_dir(data_dir)
    versions = register_adapters(
        data_dir, [(f"tenant{i}", i + 1) for i in range(8)], rank=args.rank
    )
    env = {
        "LORAPLEX_KV_CACHE_GIB": "2",
        "LORAPLEX_MAX_LORAS": "8",
        "LORAPLEX_MAX_CPU_LORAS": "8",
        "LORAPLEX_MAX_NUM_SEQS": str(max(32, args.concurrency)),
    }
    if args.without_plugin:
        env["VLLM_PLUGINS"] = ""  # an allowlist that matches no plugin
    runs = {}
    with server_process(data_dir, port=args.port, env=env) as server:
        for vid in versions:
            server.admin("POST", "/admin/adapters/load", {"model": vid})
        url = server.url + "/v1/completions"
        key = server.infer_headers
        # warm-up
        asyncio.run(run_streams(url, completion_bodies(BASE, 8, 8), concurrency=8, headers=key))
        asyncio.run(run_streams(url, completion_bodies(versions, 8, 8), concurrency=8, headers=key))
        for name, models in [
            ("base", BASE),
            ("one_adapter", versions[0]),
            ("eight_adapters_mixed", versions),
        ]:
            res = asyncio.run(
                run_streams(
                    url,
                    completion_bodies(models, args.requests, args.max_tokens),
                    concurrency=args.concurrency,
                    headers=key,
                )
            )
            runs[name] = res.summary()
            print(
                f"{name}: {runs[name]['tokens_per_s']} tok/s, "
                f"median TTFT {runs[name]['ttft_median_s']}s, failed {runs[name]['failed']}"
            )
    base_tps = runs["base"]["tokens_per_s"] or 1.0
    result = {
        "benchmark": "multi_adapter",
        "workload": {
            "requests": args.requests,
            "max_tokens": args.max_tokens,
            "concurrency": args.concurrency,
            "rank": args.rank,
            "max_loras": 8,
        },
        "machine": machine(),
        "runs": runs,
        "relative_to_base": {k: round(v["tokens_per_s"] / base_tps, 3) for k, v in runs.items()},
    }
    name = "multi_adapter_without_plugin" if args.without_plugin else "multi_adapter"
    path = write_result(name, result)
    publish(name, result)
    print(f"relative to base: {result['relative_to_base']}; written to {path}")


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
            f"{w['concurrency']} concurrent, rank {w['rank']}, max_loras {w['max_loras']}",
            **{f"{k} tokens/s": v["tokens_per_s"] for k, v in result["runs"].items()},
            "load average at start": result["machine"].get("load_avg_1m_at_start"),
        },
        ratios={f"{k} / base": v for k, v in result["relative_to_base"].items()},
        targets={},
    )


if __name__ == "__main__":
    main()
