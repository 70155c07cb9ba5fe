"""Shared by every benchmark: write the JSON result and update its row in docs/benchmarks.md.

Each benchmark calls :func:`record` once with its figures. The JSON goes to
``bench/results/<name>.json``; ``docs/benchmarks.md`` keeps one section per benchmark between
``<!-- bench:<name> -->`` markers, rewritten in place, so the document always shows the last result
with the command that produced it.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "benchmarks.md"
RESULTS = REPO / "bench" / "results"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 1024**3
    gpu = ""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        gpu = out.stdout.strip().replace("\n", ", ")
    except (OSError, subprocess.SubprocessError):
        pass
    return f"{os.cpu_count()} cores {cpu}, {mem:.0f} GiB" + (f", GPU {gpu}" if gpu else ", no GPU")


def record(
    name: str,
    *,
    title: str,
    baseline: str,
    figures: dict[str, Any],
    ratios: dict[str, float],
    targets: dict[str, str],
    notes: str = "",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Save ``figures`` (raw numbers) and ``ratios`` (against ``baseline``) and print them;
    ``extra`` is kept in the JSON only (rows a benchmark merges across runs)."""
    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(REPO) if script.is_relative_to(REPO) else script
    command = shlex.join(["python", str(shown), *sys.argv[1:]])  # quoted as a shell needs it
    result = {
        "name": name,
        "title": title,
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "baseline": baseline,
        "figures": figures,
        "ratios": ratios,
        "targets": targets,
        "notes": notes,
        **({"extra": extra} if extra else {}),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2))
    _update_doc(result)
    print(json.dumps(result, indent=2))
    return result


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _section(r: dict[str, Any]) -> str:
    lines = [
        f"### {r['title']} (`{r['name']}`)",
        "",
        f"- command: `{r['command']}`",
        f"- date: {r['date']}; machine: {r['machine']}",
        f"- baseline: {r['baseline']}",
        "",
        "| figure | value |",
        "| --- | --- |",
    ]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in r["figures"].items()]
    if r["ratios"]:
        lines += ["", "| ratio | value | target |", "| --- | --- | --- |"]
        lines += [
            f"| {k} | {_fmt(v)} | {r['targets'].get(k, '')} |" for k, v in r["ratios"].items()
        ]
    if r["notes"]:
        lines += ["", r["notes"]]
    return "\n".join(lines)


def _update_doc(result: dict[str, Any]) -> None:
    start, end = f"<!-- bench:{result['name']} -->", f"<!-- /bench:{result['name']} -->"
    block = f"{start}\n{_section(result)}\n{end}"
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    DOC.write_text(text)
