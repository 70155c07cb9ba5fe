"""Rebuild ``data/extraction_test.jsonl`` for the shipped lm-eval tasks from the example test set,
with prompts rendered by the embedded base model's chat template (what ``loraplex eval`` also does
per run, for whatever base model is evaluated).

    python -m services.evaluator.tasks.build_data [MODEL_DIR]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from services.evaluator.data import load_data

HERE = Path(__file__).parent
EXAMPLE = HERE.parents[2] / "examples" / "extraction" / "test.jsonl"


def build(model_dir: Path, out: Path = HERE / "data" / "extraction_test.jsonl") -> Path:
    from transformers import AutoTokenizer

    from shared.datasets.render import ChatRenderer

    renderer = ChatRenderer(AutoTokenizer.from_pretrained(str(model_dir)))
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as fh:
        for item in load_data(EXAMPLE).items:
            prompt = renderer.text(list(item.messages), add_generation_prompt=True)
            row = {"id": item.item_id, "prompt": prompt, "reference": item.reference}
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return out


if __name__ == "__main__":
    if len(sys.argv) > 1:
        folder = Path(sys.argv[1])
    else:
        from shared.basemodel import resolve_base_model
        from shared.settings import SharedSettings

        folder = resolve_base_model(SharedSettings()).path
    print(build(folder))
