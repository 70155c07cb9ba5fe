"""Generation throughput of a CPU engine: vLLM's core layout against the server's, one run.

vLLM's CPU backend keeps one core for its scheduler and runs the model on the rest; on a machine
with at most 4 cores the server gives the model every core (``shared.processes.engine_cpu_layout``)
and asks for 128 concurrent sequences instead of 64. Three engines are started one after the
other through ``loraplex serve`` (the local stack) and each answers the same held-out orders
(greedy, 48 new tokens, fp32) twice; the second pass counts:

1. vLLM's layout (``VLLM_CPU_OMP_THREADS_BIND=auto``, which the server leaves alone), 64 seqs;
2. every core, 64 seqs;
3. every core, 128 seqs (the server's defaults).

    python bench/engine_layout.py [--items 128]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from services.evaluator.data import load_data  # noqa: E402
from services.evaluator.generation import DecodingSettings, generate_server  # noqa: E402
from services.evaluator.subjects import Subject  # noqa: E402
from services.localstack import LocalStack  # noqa: E402
from shared.basemodel import prepare_embedded_model  # noqa: E402
from shared.settings import SharedSettings  # noqa: E402

CONFIGS = {
    "vllm_layout_64": ({"VLLM_CPU_OMP_THREADS_BIND": "auto", "LORAPLEX_MAX_NUM_SEQS": "64"}, 64),
    "all_cores_64": ({"LORAPLEX_MAX_NUM_SEQS": "64"}, 64),
    "all_cores_128": ({"LORAPLEX_MAX_NUM_SEQS": "128"}, 128),
}


def measure(env: dict[str, str], concurrency: int, items: int) -> float:
    base = prepare_embedded_model(SharedSettings())
    data = load_data(REPO / "examples" / "extraction" / "holdout.jsonl").items[:items]
    tmp = Path(tempfile.mkdtemp(prefix="engine-layout-"))
    try:
        models = tmp / "models" / base.path.name
        models.mkdir(parents=True)
        for f in base.path.iterdir():
            os.link(f, models / f.name)
        with LocalStack(tmp, extra_env={"LORAPLEX_DTYPE": "float32", **env}) as stack:
            stack.start(trainer=False, evaluator=False)
            subject = Subject(label=base.name, base=base)
            decoding = DecodingSettings(max_new_tokens=48, temperature=0.0)
            rate = 0.0
            for _ in range(2):  # the first pass warms the engine up
                start = time.monotonic()
                generate_server(
                    stack.server_url,
                    subject,
                    data,
                    decoding,
                    concurrency=concurrency,
                    api_key=stack.admin_key,
                )
                rate = len(data) / (time.monotonic() - start)
            return rate
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=128)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from _report import record

    rates = {name: measure(env, conc, args.items) for name, (env, conc) in CONFIGS.items()}
    base = rates["vllm_layout_64"]
    record(
        "engine_layout",
        title="CPU engine generation: every core and 128 sequences against vLLM's layout",
        baseline="vLLM's layout (one core kept for its scheduler), 64 sequences, same run",
        figures={f"{k} (orders/s)": round(v, 2) for k, v in rates.items()}
        | {"orders, new tokens, dtype": f"{args.items}, 48, fp32"},
        ratios={
            "all_cores_64 / vllm_layout_64": round(rates["all_cores_64"] / base, 3),
            "all_cores_128 / vllm_layout_64": round(rates["all_cores_128"] / base, 3),
        },
        targets={
            "all_cores_64 / vllm_layout_64": "> 1 on a machine of at most 4 cores",
            "all_cores_128 / vllm_layout_64": "> 1",
        },
        notes="Base model, held-out orders of the example task, greedy; each engine answers "
        "them twice and the second pass counts.",
    )


if __name__ == "__main__":
    main()
