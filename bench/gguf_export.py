"""Quantized export: file sizes and held-out perplexity of the GGUF exports against the fp32 merge.

    nice -n 10 python bench/gguf_export.py [--rows 20]

Registers a LoRA adapter on the embedded SmolLM2-135M in a throwaway data dir (random weights on
all seven linear layers, ``tests/evaluator/conftest.py``'s ``random_adapter``, seed 9, std 0.03:
strong enough that the merge differs from the base), exports it with ``export_gguf`` as q8_0 and
q4_0, loads each file with transformers' GGUF reader (``from_pretrained(..., gguf_file=...)``,
not our code), and measures token-weighted perplexity over the first ``--rows`` rows of
``examples/extraction/holdout.jsonl`` rendered with the chat template, answer included. The fp32
merge (``merge_fp32``) is the reference; its size is that of an fp32 safetensors file.
``tests/server/test_gguf_export.py`` imports the helpers below.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
HOLDOUT = REPO / "examples" / "extraction" / "holdout.jsonl"


def holdout_texts(tokenizer: Any, rows: int = 50) -> list[str]:
    """The first ``rows`` held-out conversations with their expected answer, as chat text."""
    texts = []
    for line in HOLDOUT.read_text().splitlines()[:rows]:
        row = json.loads(line)
        answer = {"role": "assistant", "content": json.dumps(row["expected"])}
        texts.append(tokenizer.apply_chat_template([*row["messages"], answer], tokenize=False))
    return texts


def perplexity(model: Any, tokenizer: Any, texts: list[str]) -> float:
    """Token-weighted perplexity of ``model`` over ``texts`` (each scored on its own)."""
    import torch

    nll, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt").input_ids
            loss = model(ids, labels=ids).loss.item()
            nll += loss * (ids.shape[1] - 1)
            count += ids.shape[1] - 1
    return math.exp(nll / count)


def load_gguf(path: Path) -> tuple[Any, Any]:
    """(model, tokenizer) as transformers reads them from the GGUF file alone, in float32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from shared.basemodel import _gguf_parsed_once

    with _gguf_parsed_once():
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32
        )
    return model.eval(), tokenizer


def generate(model: Any, tokenizer: Any, text: str, tokens: int = 8) -> str:
    ids = tokenizer(text, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
    return str(tokenizer.decode(out[0, ids.shape[1] :]))


def setup(data_dir: Path) -> tuple[Any, str]:
    """Settings on ``data_dir`` holding the prepared embedded base, and a registered adapter."""
    from shared.basemodel import prepare_embedded_model
    from shared.registry.db import open_registry
    from shared.settings import SharedSettings
    from tests.evaluator.conftest import SMOL_LINEAR, random_adapter, register_adapter

    cache = Path(os.environ.get("LORAPLEX_TEST_CACHE", REPO / ".loraplex" / "test-cache"))
    base = prepare_embedded_model(SharedSettings(data_dir=cache))
    (data_dir / "models").mkdir(parents=True)
    shutil.copytree(base.path, data_dir / "models" / base.path.name, copy_function=os.link)
    settings = SharedSettings(data_dir=data_dir)
    folder = random_adapter(data_dir / "adapter", 9, modules=tuple(SMOL_LINEAR), scale=0.03)
    registry = open_registry(settings)
    try:
        version = register_adapter(settings, registry, folder, "extract")
    finally:
        registry.dispose()
    return settings, version


def _progress(message: str, start: float) -> None:
    print(f"[{time.perf_counter() - start:6.0f}s] {message}", file=sys.stderr, flush=True)


def main() -> None:
    import faulthandler
    import signal

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from services.server.gguf_export import QUANT_TYPES, export_gguf
    from services.server.importer import merge_fp32
    from shared.artifacts import open_store
    from shared.registry.db import open_registry

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20)
    args = parser.parse_args()
    faulthandler.register(signal.SIGUSR1)  # kill -USR1 PID prints where it is
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    began = time.perf_counter()
    data_dir = Path(tempfile.mkdtemp(prefix="loraplex-gguf-bench-"))
    rows: list[dict[str, Any]] = []
    try:
        settings, version = setup(data_dir)
        _progress(f"registered {version}", began)
        registry = open_registry(settings)
        store = open_store(settings)
        _, base, merged = merge_fp32(settings, registry, store, version)
        tokenizer = AutoTokenizer.from_pretrained(base.path)
        texts = holdout_texts(tokenizer, args.rows)
        plain = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32)
        base_ppl = perplexity(plain, tokenizer, texts)
        reference = perplexity(merged, tokenizer, texts)
        _progress(f"perplexity: base {base_ppl:.3f}, fp32 merge {reference:.3f}", began)
        merged.save_pretrained(data_dir / "fp32", safe_serialization=True)
        size = sum(f.stat().st_size for f in (data_dir / "fp32").glob("*.safetensors"))
        rows.append({"export": "fp32 merge", "MB": size / 1e6, "ppl": reference})
        for qtype in QUANT_TYPES:
            start = time.perf_counter()
            path = export_gguf(settings, registry, store, version, data_dir / "out", qtype)
            seconds = time.perf_counter() - start
            start = time.perf_counter()
            model, gguf_tokenizer = load_gguf(path)
            load_seconds = time.perf_counter() - start
            ppl = perplexity(model, gguf_tokenizer, texts)
            _progress(f"{qtype}: exported in {seconds:.0f}s, perplexity {ppl:.3f}", began)
            rows.append(
                {
                    "export": qtype,
                    "MB": path.stat().st_size / 1e6,
                    "ppl": ppl,
                    "gap": ppl / reference - 1,
                    "export_s": seconds,
                    "load_s": load_seconds,
                }
            )
        registry.dispose()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    print(json.dumps({"base_ppl": base_ppl, "rows": rows}, indent=2))
    print("\n| export | size (MB) | held-out perplexity | gap vs fp32 merge |")
    print("| --- | --- | --- | --- |")
    for row in rows:
        gap = f"{row['gap']:+.2%}" if "gap" in row else "(reference)"
        print(f"| {row['export']} | {row['MB']:.1f} | {row['ppl']:.3f} | {gap} |")
    print(f"\nbase model without the adapter: perplexity {base_ppl:.3f}")


if __name__ == "__main__":
    main()
