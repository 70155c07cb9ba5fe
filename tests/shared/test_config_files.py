"""Reading a YAML config into a model: unreadable, not a mapping, or invalid, each a readable error
of the caller's class that names the file."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, field_validator

from shared.config_files import load_model, read_mapping
from shared.errors import ConfigError, ValidationError


class Job(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    steps: int = 1

    @field_validator("steps")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError("steps must be at least 1")
        return value


def test_a_valid_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("name: a\nsteps: 3\n")
    assert load_model(path, Job, f"config {path}") == Job(name="a", steps=3)


def test_errors_name_the_file_and_every_field(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("steps: 0\nextra: 1\n")
    with pytest.raises(ValidationError) as info:
        load_model(path, Job, f"config {path}", error=ValidationError)
    err = info.value
    assert err.message == f"config {path} is invalid: name: Field required"
    assert err.param == str(path)
    assert err.details == [
        "name: Field required",
        "steps: steps must be at least 1",
        "extra: Extra inputs are not permitted",
    ]


def test_unreadable_and_non_mapping_files(tmp_path: Path) -> None:
    missing = tmp_path / "none.yaml"
    with pytest.raises(ConfigError, match=f"cannot read policy {missing}"):
        read_mapping(missing, f"policy {missing}", param="evaluation.policy")
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n")
    with pytest.raises(ConfigError) as info:
        read_mapping(listed, str(listed), hint=" (name, steps)")
    assert info.value.message == f"{listed} must be a mapping (name, steps)"
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: [\n")
    with pytest.raises(ConfigError, match="cannot read"):
        read_mapping(broken, str(broken))
