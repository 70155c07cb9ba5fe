"""`services.trainer.integrations`: a job may ask for TensorBoard, MLflow or W&B; it may name an
experiment or a project but never where the data goes or a credential; anything else, and a tracker
whose package is missing, is refused by name at submission."""

from __future__ import annotations

import importlib.util
from typing import Any

import pydantic
import pytest

from services.trainer import integrations
from services.trainer.schemas import JobSpec


def spec(*items: dict[str, Any]) -> JobSpec:
    return JobSpec.model_validate({"training_file": "file-x", "integrations": list(items)})


@pytest.mark.parametrize(
    ("integration", "why"),
    [
        (
            {"type": "comet"},
            "integration type 'comet' is not available here; supported: tensorboard, mlflow, wandb",
        ),
        ({"type": "tensorboard", "tensorboard": {"log_dir": "/etc"}}, "takes no settings"),
        ({"type": "tensorboard", "comet": {}}, "Extra inputs are not permitted"),
        ({"type": "mlflow", "wandb": {}}, "type 'mlflow' cannot carry 'wandb' settings"),
        (
            {"type": "mlflow", "mlflow": {"tracking_uri": "http://evil:5000"}},
            "mlflow 'tracking_uri' cannot be chosen by a request",
        ),
        (
            {"type": "wandb", "wandb": {"project": "p", "base_url": "https://evil"}},
            "wandb 'base_url' cannot be chosen by a request: runs are written offline",
        ),
        ({"type": "wandb", "wandb": {"api_key": "x" * 40}}, "wandb 'api_key' cannot be chosen"),
        ({"type": "wandb", "wandb": {"mode": "online"}}, "wandb 'mode' cannot be chosen"),
        ({"type": "mlflow", "mlflow": {"experiment_name": "../x"}}, "should match pattern"),
        ({"type": "wandb", "wandb": {"tags": ["t" * 65]}}, "1 to 64 characters"),
        ({"type": "wandb", "wandb": {"project": "p", "notes": "n"}}, "Extra inputs"),
    ],
)
def test_an_unknown_tracker_a_place_or_a_credential_is_refused(
    integration: dict[str, Any], why: str
) -> None:
    with pytest.raises(pydantic.ValidationError, match=why) as caught:
        spec(integration)
    assert caught.value.errors()[0]["loc"][:2] == ("integrations", 0)


def test_each_tracker_is_accepted_with_its_own_names() -> None:
    job = spec(
        {"type": "tensorboard", "tensorboard": {}},
        {"type": "mlflow"},
        {"type": "mlflow", "mlflow": {"experiment_name": "orders v2"}},
        {"type": "wandb", "wandb": {"project": "orders", "name": "run 1", "tags": ["a", "b"]}},
    )
    assert job.integrations is not None
    types = [i.type for i in job.integrations]
    assert types == ["tensorboard", "mlflow", "mlflow", "wandb"]
    assert job.integrations[1].mlflow is None  # the default experiment, chosen by the recipe
    assert job.integrations[2].mlflow == integrations.MlflowSettings(experiment_name="orders v2")
    wandb = job.integrations[3].wandb
    assert wandb is not None and (wandb.project, wandb.name, wandb.tags) == (
        "orders",
        "run 1",
        ["a", "b"],
    )
    assert integrations.WandbSettings().project == "loraplex"


@pytest.mark.parametrize("tracker", ["mlflow", "wandb"])
def test_a_tracker_whose_package_is_missing_is_refused_at_submission(
    tracker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == tracker else real(name, *a)
    )
    with pytest.raises(pydantic.ValidationError, match="install loraplex with the 'tracking'"):
        spec({"type": tracker})
    assert spec({"type": "tensorboard"}).integrations is not None


def test_the_tracking_packages_are_installed_here() -> None:
    """`make setup` installs the tracking extra (through dev): the read-back tests need both."""
    for package in integrations.PACKAGES.values():
        assert importlib.util.find_spec(package) is not None, package
