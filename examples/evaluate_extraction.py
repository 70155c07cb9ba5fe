"""Exact-match score of the base model, or of the base plus an adapter, on the held-out set.

The answer counts only when it parses as JSON and equals the expected object exactly (all six
keys, right types). Generation is greedy and stops at the model's end-of-turn token, as served.

Usage::

    python examples/evaluate_extraction.py --base MODEL_DIR [--adapter ADAPTER_DIR] [--limit 60]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

TEST = Path(__file__).resolve().parent / "extraction" / "test.jsonl"


def parse(text: str) -> Any:
    try:
        return json.loads(text.strip())
    except ValueError:
        return None


def evaluate(
    base: Path, adapter: Path | None, rows: list[dict[str, Any]], batch: int = 12
) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    tok.padding_side = "left"
    model: Any = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    correct, valid_json, outputs = 0, 0, []
    start = time.monotonic()
    for i in range(0, len(rows), batch):
        chunk = rows[i : i + batch]
        prompts = [
            tok.apply_chat_template(r["messages"], tokenize=False, add_generation_prompt=True)
            for r in chunk
        ]
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(
                **enc,
                max_new_tokens=72,
                do_sample=False,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
            )
        for row, seq in zip(chunk, out, strict=True):
            text = str(tok.decode(seq[enc["input_ids"].shape[1] :], skip_special_tokens=True))
            got = parse(text)
            valid_json += got is not None
            hit = got == row["expected"]
            correct += hit
            outputs.append({"id": row["id"], "output": text, "exact_match": hit})
    return {
        "exact_match": correct / len(rows),
        "valid_json": valid_json / len(rows),
        "n": len(rows),
        "seconds": round(time.monotonic() - start, 1),
        "outputs": outputs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("--adapter", type=Path)
    parser.add_argument("--test", type=Path, default=TEST)
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--show", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0: default")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    rows = [json.loads(line) for line in args.test.read_text().splitlines() if line.strip()]
    rows = rows[: args.limit] if args.limit else rows
    result = evaluate(args.base, args.adapter, rows)
    for item in result["outputs"][: args.show]:
        print(json.dumps(item))
    summary = {k: v for k, v in result.items() if k != "outputs"}
    print(json.dumps({"adapter": str(args.adapter) if args.adapter else None, **summary}))


if __name__ == "__main__":
    main()
