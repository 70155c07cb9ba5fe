"""Reward model: held-out pair accuracy of the ``reward`` recipe on the extraction DPO example.

Trains a reward model (LoRA plus the score head on the embedded SmolLM2-135M-Instruct) on the
shipped ``examples/extraction/dpo_train.jsonl`` through the recipe exactly as the worker runs it,
holding out ``--validation-fraction`` of the pairs with the trainer's own split. Reported:

- ``heldout_pair_accuracy``: share of held-out pairs whose chosen answer scores above its rejected
  one, after training (target: at least 0.8);
- ``baseline_pair_accuracy``: the same pairs scored by the same model before training, with its
  untrained (randomly initialised, seeded) score head, measured in the same run (chance: ~0.5);
- run times: the whole recipe and TRL's ``train_runtime``.

Usage: ``python bench/reward_model.py [--epochs 2 --batch-size 8 --threads 1]``. Writes
``bench/results/reward_model.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).parent))

from _recipe import prepared_data_dir

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "extraction" / "dpo_train.jsonl"
RESULTS = REPO / "bench" / "results" / "reward_model.json"
TARGET = 0.8


def run(args: argparse.Namespace) -> dict[str, Any]:
    import transformers

    from services.trainer.adapters import store_and_register
    from services.trainer.config import TrainerSettings
    from services.trainer.files import DataFile
    from services.trainer.recipes.context import RecipeContext
    from services.trainer.recipes.reward import run_reward
    from services.trainer.schemas import JobSpec

    data_dir = prepared_data_dir(Path(args.cache), "bench-reward-")
    settings = TrainerSettings(data_dir=data_dir, torch_threads=args.threads or None)
    hyperparameters: dict[str, Any] = {
        "n_epochs": args.epochs,
        "batch_size": args.batch_size,
        "max_length": 512,
        "logging_steps": 5,
    }
    if args.learning_rate:
        hyperparameters["learning_rate"] = args.learning_rate
    spec = JobSpec.model_validate(
        {
            "training_file": DATA.name,
            "seed": 42,
            "method": {"type": "reward", "reward": {"hyperparameters": hyperparameters}},
            "data": {"validation_fraction": args.validation_fraction},
        }
    )
    events: list[str] = []

    class Reporter:
        def event(
            self, message: str, *, level: str = "info", type: str = "message", data: Any = None
        ) -> None:
            events.append(message)
            print(f"[{level}] {message}", flush=True)

        def should_stop(self) -> str | None:
            return None

        def phase(self, status: str) -> None:
            pass

    work = data_dir / "work"
    work.mkdir()
    ctx = RecipeContext(
        spec=spec,
        settings=settings,
        train_file=DataFile(DATA, DATA.name),
        validation_file=None,
        output_dir=work,
        reporter=Reporter(),
        register=lambda folder, manifest, base: store_and_register(
            settings, folder, manifest, base, "extraction-reward"
        ),
        adapter_name="extraction-reward",
    )
    captured: dict[str, Any] = {}
    original = transformers.Trainer.train

    def timed_train(self: Any, *a: Any, **kw: Any) -> Any:
        out = original(self, *a, **kw)
        captured["train_runtime"] = out.metrics["train_runtime"]
        return out

    transformers.Trainer.train = timed_train  # type: ignore[method-assign]
    start = time.perf_counter()
    try:
        result = run_reward(ctx)
    finally:
        transformers.Trainer.train = original  # type: ignore[method-assign]
    total = time.perf_counter() - start
    shutil.rmtree(data_dir, ignore_errors=True)
    reward = result.manifest["reward"]
    decisions = result.manifest["config"]["decisions"]
    report = result.manifest["validation_report"]
    return {
        "heldout_pair_accuracy": reward["heldout_pair_accuracy"],
        "baseline_pair_accuracy": reward["baseline_pair_accuracy"],
        "baseline": reward["baseline"],
        "target": TARGET,
        "meets_target": reward["heldout_pair_accuracy"] >= TARGET,
        "held_out_pairs": reward["n_pairs"],
        "training_pairs": report["train"]["examples"],
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": result.manifest["config"]["hyperparameters"]["learning_rate"],
        "total_steps": decisions["total_steps"],
        "train_runtime_s": round(captured["train_runtime"], 1),
        "recipe_total_s": round(total, 1),
        "final_train_loss": result.manifest["metrics"].get("train_loss"),
        "threads": args.threads or "torch default",
        "cpu_count": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def random_heads(args: argparse.Namespace) -> dict[str, Any]:
    """Held-out pair accuracy of ``args.random_heads`` untrained score heads drawn as
    ``from_pretrained`` draws one (normal, std = ``initializer_range``), on the same held-out
    pairs as the run: one forward pass, the heads applied to the last non-pad hidden states.
    Row 0 is the seeded head the run itself starts from, so it must give the run's baseline."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed

    from services.trainer.recipes.reward import pair_accuracy, pair_rows
    from shared.datasets import ChatRenderer, load_examples, prepare, stop_token_ids
    from shared.reward_models import SCORE_BATCH

    if args.threads:
        torch.set_num_threads(args.threads)
    data_dir = prepared_data_dir(Path(args.cache), "bench-reward-")
    base = data_dir / "models" / "smollm2-135m-instruct"
    tokenizer = AutoTokenizer.from_pretrained(base)
    pad_id = int(tokenizer.pad_token_id)
    data = prepare(
        load_examples(DATA, source=DATA.name),
        None,
        ChatRenderer(tokenizer, stop_token_ids(tokenizer)),
        kind="preference",
        max_length=512,
        seed=42,
        validation_fraction=args.validation_fraction,
    )
    held_out, _ = pair_rows(data.validation_pairs, 512)
    set_seed(42)
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=1, dtype=torch.bfloat16, attn_implementation="eager"
    )
    model.config.pad_token_id = pad_id
    model.eval()
    captured: list[torch.Tensor] = []
    model.score.register_forward_hook(lambda _m, inp, _out: captured.append(inp[0].float()))

    def last_states(seqs: list[list[int]]) -> torch.Tensor:
        out = []
        for start in range(0, len(seqs), SCORE_BATCH):
            chunk = seqs[start : start + SCORE_BATCH]
            width = max(len(x) for x in chunk)
            ids = torch.full((len(chunk), width), pad_id)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, x in enumerate(chunk):
                ids[i, : len(x)], mask[i, : len(x)] = torch.tensor(x), 1
            captured.clear()
            with torch.no_grad():
                model(input_ids=ids, attention_mask=mask)
            # The position transformers reads the score at: the rightmost non-pad token.
            last = (torch.arange(width) * (ids != pad_id)).argmax(-1)
            out.append(captured[0][torch.arange(len(chunk)), last])
        return torch.cat(out)

    chosen = last_states([r["chosen_ids"] for r in held_out])
    rejected = last_states([r["rejected_ids"] for r in held_out])
    generator = torch.Generator().manual_seed(0)
    std = model.config.initializer_range
    heads = torch.randn(args.random_heads, chosen.shape[1], generator=generator) * std
    heads = torch.cat([model.score.weight.float(), heads])
    accuracies = [pair_accuracy((chosen @ h).tolist(), (rejected @ h).tolist()) for h in heads]
    shutil.rmtree(data_dir, ignore_errors=True)
    drawn = sorted(accuracies[1:])
    return {
        "held_out_pairs": len(held_out),
        "seeded_head_accuracy": accuracies[0],
        "random_heads": len(drawn),
        "mean_accuracy": round(sum(drawn) / len(drawn), 4),
        "median_accuracy": drawn[len(drawn) // 2],
        "share_of_heads_at_or_above_0.8": round(sum(a >= 0.8 for a in drawn) / len(drawn), 4),
        "share_of_heads_at_or_below_0.2": round(sum(a <= 0.2 for a in drawn) / len(drawn), 4),
        "min_max": [drawn[0], drawn[-1]],
    }


def table(r: dict[str, Any]) -> str:
    rows = [
        ("held-out pair accuracy (trained)", r["heldout_pair_accuracy"]),
        ("baseline: untrained score head, same pairs", r["baseline_pair_accuracy"]),
        ("target", f">= {r['target']}"),
        ("meets target", r["meets_target"]),
        ("held-out / training pairs", f"{r['held_out_pairs']} / {r['training_pairs']}"),
        ("epochs, batch size, steps", f"{r['epochs']}, {r['batch_size']}, {r['total_steps']}"),
        ("learning rate", r["learning_rate"]),
        ("TRL train_runtime (s)", r["train_runtime_s"]),
        ("whole recipe (s)", r["recipe_total_s"]),
        ("final train loss", r["final_train_loss"]),
    ]
    return "\n".join(["| figure | value |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in rows)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=0.0, help="0: the method default")
    parser.add_argument("--validation-fraction", type=float, default=0.25)
    # One thread: on the shared 2-core machine a 2-thread OpenMP pool waits on a descheduled peer.
    parser.add_argument("--threads", type=int, default=1, help="torch threads; 0: torch default")
    parser.add_argument("--cache", default=str(REPO / ".loraplex" / "test-cache"))
    parser.add_argument(
        "--random-heads",
        type=int,
        default=0,
        help="no training: the held-out accuracy of this many random untrained score heads",
    )
    args = parser.parse_args()
    if args.random_heads:
        print(json.dumps(random_heads(args), indent=2))
        return
    result = run(args)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(table(result))


if __name__ == "__main__":
    main()
