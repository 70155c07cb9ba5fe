"""The embedded base model: prepared atomically, verified by hash, loadable, answers sensibly."""

from __future__ import annotations

import json
import multiprocessing
import shutil
from pathlib import Path
from typing import Any

import pytest

from shared.basemodel import (
    MARKER,
    ResolvedBaseModel,
    prepare_embedded_model,
    register_base_model,
    resolve_base_model,
    verify_folder,
    weights_sha256,
)
from shared.errors import IntegrityError, NotFoundError, OfflineError
from shared.registry.db import open_registry
from shared.settings import SharedSettings


def test_prepared_folder_is_complete(base_model: ResolvedBaseModel) -> None:
    folder = base_model.path
    for name in ("config.json", "model.safetensors", "tokenizer.json", MARKER):
        assert (folder / name).is_file(), name
    assert "im_start" in (folder / "chat_template.jinja").read_text()
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert "quantization_config" not in config
    assert verify_folder(folder) == base_model.weights_sha256 == weights_sha256(folder)


def test_prepare_again_is_a_cheap_no_op(base_model: ResolvedBaseModel) -> None:
    settings = SharedSettings(data_dir=base_model.path.parent.parent)
    before = (base_model.path / "model.safetensors").stat().st_mtime_ns
    assert prepare_embedded_model(settings) == base_model
    assert (base_model.path / "model.safetensors").stat().st_mtime_ns == before


@pytest.mark.slow
def test_greedy_answer_mentions_paris(base_model: ResolvedBaseModel) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_model.path)
    model: Any = AutoModelForCausalLM.from_pretrained(base_model.path, dtype=torch.float32)
    ids: Any = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**ids, max_new_tokens=16, do_sample=False)
    answer = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


@pytest.mark.slow
def test_peft_wraps_the_prepared_model(base_model: ResolvedBaseModel) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_model.path, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear"))
    trainable, total = peft_model.get_nb_trainable_parameters()
    assert 0 < trainable < total / 10


def _prepare_in_child(data_dir: str, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    queue.put(prepare_embedded_model(SharedSettings(data_dir=Path(data_dir))).weights_sha256)


@pytest.mark.slow
def test_corrupt_folder_is_detected_and_rebuilt_and_concurrent_first_uses_agree(
    tmp_path: Path, base_model: ResolvedBaseModel
) -> None:
    settings = SharedSettings(data_dir=tmp_path / "data")
    target = settings.models_dir / base_model.path.name
    shutil.copytree(base_model.path, target)
    # Half-written: the weights are truncated, the marker still claims the old hash.
    with (target / "model.safetensors").open("r+b") as fh:
        fh.truncate(1024)
    assert verify_folder(target) is None
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_prepare_in_child, args=(str(settings.data_dir), queue))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=600)
        assert p.exitcode == 0
    hashes = {queue.get(timeout=5) for _ in procs}
    assert hashes == {base_model.weights_sha256}
    assert verify_folder(target) == base_model.weights_sha256
    # The broken folder was kept aside, not silently deleted; no temp folders remain.
    leftovers = [p.name for p in settings.models_dir.iterdir() if p.name.startswith(".")]
    assert any(".corrupt-" in name for name in leftovers)
    assert not [n for n in leftovers if n.startswith(f".{base_model.path.name}-")]


def test_unknown_base_model_name_is_a_clear_error(settings: SharedSettings) -> None:
    with pytest.raises(NotFoundError, match="unknown base model 'gpt-17'"):
        resolve_base_model(settings, "gpt-17")


def test_hub_id_offline_says_how_to_use_a_local_folder(
    settings: SharedSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineError, match="set LORAPLEX_BASE_MODEL to the local folder"):
        resolve_base_model(settings, "someorg/some-model")


def test_local_folder_registers_by_hash_and_name_clash_is_refused(
    settings: SharedSettings, base_model: ResolvedBaseModel, tmp_path: Path
) -> None:
    registry = open_registry(settings)
    with registry.session() as s:
        local = resolve_base_model(settings, str(base_model.path), session=s)
    assert local.weights_sha256 == base_model.weights_sha256
    assert local.source.startswith("local:")
    imposter = ResolvedBaseModel(local.name, tmp_path, "0" * 64, "local:elsewhere")
    with pytest.raises(IntegrityError, match="registered with weights"), registry.session() as s:
        register_base_model(s, imposter)
    registry.dispose()


def test_folder_without_config_is_refused(settings: SharedSettings, tmp_path: Path) -> None:
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(Exception, match=r"config\.json"):
        resolve_base_model(settings, str(folder))
