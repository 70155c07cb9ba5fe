"""An alias under sustained load (issue 13, "Load"): CONCURRENCY streaming clients call the alias
``support`` back to back for DURATION seconds while it moves MOVES times through the admin API
(v1 -> v2 -> v3 -> v1 -> ..., evenly spaced) and other adapters are loaded (``/admin/adapters/
load``), called once and unloaded (``/admin/adapters/unload``) in turn the whole time.

Every request is checked against the alias's history: the version that answered
(``x-loraplex-adapter-version``) must be one the alias named while the request was in flight,
from the moves' log (when each PUT was sent and answered; see ``allowed_versions`` in
bench/loadgen.py for the rule, read off how ``set_alias`` swaps). The answer's text is
also compared with each version's own greedy answer to the same prompt, fetched by version id
before the load starts: an answer whose text is another version's and not its named one's would
mean the header lied. Exits 1 on any failed request (non-200 or broken stream), failed admin
call, misattributed answer, or answer whose text is only another version's.

    python bench/alias_load.py [--concurrency 64] [--duration 300] [--moves 3] [--max-tokens 16]
                               [--churn-adapters 3] [--churn-pause 2] [--ramp 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
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
    run_alias_load,
    run_streams,
    server_process,
)

ALIAS = "support"
VERSIONS = 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=300.0, help="Seconds of load.")
    parser.add_argument("--moves", type=int, default=3, help="Alias moves, evenly spaced.")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument(
        "--churn-adapters", type=int, default=3, help="Other adapters loaded and unloaded in turn."
    )
    parser.add_argument(
        "--churn-pause", type=float, default=2.0, help="Seconds between load/unload rounds."
    )
    parser.add_argument(
        "--ramp", type=float, default=5.0, help="Seconds over which the clients start."
    )
    parser.add_argument("--port", type=int, default=18314)
    args = parser.parse_args()
    if args.concurrency < 1 or args.duration <= 0 or args.moves < 1 or args.max_tokens < 1:
        parser.error("--concurrency, --duration, --moves and --max-tokens must be positive")
    at_start = machine()

    data_dir = Path(tempfile.mkdtemp(prefix="loraplex-bench-alias-load-"))
    prepare_data_dir(data_dir)
    versions = register_adapters(data_dir, [(ALIAS, seed) for seed in range(1, VERSIONS + 1)])
    churn = register_adapters(
        data_dir, [(f"other{i}", 100 + i) for i in range(args.churn_adapters)]
    )
    from shared.registry import adapters as reg
    from shared.registry.db import open_registry
    from shared.settings import SharedSettings

    registry = open_registry(SharedSettings(data_dir=data_dir))
    with registry.session() as session:
        reg.set_alias(session, ALIAS, "prod", versions[0])
    registry.dispose()

    # 4 prompts, greedy, ignore_eos; 4 lengths (MAX_TOKENS down to 5/8 of it) so that the
    # clients do not march in step and requests arrive all the time, during the moves too.
    templates = completion_bodies("", 4, args.max_tokens)
    for i, t in enumerate(templates):
        del t["model"]
        t["max_tokens"] = max(1, args.max_tokens * (8 - i) // 8)
    targets = [versions[(i + 1) % VERSIONS] for i in range(args.moves)]
    move_at = [round(args.duration * (i + 1) / (args.moves + 1), 1) for i in range(args.moves)]
    env = {
        "LORAPLEX_KV_CACHE_GIB": "2",
        "LORAPLEX_MAX_NUM_SEQS": str(max(64, args.concurrency + 8)),
    }
    with server_process(data_dir, port=args.port, env=env) as server:
        url = server.url + "/v1/completions"
        key = server.infer_headers
        warm = [{**t, "model": ALIAS} for t in templates] * 4
        asyncio.run(run_streams(url, warm, concurrency=16, headers=key))  # warm-up
        # Each version's greedy answers to each prompt, asked by version id, 4 at a time (CPU
        # batches need not give bit-identical answers, so every distinct one is kept).
        refs: dict[tuple[str, str], set[str]] = {}
        for vid in versions:
            for t in templates:
                res = asyncio.run(
                    run_streams(url, [{**t, "model": vid}] * 4, concurrency=4, headers=key)
                )
                bad = [r for r in res.results if not r.ok or r.version != vid]
                if bad:
                    raise RuntimeError(f"reference answers of {vid} failed: {bad[0]}")
                refs[(vid, t["prompt"])] = {r.text for r in res.results}
        for vid in versions[1:]:  # loaded on demand above; the moves load them again
            server.admin("POST", "/admin/adapters/unload", {"model": vid})
        print(
            f"{args.concurrency} streams for {args.duration:g}s on {ALIAS}:prod ({versions[0]}); "
            f"moves to {targets} at {move_at}s; churning {churn}"
        )
        load = asyncio.run(
            run_alias_load(
                server.url,
                model=ALIAS,
                alias_path=f"/admin/aliases/{ALIAS}/prod",
                initial=versions[0],
                targets=targets,
                move_at=move_at,
                duration=args.duration,
                concurrency=args.concurrency,
                bodies=templates,
                infer_headers=key,
                admin_headers=server.admin_headers,
                churn=churn,
                churn_pause=args.churn_pause,
                ramp_s=args.ramp,
            )
        )
    summary = load.summary()
    content = {"named version": 0, "another version only": 0, "none": 0}
    for r, index in zip(load.requests, load.body_index, strict=True):
        if not r.ok or r.version not in versions:
            continue
        prompt = templates[index]["prompt"]
        if r.text in refs[(r.version, prompt)]:
            content["named version"] += 1
        elif any(r.text in refs[(v, prompt)] for v in versions if v != r.version):
            content["another version only"] += 1
        else:
            content["none"] += 1
    result = {
        "benchmark": "alias_load",
        "workload": {
            "concurrency": args.concurrency,
            "duration_s": args.duration,
            "max_tokens": [t["max_tokens"] for t in templates],
            "ramp_s": args.ramp,
            "alias": f"{ALIAS}:prod",
            "versions": versions,
            "moves_to": targets,
            "move_at_s": move_at,
            "churn_adapters": churn,
            "churn_pause_s": args.churn_pause,
        },
        "machine": at_start,
        **summary,
        "answer_text_matches": content,
    }
    result["machine"]["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    path = publish(result)
    problems = (
        summary["failed"]
        + summary["misattributed"]
        + summary["admin_calls_failed"]
        + summary["churn_requests_failed"]
        + content["another version only"]
    )
    print(
        f"{summary['requests']} requests, {summary['failed']} failed, {summary['misattributed']} "
        f"misattributed ({summary['in_flight_during_a_move']} in flight during a move), "
        f"{summary['tokens_per_s']} tokens/s, latency p50 {summary['latency_p50_s']}s p99 "
        f"{summary['latency_p99_s']}s; moves {summary['moves']}; {summary['loads']} loads, "
        f"{summary['unloads']} unloads, {summary['admin_calls_failed']} admin calls failed; "
        f"answer text {content}; written to {path}"
    )
    if problems:
        print(f"FAILED: {summary['failures']} {summary['misattributed_examples']}")
        sys.exit(1)


def publish(result: dict[str, Any]) -> Path:
    """The figures for docs/benchmarks.md, ``result`` itself in bench/results/alias_load.json
    (see bench/_report.py); returns that file."""
    sys.path.insert(0, str(Path(__file__).parent))
    from _report import RESULTS, record

    w = result["workload"]
    moves = " -> ".join(v.rsplit("@", 1)[-1] for v in [w["versions"][0], *w["moves_to"]])
    record(
        "alias_load",
        title=f"Alias moves and adapter churn under load ({w['concurrency']} streams, "
        f"{w['duration_s']:g} s)",
        baseline="requirement (issue 13): 0 failed requests, every answer from the version the "
        "alias named when the request arrived",
        figures={
            "workload": f"{w['concurrency']} streaming clients back to back for "
            f"{w['duration_s']:g} s (started over {w['ramp_s']:g} s), 4 prompts of "
            f"{'/'.join(map(str, w['max_tokens']))} tokens in turn (greedy); "
            f"{w['alias']} moved {moves} at {w['move_at_s']} s; meanwhile "
            f"{len(w['churn_adapters'])} other adapters loaded, called once and unloaded in "
            f"turn, {w['churn_pause_s']:g} s apart",
            "requests": result["requests"],
            "failed requests (non-200 or broken stream)": result["failed"],
            "misattributed answers": result["misattributed"],
            "requests in flight during a move (either version allowed)": result[
                "in_flight_during_a_move"
            ],
            "answered by": result["answered_by"],
            "answer text is the named version's / another's only / nobody's": "{} / {} / {}".format(
                *result["answer_text_matches"].values()
            ),
            "tokens/s": result["tokens_per_s"],
            "latency p50 / p99 (s)": f"{result['latency_p50_s']} / {result['latency_p99_s']}",
            "time to first token p50 / p99 (s)": f"{result['ttft_p50_s']} / {result['ttft_p99_s']}",
            "alias move calls (s)": [m["seconds"] for m in result["moves"]],
            "adapter loads / unloads": f"{result['loads']} / {result['unloads']}",
            "load call p50 / max (s)": "{} / {}".format(*result["load_seconds_p50_max"]),
            "unload call p50 / max (s)": "{} / {}".format(*result["unload_seconds_p50_max"]),
            "requests to the churned adapters (failed)": f"{result['churn_requests']} "
            f"({result['churn_requests_failed']})",
            "admin calls failed": result["admin_calls_failed"],
            "load average (1 min) at start / end": f"{result['machine']['load_avg_1m_at_start']}"
            f" / {result['machine']['load_avg_1m_at_end']}",
        },
        ratios={
            "failed requests": result["failed"],
            "misattributed answers": result["misattributed"],
        },
        targets={"failed requests": "0", "misattributed answers": "0"},
        notes=NOTES,
        extra={"result": result},
    )
    return Path(RESULTS / "alias_load.json")


NOTES = (
    "Attribution rule, from how the server swaps (`set_alias`: validate and load the new version, "
    "write the registry, swap the name table in one assignment, then answer the PUT; a request's "
    "name is looked up once, on the table current then, after it is sent and before its response "
    "headers go out): a request sent after a move's PUT was answered must be answered by the new "
    "version; one whose headers arrived before the PUT was sent, by the old one; one in flight "
    "while the PUT was (its send-to-headers window overlaps the PUT's) by either. Times are the "
    "load generator's, so the windows only widen. The version is the "
    "`x-loraplex-adapter-version` header; the answer's text is also compared with each version's "
    "greedy answers to the same prompt, fetched by version id before the load: 'another's only' "
    "would mean the header named the wrong version; 'nobody's' is an answer whose arithmetic "
    "differed in a larger batch (CPU kernels are not batch-invariant). Failed requests are not "
    "retried. Tokens/s and latencies are those of one 2-core CPU engine sharing its cores with "
    "the server and the load generator, and they move with whatever else the machine runs (see "
    "the load averages); the targets are the failure and attribution counts."
)


if __name__ == "__main__":
    main()
