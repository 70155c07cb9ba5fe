"""The check a full fine-tune's folder passes before an engine is started on it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from shared.servability import check_full_model_dir
from tests.server.fakes import make_base


def make_full(base: Path, folder: Path, *, seed: int = 1) -> Path:
    """The tiny base with noise on every tensor, a tokenizer and a chat template."""
    shutil.copytree(base, folder)
    rng = np.random.default_rng(seed)
    tensors = load_file(str(folder / "model.safetensors"))
    noisy = {
        k: (v + 0.01 * rng.standard_normal(v.shape)).astype(v.dtype) for k, v in tensors.items()
    }
    save_file(noisy, str(folder / "model.safetensors"))
    (folder / "tokenizer.json").write_text("{}")
    (folder / "chat_template.jinja").write_text("{{ messages }}")
    return folder


@pytest.fixture
def base(tmp_path: Path) -> Path:
    # With a chat template: a folder must carry what its base has (the chat route needs it).
    folder = make_base(tmp_path / "base")
    (folder / "chat_template.jinja").write_text("{{ messages }}")
    return folder


def test_a_noisy_copy_of_the_base_is_servable(base: Path, tmp_path: Path) -> None:
    assert check_full_model_dir(make_full(base, tmp_path / "full"), base) == []


def test_a_tensor_of_another_shape_is_named(base: Path, tmp_path: Path) -> None:
    folder = make_full(base, tmp_path / "full")
    tensors = load_file(str(folder / "model.safetensors"))
    tensors["model.layers.0.self_attn.q_proj.weight"] = np.zeros((8, 16), np.float32)
    save_file(tensors, str(folder / "model.safetensors"))
    reasons = check_full_model_dir(folder, base)
    assert any("q_proj" in r and "(8, 16)" in r and "(16, 16)" in r for r in reasons), reasons


def test_missing_and_extra_tensors_are_named(base: Path, tmp_path: Path) -> None:
    folder = make_full(base, tmp_path / "full")
    tensors = load_file(str(folder / "model.safetensors"))
    del tensors["model.layers.0.self_attn.v_proj.weight"]
    tensors["model.layers.9.mlp.up_proj.weight"] = np.zeros((4, 4), np.float32)
    save_file(tensors, str(folder / "model.safetensors"))
    reasons = check_full_model_dir(folder, base)
    assert any("v_proj" in r and "missing" in r for r in reasons), reasons
    assert any("layers.9.mlp.up_proj" in r and "base model lacks" in r for r in reasons), reasons


def test_non_finite_weights_are_refused(base: Path, tmp_path: Path) -> None:
    folder = make_full(base, tmp_path / "full")
    tensors = load_file(str(folder / "model.safetensors"))
    tensors["model.embed_tokens.weight"][3, 2] = np.nan
    save_file(tensors, str(folder / "model.safetensors"))
    assert check_full_model_dir(folder, base) == [
        "1 tensors hold NaN or infinite values: model.embed_tokens.weight"
    ]


def test_another_architecture_and_no_chat_template_are_named(base: Path, tmp_path: Path) -> None:
    folder = make_full(base, tmp_path / "full")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"model_type": "qwen2"}))
    (folder / "chat_template.jinja").unlink()
    reasons = check_full_model_dir(folder, base)
    assert any("model_type is 'qwen2', the base model's is 'llama'" in r for r in reasons), reasons
    assert any("chat template" in r for r in reasons), reasons


def test_a_folder_without_config_or_weights(base: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    reasons = check_full_model_dir(empty, base)
    assert any(r.startswith("config.json is missing") for r in reasons), reasons
    folder = make_full(base, tmp_path / "full")
    (folder / "model.safetensors").unlink()
    assert [r.split(" in ")[0] for r in check_full_model_dir(folder, base)] == [
        "no *.safetensors weights"
    ]
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    assert any("unreadable or truncated" in r for r in check_full_model_dir(folder, base))
