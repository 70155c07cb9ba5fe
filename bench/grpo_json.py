"""GRPO from a JSON-match grader, starting from a deliberately under-trained SFT adapter.

The curriculum's last step (RL after SFT), measured on the shipped order-extraction example:

1. an SFT adapter trained for only ``--sft-steps`` steps on ``examples/extraction/sft_train.jsonl``
   (under-trained on purpose, so there is room to improve);
2. a ``reinforcement`` job from that adapter (``base_adapter``) on the same orders as prompts, the
   ``json_match`` grader comparing each sampled completion with the order's JSON, KL against the
   SFT adapter (the starting policy);
3. the evaluator scores both versions on ``examples/extraction/holdout.jsonl`` (300 orders never
   trained on) and its paired gate decides superiority (``json_match: {min_improvement: 0}``):
   the GRPO version must beat the SFT one with 95% confidence.

Both recipes run exactly as the worker runs them (registration into this run's own registry); the
evaluation is the evaluator's own ``run_now``. The reward curve (mean grader reward and KL per step)
goes into the report.

Usage: ``python bench/grpo_json.py [--sft-steps 6 --rl-steps 30 --threads 2]``. Writes
``bench/results/grpo_json.json`` and the ``grpo_json`` section of ``docs/benchmarks.md``.
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

from _report import record
from reward_model import prepared_data_dir

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "extraction"
GRADER = {
    "type": "json_match",
    "name": "order",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
}
POLICY = {
    "version": 1,
    "name": "grpo-must-beat-sft",
    "confidence": 0.95,
    "min_items": 100,
    "metrics": {"json_match": {"min_improvement": 0.0}},
}


def prompt_rows(chat_file: Path) -> list[dict[str, Any]]:
    """The SFT orders as prompts: the chat without its answer, the answer kept for the grader."""
    rows = []
    for line in chat_file.read_text().splitlines():
        messages = json.loads(line)["messages"]
        rows.append({"messages": messages[:-1], "answer": messages[-1]["content"]})
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    from services.evaluator import service
    from services.evaluator.config import EvaluatorSettings
    from services.evaluator.schemas import EvaluationCreate
    from services.trainer.config import TrainerSettings
    from shared.registry.db import open_registry
    from tests.trainer.conftest import RecordingReporter, run_in_process

    data_dir = prepared_data_dir(Path(args.cache), "bench-grpo-")
    os.environ["LORAPLEX_DATA_DIR"] = str(data_dir)
    settings = TrainerSettings(data_dir=data_dir, torch_threads=args.threads or None)
    lora = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0}
    timings: dict[str, float] = {}

    start = time.perf_counter()
    sft_spec = {
        "seed": args.seed,
        "method": {
            "type": "supervised",
            "supervised": {
                "hyperparameters": {
                    "max_steps": args.sft_steps,
                    "batch_size": 8,
                    "learning_rate": 2e-4,
                    "max_length": 256,
                    "logging_steps": 1,
                    "save_steps": args.sft_steps,
                }
            },
        },
        "lora": lora,
        "data": {"validation_fraction": 0},
    }
    run_in_process(
        settings, sft_spec, EXAMPLE / "sft_train.jsonl", adapter_name="under", work=data_dir / "w1"
    )
    timings["sft_s"] = time.perf_counter() - start

    prompts = data_dir / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps(r) + "\n" for r in prompt_rows(EXAMPLE / "sft_train.jsonl"))
    )
    rl_spec = {
        "seed": args.seed,
        "base_adapter": "under@v1",
        "method": {
            "type": "reinforcement",
            "reinforcement": {
                "grader": GRADER,
                "hyperparameters": {
                    "max_steps": args.rl_steps,
                    "batch_size": args.prompts,
                    "num_generations": args.generations,
                    "max_completion_length": 64,
                    "max_length": 256,
                    "temperature": args.temperature,
                    "learning_rate": args.rl_learning_rate,
                    "warmup_ratio": 0,
                    "logging_steps": 1,
                    "save_steps": args.rl_steps,
                },
            },
        },
        "lora": lora,
        "data": {"validation_fraction": 0},
    }
    start = time.perf_counter()
    reporter = RecordingReporter()

    def progress(message: str, **kw: Any) -> None:
        data = kw.get("data") or {}
        if "reward" in data:
            print(
                f"  step {data.get('step')}: reward {data['reward']:.3f} kl {data.get('kl', 0):.4f}",
                flush=True,
            )

    original = reporter.event

    def event(message: str, **kw: Any) -> None:
        progress(message, **kw)
        original(message, **kw)

    reporter.event = event  # type: ignore[method-assign]
    rl, _ = run_in_process(
        settings, rl_spec, prompts, adapter_name="rl", reporter=reporter, work=data_dir / "w2"
    )
    timings["grpo_s"] = time.perf_counter() - start
    curve = [
        {"step": e["data"]["step"], "reward": e["data"]["reward"], "kl": e["data"].get("kl")}
        for e in reporter.events
        if e["data"] and "reward" in e["data"] and "step" in e["data"]
    ]

    start = time.perf_counter()
    ev_settings = EvaluatorSettings(data_dir=data_dir)
    registry = open_registry(ev_settings)
    suite = {
        "name": "extraction",
        "generation": {
            "enabled": True,
            "backend": "local",
            "metrics": ["json_match", "json_valid"],
            "decoding": {"max_new_tokens": 64, "temperature": 0.0},
        },
        "contamination": {"enabled": False},
    }
    try:
        outcome = service.run_now(
            ev_settings,
            registry,
            EvaluationCreate(
                candidate="rl@v1",
                baseline="under@v1",
                data=str(EXAMPLE / "holdout.jsonl"),
                suite=suite,
                policy=POLICY,
                limit=args.limit,
            ),
        )
    finally:
        registry.dispose()
    timings["evaluation_s"] = time.perf_counter() - start
    result, gate = outcome.result, outcome.gate
    assert result.baseline is not None and gate is not None
    shutil.rmtree(data_dir, ignore_errors=True)
    cand, base = result.candidate.metrics, result.baseline.metrics
    return {
        "sft_steps": args.sft_steps,
        "rl_steps": args.rl_steps,
        "prompts_per_step": args.prompts,
        "generations_per_prompt": args.generations,
        "rl_learning_rate": args.rl_learning_rate,
        "temperature": args.temperature,
        "heldout_items": cand["json_match"].n,
        "json_match_sft": cand_value(base, "json_match"),
        "json_match_grpo": cand_value(cand, "json_match"),
        "json_valid_sft": cand_value(base, "json_valid"),
        "json_valid_grpo": cand_value(cand, "json_valid"),
        "gate": gate.decision,
        "gate_reasons": list(gate.reasons),
        "reward_curve": curve,
        "kl_reference": rl.manifest["reinforcement"]["reference"]["kind"],
        **{k: round(v, 1) for k, v in timings.items()},
        "threads": args.threads or "torch default",
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def cand_value(metrics: dict[str, Any], name: str) -> float | None:
    value = metrics[name].value
    return None if value is None else round(float(value), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sft-steps", type=int, default=6)
    parser.add_argument("--rl-steps", type=int, default=30)
    parser.add_argument("--prompts", type=int, default=4, help="prompts per GRPO step")
    parser.add_argument("--generations", type=int, default=4, help="completions per prompt")
    parser.add_argument("--rl-learning-rate", type=float, default=5e-5)
    parser.add_argument("--temperature", type=float, default=0.7, help="GRPO sampling")
    parser.add_argument("--limit", type=int, default=None, help="held-out items (default: all)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--cache", default=str(REPO / ".loraplex" / "test-cache"))
    parser.add_argument("--no-record", action="store_true", help="print only (trial runs)")
    args = parser.parse_args()
    out = run(args)
    print(json.dumps(out, indent=2))
    if args.no_record:
        return
    record(
        "grpo_json",
        title="GRPO from a JSON-match grader, from an under-trained SFT adapter",
        baseline="the SFT adapter GRPO started from, on the same held-out orders",
        figures=out,
        ratios={"json_match gain": (out["json_match_grpo"] or 0) - (out["json_match_sft"] or 0)},
        targets={"gate decides superiority": out["gate"]},
        notes=f"python bench/grpo_json.py --sft-steps {args.sft_steps} --rl-steps {args.rl_steps}",
    )


if __name__ == "__main__":
    main()
