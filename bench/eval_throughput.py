"""Evaluator throughput, two comparisons on identical inputs, one run:

1. generation-based evaluation: the same items through our server (``loraplex serve``, vLLM) with
   concurrent requests vs sequential in-process ``generate`` (batch 1), same greedy settings and
   token budget (target: server at least 5x faster);
2. perplexity: our scorer (batched windows, loss on scored positions only) vs lm-eval's
   ``loglikelihood_rolling`` (``hf`` backend, same batch size) on the same texts, both measured
   after the model is loaded (target: at least equal tokens/s).

Writes ``bench/results/eval_throughput-<timestamp>.json`` (and ``eval_throughput.json``, the
newest) and prints it.

    python bench/eval_throughput.py [--items 32] [--max-new-tokens 48] [--concurrency 16]
        [--ppl-items 96] [--skip-server] [--adapter DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from services.evaluator.data import EvalItem, load_data  # noqa: E402
from services.evaluator.generation import DecodingSettings, generate_local, generate_server  # noqa: E402
from services.evaluator.local_model import LocalModels  # noqa: E402
from services.evaluator.perplexity import PerplexitySettings, score_items  # noqa: E402
from services.evaluator.subjects import Subject  # noqa: E402
from shared.basemodel import prepare_embedded_model  # noqa: E402
from shared.settings import SharedSettings  # noqa: E402

EXAMPLES = REPO / "examples" / "extraction"


def bench_generation(
    models: LocalModels,
    subject: Subject,
    items: list[EvalItem],
    args: argparse.Namespace,
    data_dir: Path,
) -> dict[str, Any]:
    decoding = DecodingSettings(max_new_tokens=args.max_new_tokens)
    start = time.perf_counter()
    local = generate_local(models, subject, items, decoding, batch_size=1)
    local_s = time.perf_counter() - start
    out: dict[str, Any] = {
        "items": len(items),
        "max_new_tokens": args.max_new_tokens,
        "sequential_inprocess_s": round(local_s, 2),
        "sequential_inprocess_items_per_s": round(len(items) / local_s, 3),
    }
    if args.skip_server:
        return out
    from tests.evaluator import launch

    with launch.serve(data_dir, log_path=data_dir / "server.log") as url:
        # One warm-up request: vLLM compiles and allocates on the first batch.
        generate_server(url, subject, items[:1], decoding, concurrency=1)
        start = time.perf_counter()
        served = generate_server(url, subject, items, decoding, concurrency=args.concurrency)
        server_s = time.perf_counter() - start
    same = sum(a.strip() == b.strip() for a, b in zip(local, served, strict=True))
    out.update(
        server_url="loraplex serve (vLLM, CPU)",
        concurrency=args.concurrency,
        server_concurrent_s=round(server_s, 2),
        server_items_per_s=round(len(items) / server_s, 3),
        speedup=round(local_s / server_s, 2),
        identical_outputs=f"{same}/{len(items)}",
    )
    return out


def bench_perplexity(
    models: LocalModels, subject: Subject, texts: list[str], batch_size: int
) -> dict[str, Any]:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    items = [EvalItem(f"t{k}", (), t, f"text {k}") for k, t in enumerate(texts)]
    settings = PerplexitySettings(window=2048, stride=2048, batch_tokens=2048 * batch_size)
    score_items(models, subject, items[:2], settings)  # warm-up
    start = time.perf_counter()
    ours = score_items(models, subject, items, settings)
    ours_s = time.perf_counter() - start
    tokens = sum(s.n_tokens for s in ours)

    lm = HFLM(
        pretrained=str(subject.base.path),
        dtype=models.dtype,
        device="cpu",
        batch_size=batch_size,
        max_length=2048,
    )
    requests = [
        Instance(request_type="loglikelihood_rolling", doc={}, arguments=(t,), idx=k)
        for k, t in enumerate(texts)
    ]
    lm.loglikelihood_rolling(requests[:2], disable_tqdm=True)  # warm-up
    start = time.perf_counter()
    theirs = lm.loglikelihood_rolling(requests, disable_tqdm=True)
    theirs_s = time.perf_counter() - start
    max_diff = max(abs(-o.nll - t) for o, t in zip(ours, theirs, strict=True))
    return {
        "texts": len(texts),
        "scored_tokens": tokens,
        "batch_size": batch_size,
        "window": settings.window,
        "ours_s": round(ours_s, 2),
        "ours_tokens_per_s": round(tokens / ours_s, 1),
        "lm_eval_s": round(theirs_s, 2),
        "lm_eval_tokens_per_s": round(tokens / theirs_s, 1),
        "ratio": round(theirs_s / ours_s, 2),
        "max_abs_loglik_diff": round(max_diff, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--ppl-items", type=int, default=96)
    parser.add_argument("--ppl-batch", type=int, default=8)
    parser.add_argument("--skip-server", action="store_true")
    parser.add_argument("--skip-ppl", action="store_true")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="loraplex-bench-"))
    cache = Path(os.environ.get("LORAPLEX_TEST_CACHE", REPO / ".loraplex" / "test-cache"))
    base = prepare_embedded_model(SharedSettings(data_dir=cache))
    (data_dir / "models").mkdir()
    shutil.copytree(base.path, data_dir / "models" / base.path.name, copy_function=os.link)
    subject = Subject(label=base.name, base=base)
    models = LocalModels(subject, dtype=args.dtype)
    result: dict[str, Any] = {
        "benchmark": "eval_throughput",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "model": base.name,
        "dtype": args.dtype,
    }
    try:
        items = load_data(EXAMPLES / "test.jsonl", limit=args.items).items
        result["generation"] = bench_generation(models, subject, items, args, data_dir)
        if not args.skip_ppl:
            rows = load_data(EXAMPLES / "sft_train.jsonl", limit=args.ppl_items).items
            texts = [f"{i.prompt_text}\n{i.reference}" for i in rows]
            result["perplexity"] = bench_perplexity(models, subject, texts, args.ppl_batch)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    out_dir = REPO / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"eval_throughput-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    # The newest result under a stable name, as the other benchmarks publish theirs.
    (out_dir / "eval_throughput.json").write_text(path.read_text())
    print(json.dumps(result, indent=2))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
