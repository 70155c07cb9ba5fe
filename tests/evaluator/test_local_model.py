"""The in-process models, without loading weights: a dtype is refused before anything loads, an
adapter on another base is refused, adapters are attached once and switched by name, and the bare
base is scored with the adapters disabled."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
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
    models._base_model = "the base model"
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


class FakeTokenizer:
    def __init__(self, vocab: dict[str, int], template: str = "T") -> None:
        self.vocab, self.chat_template = vocab, template

    def get_vocab(self) -> dict[str, int]:
        return self.vocab


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Model loads by folder; each returns a model named after its folder."""
    import transformers

    calls: list[str] = []

    class Loaded:
        def __init__(self, path: str) -> None:
            self.path = path

        def eval(self) -> Loaded:
            return self

    def load(path: str, **_kw: Any) -> Loaded:
        calls.append(path)
        return Loaded(path)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", load)
    return calls


def full_subject(tmp_path: Path, vid: str) -> Any:
    folder = tmp_path / vid
    folder.mkdir(exist_ok=True)
    return replace(
        CANDIDATE, version_id=vid, label=vid, adapter_path=folder, manifest={"kind": "full"}
    )


def test_a_full_fine_tune_is_its_own_model_loaded_once(tmp_path: Path, loads: list[str]) -> None:
    peft = FakePeft()
    models = bare_models(peft)
    models.dtype = "float32"
    models._full = {}
    f1, f2 = full_subject(tmp_path, "f@v1"), full_subject(tmp_path, "f@v2")
    for subject in (f1, f2, f1, BARE, f2):
        with models.activate(subject) as model:
            if subject.is_base:
                assert model is peft and peft.disabled  # the base stays the base
            else:
                assert model.path == str(subject.adapter_path)
    assert loads == [str(f1.adapter_path), str(f2.adapter_path)]
    assert peft.loaded == []  # never attached as a PEFT adapter
    models.renderer = SimpleNamespace(template_sha256="t")  # type: ignore[assignment]
    assert models.describe(f1)["weights"] == "full fine-tune"
    assert "weights" not in models.describe(BARE)
    other = replace(f1, version_id="g@v1", base=replace(BASE, weights_sha256="9" * 64))
    with (
        pytest.raises(ValidationError, match="uses base m, not the loaded m"),
        models.activate(other),
    ):
        pass


def test_a_full_model_with_another_tokenizer_is_refused(
    tmp_path: Path, loads: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers

    models = bare_models()
    models.dtype = "float32"
    models._full = {}
    models.tokenizer = FakeTokenizer({"a": 0, "b": 1})
    own: dict[str, Any] = {"tok": FakeTokenizer({"a": 0, "b": 1})}
    monkeypatch.setattr(
        transformers.AutoTokenizer, "from_pretrained", lambda _path, **_kw: own["tok"]
    )
    f1, f2, f3 = (full_subject(tmp_path, v) for v in ("f@v1", "f@v2", "f@v3"))
    for subject in (f1, f2, f3):
        assert subject.adapter_path is not None
        (subject.adapter_path / "tokenizer_config.json").write_text("{}")
    with models.activate(f1):
        pass
    own["tok"] = FakeTokenizer({"a": 0, "c": 1})
    with (
        pytest.raises(ValidationError, match="another vocabulary than its base"),
        models.activate(f2),
    ):
        pass
    own["tok"] = FakeTokenizer({"a": 0, "b": 1}, template="other")
    with pytest.raises(ValidationError, match="another chat template"), models.activate(f3):
        pass
    assert loads == [str(f1.adapter_path)]  # refused before any weights load


def test_two_full_fine_tunes_never_load_the_base(
    tmp_path: Path, loads: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The base's weights are loaded on first use: a full-vs-full evaluation skips them."""
    import transformers

    tokenizer = SimpleNamespace(
        chat_template="T", pad_token_id=0, eos_token_id=1, all_special_tokens=[]
    )
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *_a, **_k: tokenizer)
    models = LocalModels(CANDIDATE)
    f1, f2 = full_subject(tmp_path, "f@v1"), full_subject(tmp_path, "f@v2")
    for subject in (f1, f2):
        with models.activate(subject):
            pass
    assert loads == [str(f1.adapter_path), str(f2.adapter_path)]
    with models.activate(BARE) as model:
        assert model.path == str(BASE.path)
    with models.activate(BARE):
        pass
    assert loads[2:] == [str(BASE.path)]  # loaded once, when the base was asked for
