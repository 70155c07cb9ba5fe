"""What the end-to-end modules share: a local stack on a copy of the base model, a short release
config (a few training steps, a quick evaluation) and running it over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from services.localstack import LocalStack
from services.release import HttpRelease, Services, load_config
from shared.basemodel import ResolvedBaseModel

REPO = Path(__file__).resolve().parents[2]
TRAIN = REPO / "examples" / "extraction" / "sft_train.jsonl"
TEST = REPO / "examples" / "extraction" / "test.jsonl"
DEADLINE_S = 30.0


@contextmanager
def local_stack(
    data_dir: Path, base_model: ResolvedBaseModel, env: dict[str, str]
) -> Iterator[LocalStack]:
    models = data_dir / "models" / base_model.path.name
    models.mkdir(parents=True)
    for item in base_model.path.iterdir():
        (models / item.name).hardlink_to(item)
    with LocalStack(data_dir, extra_env=env) as local:
        local.start()
        yield local


def release_yaml(tmp: Path, seed: int, adapter: str = "flow", **hyper: Any) -> Path:
    train = tmp / "train.jsonl"
    train.write_text("".join(TRAIN.read_text().splitlines(keepends=True)[:24]))
    policy = {
        "version": 1,
        "min_items": 4,
        "metrics": {"perplexity": {"max": 10_000}, "bits_per_byte": {"max": 100}},
    }
    config = {
        "adapter": adapter,
        "promote": "prod",
        "training": {
            "model": "smollm2-135m-instruct",
            "training_file": str(train),
            "seed": seed,
            "method": {
                "type": "supervised",
                "supervised": {"hyperparameters": {"max_steps": 4, "batch_size": 4, **hyper}},
            },
            "lora": {"r": 8, "lora_alpha": 16},
        },
        "evaluation": {"data": str(TEST), "limit": 6, "suite": "quick", "policy": policy},
    }
    path = tmp / f"release-{adapter}-{seed}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_release(stack: LocalStack, path: Path, lines: list[str]) -> int:
    cfg, root = load_config(path)
    cfg.services = Services(
        trainer_url=stack.trainer_url,
        evaluator_url=stack.evaluator_url,
        server_url=stack.server_url,
        api_key=stack.admin_key,
        reconcile_deadline_s=DEADLINE_S,
        poll_s=0.5,
    )
    return HttpRelease(cfg, root, say=lines.append).run()
