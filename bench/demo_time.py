"""How long `make demo` takes after set-up, and what it decided (target: at most 10 minutes).

Runs the demo exactly as ``make demo`` does after ``make setup`` (``python -m services.demo``) as
a subprocess, streams its output, and records the wall time, each stage's wall time and what the
demo decided: each version's json_match against its baseline, each gate's decision and minimum
detectable difference against its margin, and the failed requests during the second release (from
the ``summary.json`` the demo writes). The prepared base model is removed first, so its
preparation is counted as on a fresh data directory (``--keep-model`` keeps it).

One run is recorded as ``demo_time``. ``--sweep`` runs the demo once per seed and precision and
records every run in the ``demo_runs`` table, the robustness check: every run must exit 0.

    python bench/demo_time.py [--seed 7] [--precision auto|bf16|fp32] [--keep-model]
    python bench/demo_time.py --sweep --seeds 7,11,23,42,99 --precisions auto,fp32
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LORAPLEX_DATA_DIR") or REPO / ".loraplex")
TARGET_S = 600.0


def _cpu() -> str:
    """The CPU's model name and what ``auto`` picks on it, so rows from several machines read apart."""
    from shared.doctor import cpu_prefers_bf16

    name = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            name = line.split(":", 1)[1].strip()
            break
    bf16, _ = cpu_prefers_bf16()
    return f"{name} ({'bf16' if bf16 else 'fp32'} faster)"


def run_demo(seed: int, precision: str, keep_model: bool) -> dict[str, Any]:
    if not keep_model:
        shutil.rmtree(DATA / "models", ignore_errors=True)
    summary_path = DATA / "demo" / "summary.json"
    summary_path.unlink(missing_ok=True)
    load = os.getloadavg()[0]
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.demo", "--seed", str(seed), "--precision", precision],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
    code = proc.wait()
    wall = time.monotonic() - started
    summary: dict[str, Any] = {}
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
    return {
        "seed": seed,
        "precision": precision,
        "exit_code": code,
        "wall_s": round(wall, 1),
        "model_prepared": not keep_model,
        "load_at_start": round(load, 2),
        "cpu": _cpu(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "summary": summary,
    }


def _release_text(release: dict[str, Any]) -> str:
    cand, base = release.get("json_match") or [None, None]
    score = f"{cand:.3f} vs {base:.3f}" if cand is not None and base is not None else "n/a"
    lines = "; ".join(
        f"{ln['rule']} {ln['margin']:g}: MDD {ln['mdd']:.3f} ({ln['status']})"
        for ln in release.get("lines") or []
    )
    return f"{release.get('version')}: {score}, {release.get('decision')} [{lines}]"


def _row(run: dict[str, Any]) -> dict[str, Any]:
    s = run["summary"]
    releases = s.get("releases") or []
    return {
        "seed": run["seed"],
        "precision": run["precision"],
        "cpu": run["cpu"],
        "exit": run["exit_code"],
        "wall s": run["wall_s"],
        "v1 (json_match vs base model)": _release_text(releases[0]) if releases else "n/a",
        "v2 (json_match vs v1)": _release_text(releases[1]) if len(releases) > 1 else "n/a",
        # A Counter written as a dict omits zero counts: "ok" without "failed" is 0 failed.
        "failed requests": (s.get("requests") or {}).get("failed", 0)
        if s.get("requests")
        else None,
        "date": run["date"],
    }


SWEEP_NOTES = (
    "Rows from earlier sweeps are kept (keyed by seed, precision and CPU). `auto` lets training and "
    "the engine pick what the CPU computes fastest, measured (bf16 only where its matmuls reach "
    "1.1x fp32's); `fp32` forces both to fp32, what a CPU without native bf16 runs. MDD: minimum "
    "detectable difference of the gate's comparison line at 95% confidence and 80% power; each "
    "must be below its margin (0.3 for v1, 0.1 for v2)."
)


def _key(run: dict[str, Any]) -> str:
    return f"{run['seed']}-{run['precision']}-{run.get('cpu', '')}"


def runs_table(rows: list[dict[str, Any]]) -> str:
    widest: dict[str, Any] = max(rows, key=len)
    keys = list(widest)
    lines = ["| " + " | ".join(keys) + " |", "| " + " | ".join("---" for _ in keys) + " |"]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    parser.add_argument("--keep-model", action="store_true", help="do not re-prepare the model")
    parser.add_argument("--sweep", action="store_true", help="one run per seed and precision")
    parser.add_argument("--seeds", default="7,11,23,42,99")
    parser.add_argument("--precisions", default="auto,fp32")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from _report import RESULTS, record

    if args.sweep:
        runs = [
            run_demo(int(seed), precision, args.keep_model)
            for precision in args.precisions.split(",")
            for seed in args.seeds.split(",")
        ]
        previous = RESULTS / "demo_runs.json"
        rows: dict[str, Any] = {}
        if previous.is_file():
            saved = json.loads(previous.read_text())
            old = (saved.get("extra") or {}).get("runs") or saved["figures"].get("runs") or []
            rows = {_key(r): r for r in old}
        for run in runs:
            rows[_key(run)] = _row(run)
        table = sorted(rows.values(), key=lambda r: (r.get("cpu", ""), r["precision"], r["seed"]))
        worst = max(r["wall s"] for r in table)
        record(
            "demo_runs",
            title="`make demo` across seeds and precisions",
            baseline="every run must exit 0 with 0 failed requests, inside the 600 s target",
            figures={
                "runs": len(table),
                "all exited 0": all(r["exit"] == 0 for r in table),
                "failed requests (sum)": sum(r["failed requests"] or 0 for r in table),
            },
            ratios={"slowest wall time / 600 s target": round(worst / TARGET_S, 3)},
            targets={"slowest wall time / 600 s target": "<= 1"},
            notes=runs_table(table) + "\n\n" + SWEEP_NOTES,
            extra={"runs": table},
        )
        sys.exit(0 if all(r["exit_code"] == 0 for r in runs) else 1)

    run = run_demo(args.seed, args.precision, args.keep_model)
    s = run["summary"]
    record(
        "demo_time",
        title="`make demo` wall time after set-up",
        baseline="the issue's target: at most 10 minutes on the 2-core machine after set-up",
        figures={
            "exit code": run["exit_code"],
            "wall time (s)": run["wall_s"],
            "seed, precision": f"{args.seed}, {args.precision}",
            "stage wall times (s)": s.get("stages_s"),
            "v1": _release_text((s.get("releases") or [{}])[0]),
            "v2": _release_text((s.get("releases") or [{}, {}])[-1]),
            "requests during the v2 release": s.get("requests"),
            "base model prepared in this run": run["model_prepared"],
            "load average at start": run["load_at_start"],
        },
        ratios={"wall time / 600 s target": round(run["wall_s"] / TARGET_S, 3)},
        targets={"wall time / 600 s target": "<= 1"},
        notes="Set-up (`make setup`, about 5 minutes on a fresh machine, seconds afterwards) is "
        "not counted, as the issue states; preparing the base model is.",
    )
    sys.exit(run["exit_code"])


if __name__ == "__main__":
    main()
