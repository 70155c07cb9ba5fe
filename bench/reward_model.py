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
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "extraction" / "dpo_train.jsonl"
RESULTS = REPO / "bench" / "results" / "reward_model.json"
TARGET = 0.8


def prepared_data_dir(cache: Path) -> Path:
    """A fresh data dir (its own registry) with the embedded model linked in from ``cache``."""
    from shared.basemodel import prepare_embedded_model
    from shared.settings import SharedSettings

    cache.mkdir(parents=True, exist_ok=True)
    model = prepare_embedded_model(SharedSettings(data_dir=cache)).path
    data_dir = Path(tempfile.mkdtemp(prefix="bench-reward-"))
    target = data_dir / "models" / model.name
    target.mkdir(parents=True)
    for item in model.iterdir():
        if item.is_file():
            os.link(item, target / item.name)
        else:
            shutil.copytree(item, target / item.name)
    return data_dir


def run(args: argparse.Namespace) -> dict[str, Any]:
    import transformers

    from services.trainer.adapters import store_and_register
    from services.trainer.config import TrainerSettings
    from services.trainer.files import DataFile
    from services.trainer.recipes.context import RecipeContext
    from services.trainer.recipes.reward import run_reward
    from services.trainer.schemas import JobSpec

    data_dir = prepared_data_dir(Path(args.cache))
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
    args = parser.parse_args()
    result = run(args)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(table(result))


if __name__ == "__main__":
    main()
