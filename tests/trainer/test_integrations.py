"""`services.trainer.integrations`: a job may ask for TensorBoard, takes no settings for it, and
any other tracker is refused by name with what is supported."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest

from services.trainer.schemas import JobSpec


@pytest.mark.parametrize(
    ("integration", "why"),
    [
        ({"type": "wandb"}, "integration type 'wandb' is not available here; supported: tensor"),
        ({"type": "mlflow"}, "integration type 'mlflow' is not available here"),
        ({"type": "tensorboard", "tensorboard": {"log_dir": "/etc"}}, "takes no settings"),
        ({"type": "tensorboard", "wandb": {}}, "Extra inputs are not permitted"),
    ],
)
def test_an_unknown_tracker_or_a_setting_is_refused(integration: dict[str, Any], why: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=why) as caught:
        JobSpec.model_validate({"training_file": "file-x", "integrations": [integration]})
    assert caught.value.errors()[0]["loc"][:2] == ("integrations", 0)


def test_tensorboard_is_accepted() -> None:
    spec = JobSpec.model_validate(
        {
            "training_file": "file-x",
            "integrations": [{"type": "tensorboard"}, {"type": "tensorboard", "tensorboard": {}}],
        }
    )
    assert spec.integrations is not None
    assert [i.type for i in spec.integrations] == ["tensorboard", "tensorboard"]
