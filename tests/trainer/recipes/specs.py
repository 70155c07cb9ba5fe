"""Helpers for the recipe tests: a tiny SFT job spec, the check of a saved adapter folder, and the
fakes the unit tests put around a recipe step (a reporter, a context on a temporary folder)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from services.trainer.config import TrainerSettings
from services.trainer.files import DataFile
from services.trainer.recipes.context import RecipeContext
from services.trainer.recipes.saving import MANIFEST
from services.trainer.schemas import JobSpec
from shared.basemodel import ResolvedBaseModel
from shared.servability import base_linear_shapes, check_adapter_dir
from tests.trainer.conftest import RecordingReporter, tiny_hyperparameters

BASE = "smollm2-135m-instruct"


def sft_spec(**hp: Any) -> dict[str, Any]:
    return {
        "method": {
            "type": "supervised",
            "supervised": {"hyperparameters": tiny_hyperparameters(**hp)},
        }
    }


def check_folder(folder: Path, settings: TrainerSettings) -> dict[str, Any]:
    assert sorted(p.name for p in folder.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        MANIFEST,
    ]
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == BASE
    base_dir = settings.models_dir / BASE
    assert check_adapter_dir(folder, base_shapes=base_linear_shapes(base_dir)) == []
    manifest: dict[str, Any] = json.loads((folder / MANIFEST).read_text())
    return manifest


def make_ctx(
    tmp_path: Path,
    spec: dict[str, Any] | None = None,
    *,
    train: Path | None = None,
    validation: Path | None = None,
    reporter: RecordingReporter | None = None,
    registered: list[tuple[Path, dict[str, Any], ResolvedBaseModel]] | None = None,
    base_adapter_dir: Path | None = None,
) -> RecipeContext:
    """A context on ``tmp_path`` that loads nothing: ``register`` appends to ``registered``."""
    train = train or tmp_path / "train.jsonl"
    job = JobSpec.model_validate({"training_file": str(train), **(spec or sft_spec())})
    output = tmp_path / "work"
    output.mkdir(exist_ok=True)
    calls = registered if registered is not None else []

    def register(folder: Path, manifest: dict[str, Any], base: ResolvedBaseModel) -> str:
        calls.append((folder, manifest, base))
        return f"adapter@v{len(calls)}"

    return RecipeContext(
        spec=job,
        settings=TrainerSettings(data_dir=tmp_path / "data"),
        train_file=DataFile(train, train.name),
        validation_file=DataFile(validation, validation.name) if validation else None,
        output_dir=output,
        reporter=reporter or RecordingReporter(),
        register=register,
        adapter_name="adapter",
        base_adapter_dir=base_adapter_dir,
    )
