"""Promotion under load: CONCURRENCY streaming clients call an alias while it moves
v1 -> v2 -> v1 -> v2 through the admin API. Reports failed requests, which version answered each
request, how long each move took (validate + load + registry write + swap) and how soon after
each move the new version answered (response headers, and first token).

    python bench/hot_swap.py [--concurrency 16] [--hold 5]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.loadgen import (
    RequestResult,
    _one,
    machine,
    prepare_data_dir,
    register_adapters,
    server_process,
    write_result,
)

ALIAS = "support"


async def clients(
    url: str,
    concurrency: int,
    stop: asyncio.Event,
    out: list[RequestResult],
    max_tokens: int,
    headers: dict[str, str],
) -> None:
    body = {
        "model": ALIAS,
        "prompt": "Write a short story about a lighthouse keeper.",
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def loop() -> None:
            while not stop.is_set():
                out.append(await _one(session, url + "/v1/completions", body, headers))

        await asyncio.gather(*(loop() for _ in range(concurrency)))


async def probe(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str]
) -> tuple[str, float, float]:
    """(version, seconds to response headers, seconds to first chunk) of one streamed call."""
    started = time.perf_counter()
    body = {"model": ALIAS, "prompt": "Hello", "max_tokens": 1, "stream": True}
    async with session.post(url + "/v1/completions", json=body, headers=headers) as resp:
        headers_at = time.perf_counter() - started
        version = resp.headers.get("x-loraplex-adapter-version", "")
        await resp.content.readany()
        return version, headers_at, time.perf_counter() - started


async def scenario(server: Any, versions: list[str], args: argparse.Namespace) -> dict[str, Any]:
    stop = asyncio.Event()
    results: list[RequestResult] = []
    load = asyncio.create_task(
        clients(server.url, args.concurrency, stop, results, args.max_tokens, server.infer_headers)
    )
    moves: list[dict[str, Any]] = []
    await asyncio.sleep(args.hold)
    async with aiohttp.ClientSession() as session:
        for target in [versions[1], versions[0], versions[1]]:
            put_started = time.perf_counter()
            async with session.put(
                server.url + f"/admin/aliases/{ALIAS}/prod",
                json={"version": target},
                headers=server.admin_headers,
            ) as resp:
                assert resp.status == 200, await resp.text()
            put_done = time.perf_counter()
            while True:
                version, headers_s, first_s = await probe(session, server.url, server.infer_headers)
                if version == target:
                    break
            now = time.perf_counter()
            moves.append(
                {
                    "to": target,
                    "put_seconds": round(put_done - put_started, 4),
                    "new_version_headers_after_put_s": round(
                        now - first_s + headers_s - put_done, 4
                    ),
                    "new_version_first_token_after_put_s": round(now - put_done, 4),
                }
            )
            print(
                f"moved to {target}: PUT {moves[-1]['put_seconds']}s, new version answered "
                f"{moves[-1]['new_version_headers_after_put_s']}s after it"
            )
            await asyncio.sleep(args.hold)
    stop.set()
    await load
    failed = [r for r in results if not r.ok]
    by_version: dict[str, int] = {}
    for r in results:
        by_version[r.version] = by_version.get(r.version, 0) + 1
    return {
        "requests": len(results),
        "failed_requests": len(failed),
        "failures": [f"{r.status} {r.error}" for r in failed[:20]],
        "answered_by": by_version,
        "every_response_named_a_version": all(r.version in versions for r in results),
        "moves": moves,
        "max_new_version_headers_after_put_s": max(
            m["new_version_headers_after_put_s"] for m in moves
        ),
        "max_put_seconds": max(m["put_seconds"] for m in moves),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--hold", type=float, default=5.0, help="Seconds between moves.")
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--port", type=int, default=18312)
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="loraplex-bench-swap-"))
    prepare_data_dir(data_dir)
    versions = register_adapters(data_dir, [(ALIAS, 1), (ALIAS, 2)])
    from shared.registry import adapters as reg
    from shared.registry.db import open_registry
    from shared.settings import SharedSettings

    registry = open_registry(SharedSettings(data_dir=data_dir))
    with registry.session() as session:
        reg.set_alias(session, ALIAS, "prod", versions[0])
    registry.dispose()
    env = {"LORAPLEX_KV_CACHE_GIB": "2", "LORAPLEX_MAX_NUM_SEQS": "32"}
    with server_process(data_dir, port=args.port, env=env) as server:
        data = asyncio.run(scenario(server, versions, args))
    result = {
        "benchmark": "hot_swap",
        "concurrency": args.concurrency,
        "machine": machine(),
        **data,
        "targets": {"failed_requests": 0, "new_version_within_s": 1.0},
    }
    path = write_result("hot_swap", result)
    publish(result)
    print(
        f"{data['requests']} requests, {data['failed_requests']} failed, answered by "
        f"{data['answered_by']}; new version answered at most "
        f"{data['max_new_version_headers_after_put_s']}s after the alias moved (PUT took at most "
        f"{data['max_put_seconds']}s); written to {path}"
    )


def publish(result: dict[str, Any]) -> None:
    """The figures for docs/benchmarks.md (see bench/_report.py)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from _report import record

    record(
        "hot_swap",
        title="Alias promotion under load (v1 -> v2 -> v1 -> v2)",
        baseline="requirement: zero failed requests, new version within 1 s of the alias change",
        figures={
            "concurrent streaming clients": result["concurrency"],
            "requests": result["requests"],
            "failed requests": result["failed_requests"],
            "answered by": result["answered_by"],
            "every response named its version": result["every_response_named_a_version"],
            "alias change call (s, max)": result["max_put_seconds"],
            "load average at start": result["machine"].get("load_avg_1m_at_start"),
        },
        ratios={
            "failed requests": result["failed_requests"],
            "new version answered after the alias change (s, max)": result[
                "max_new_version_headers_after_put_s"
            ],
        },
        targets={
            "failed requests": "0",
            "new version answered after the alias change (s, max)": "<= 1",
        },
    )


if __name__ == "__main__":
    main()
