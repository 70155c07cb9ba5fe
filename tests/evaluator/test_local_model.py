"""The in-process models, without loading weights: a dtype is refused before anything loads, an
adapter on another base is refused, adapters are attached once and switched by name, and the bare
base is scored with the adapters disabled."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import pytest

from services.evaluator.local_model import LocalModels
from shared.errors import ValidationError
from tests.evaluator.planning import BARE, BASE, CANDIDATE


class FakePeft:
    def __init__(self) -> None:
        self.loaded: list[tuple[str, str]] = []
        self.active = ""
        self.disabled = False

    def load_adapter(self, path: str, adapter_name: str) -> None:
        self.loaded.append((path, adapter_name))

    def set_adapter(self, name: str) -> None:
        self.active = name

    @contextmanager
    def disable_adapter(self) -> Iterator[None]:
        self.disabled = True
        yield
        self.disabled = False


def bare_models(peft: Any = None) -> LocalModels:
    models = LocalModels.__new__(LocalModels)  # no weights: the fields activate() reads
    models.base = BASE
    models.model = "the base model"
    models._peft = peft
    models._names = {}
    return models


def test_an_unknown_dtype_is_refused_before_loading() -> None:
    with pytest.raises(ValidationError, match="dtype must be one of float32, bfloat16"):
        LocalModels(CANDIDATE, dtype="float16")


def test_the_base_is_the_plain_model_until_an_adapter_is_attached() -> None:
    models = bare_models()
    with models.activate(BARE) as model:
        assert model == "the base model"
    peft = FakePeft()
    models = bare_models(peft)
    with models.activate(BARE) as model:
        assert model is peft and peft.disabled
    assert not peft.disabled


def test_adapters_are_attached_once_and_switched_by_name() -> None:
    peft = FakePeft()
    models = bare_models(peft)
    v2 = replace(CANDIDATE, adapter_path="/store/v2")  # type: ignore[arg-type]
    v1 = replace(CANDIDATE, version_id="a@v1", label="a@v1", adapter_path="/store/v1")  # type: ignore[arg-type]
    for subject, expected in ((v2, "a0"), (v1, "a1"), (v2, "a0")):
        with models.activate(subject) as model:
            assert model is peft and peft.active == expected
    assert peft.loaded == [("/store/v2", "a0"), ("/store/v1", "a1")]
    other = replace(v1, version_id="b@v1", base=replace(BASE, weights_sha256="9" * 64))
    with (
        pytest.raises(ValidationError, match="uses base m, not the loaded m"),
        models.activate(other),
    ):
        pass
