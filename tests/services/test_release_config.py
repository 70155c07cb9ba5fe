"""The shipped release configs (what `make demo` and the tutorial run) are valid as shipped:
the release config, the training job spec inside it, the files it names and its gate policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.evaluator.policy import load_policy
from services.release import load_config
from services.trainer.schemas import JobSpec

RELEASES = sorted((Path(__file__).resolve().parents[2] / "examples" / "release").glob("v*.yaml"))


@pytest.mark.parametrize("path", RELEASES, ids=[p.name for p in RELEASES])
def test_release_config_is_valid(path: Path) -> None:
    cfg, root = load_config(path)
    JobSpec.model_validate(cfg.training.model_dump(mode="json", by_alias=True))
    assert (root / cfg.training.training_file).is_file()
    assert cfg.evaluation.data and (root / cfg.evaluation.data).is_file()
    assert isinstance(cfg.evaluation.policy, str)
    policy = load_policy(root / cfg.evaluation.policy)
    assert "json_match" in policy.metrics


def test_second_release_continues_from_production() -> None:
    cfg, _ = load_config(next(p for p in RELEASES if p.name == "v2.yaml"))
    assert cfg.training.base_adapter == "extraction:prod"
