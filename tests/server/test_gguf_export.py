"""``loraplex adapters export --merged DIR --quantize``: GGUF files another runtime reads.

The slow test exports a registered adapter on the embedded SmolLM2-135M (random LoRA weights on
all seven linear layers, std 0.03: no training fixture is fast enough, and these move the model
well away from its base) as q8_0 and q4_0 through the CLI, loads each file with transformers' own
GGUF reader (``gguf_file=``), generates, and compares held-out perplexity with the fp32 merge.
A control file written without llama.cpp's q/k permutation must be far worse, so a missing or
wrong permutation fails the test rather than passing silently.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from services.server.cli import adapters_app

# Relative perplexity gap against the fp32 merge, on ROWS held-out conversations. Measured
# (deterministic: fixed adapter seed, gguf's reference quantizers): q8_0 +0.13%, q4_0 +39.6%;
# without the q/k permutation +649% on the first five. docs/benchmarks.md, gguf_export.
Q8_0_BOUND = 0.02
Q4_0_BOUND = 0.6  # q4_0 of a 135M model is coarse
ROWS = 20  # held-out conversations scored (about 2,000 tokens)


def test_unknown_quantization_is_refused_with_the_valid_ones(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(
        adapters_app, ["export", "shop@v1", "--merged", str(out), "--quantize", "q3_k"]
    )
    assert result.exit_code == 2, result.output
    assert "'q3_k'" in result.output and "q8_0, q4_0" in result.output
    assert not out.exists()


# Heavy: an fp32 merge, two exports, three transformers loads and four perplexity passes take
# 5 min on 2 cores; `make test-all` runs it, `make test` (CI) has the refusal test above.
@pytest.mark.slow
@pytest.mark.heavy
def test_gguf_exports_load_in_transformers_within_the_perplexity_bound(
    model_settings: object, tmp_path: Path
) -> None:
    import gguf
    from transformers import AutoTokenizer

    from bench.gguf_export import generate, holdout_texts, load_gguf, perplexity
    from services.server.gguf_export import file_sha256, write_gguf
    from services.server.importer import merge_fp32
    from shared.artifacts import open_store
    from shared.registry.db import open_registry
    from shared.settings import SharedSettings
    from tests.evaluator.conftest import SMOL_LINEAR, random_adapter, register_adapter

    settings = SharedSettings()
    folder = random_adapter(tmp_path / "a", 9, modules=tuple(SMOL_LINEAR), scale=0.03)
    registry = open_registry(settings)
    try:
        version = register_adapter(settings, registry, folder, "extract")
        _, base, merged = merge_fp32(settings, registry, open_store(settings), version)
    finally:
        registry.dispose()
    tokenizer = AutoTokenizer.from_pretrained(base.path)
    texts = holdout_texts(tokenizer, ROWS)
    reference = perplexity(merged, tokenizer, texts)

    out = tmp_path / "export"
    runner = CliRunner()
    gaps = {}
    for qtype in ("q8_0", "q4_0"):
        result = runner.invoke(
            adapters_app, ["export", version, "--merged", str(out), "--quantize", qtype]
        )
        assert result.exit_code == 0, result.output
        path = out / f"model-{qtype}.gguf"
        lineage = json.loads((out / f"model-{qtype}.gguf.lineage.json").read_text())
        assert lineage["source_version"] == version and lineage["quantization"] == qtype
        assert lineage["file_sha256"] == file_sha256(path)
        assert lineage["base_model_sha256"] == base.weights_sha256
        reader = gguf.GGUFReader(str(path))
        field = reader.get_field("general.source.version")
        assert field is not None and field.contents() == version
        field = reader.get_field("general.source.adapter_sha256")
        assert field is not None and field.contents() == lineage["adapter_sha256"]

        model, gguf_tokenizer = load_gguf(path)
        assert gguf_tokenizer(texts[0]).input_ids == tokenizer(texts[0]).input_ids
        prompt = texts[0].rsplit("<|im_start|>assistant", 1)[0] + "<|im_start|>assistant\n"
        assert generate(model, gguf_tokenizer, prompt).strip()
        gaps[qtype] = perplexity(model, gguf_tokenizer, texts) / reference - 1
        print(f"\n{qtype}: {path.stat().st_size / 1e6:.1f} MB, gap {gaps[qtype]:+.2%}")
        del model
    assert not list(out.glob(".*"))  # no temporary files left
    runs = runner.invoke(
        adapters_app, ["export", version, "--merged", str(out), "--quantize", "q8_0"]
    )
    assert runs.exit_code == 3 and "--force" in runs.output  # an existing file is kept

    # Control: the same merge without the q/k permutation reads back as a broken model.
    control = tmp_path / "control" / "model-q8_0.gguf"
    control.parent.mkdir()
    write_gguf(merged, base.path, control, "q8_0", {}, permute=False)
    broken, _ = load_gguf(control)
    unpermuted = (
        perplexity(broken, tokenizer, texts[:5]) / perplexity(merged, tokenizer, texts[:5]) - 1
    )
    print(
        f"\nfp32 merge perplexity {reference:.3f}; gaps {gaps}; without permutation {unpermuted:+.1%}"
    )
    assert abs(gaps["q8_0"]) < Q8_0_BOUND
    assert abs(gaps["q4_0"]) < Q4_0_BOUND
    assert unpermuted > 5.0  # more than six times the perplexity


# Slow, not heavy: one float32 load and one q8_0 conversion of the 135M model, nothing scored.
@pytest.mark.slow
def test_a_full_version_exports_its_own_weights_with_its_lineage(
    model_settings: object, base_model: object, tmp_path: Path
) -> None:
    import gguf
    import numpy as np
    from gguf.quants import dequantize
    from safetensors import safe_open

    from services.server.gguf_export import _source_pre_tokenizer, file_sha256
    from shared.basemodel import ResolvedBaseModel
    from shared.settings import SharedSettings
    from tests.full_models import register_full_version, write_full_model

    assert isinstance(base_model, ResolvedBaseModel)
    settings = SharedSettings()
    # Noise well above q8_0's rounding, so the file's weights tell the fine-tune from its base.
    folder = write_full_model(base_model, tmp_path / "full", seed=5, noise=0.2)
    version = register_full_version(settings, base_model, folder, name="full-ft")
    out = tmp_path / "export"
    result = CliRunner().invoke(
        adapters_app, ["export", version, "--merged", str(out), "--quantize", "q8_0"]
    )
    assert result.exit_code == 0, result.output
    path = out / "model-q8_0.gguf"
    lineage = json.loads((out / "model-q8_0.gguf.lineage.json").read_text())
    assert lineage["source_version"] == version and lineage["kind"] == "full"
    assert lineage["quantization"] == "q8_0" and lineage["file_sha256"] == file_sha256(path)
    assert lineage["base_model_sha256"] == base_model.weights_sha256
    assert len(lineage["source_sha256"]) == 64 and "adapter_sha256" not in lineage
    reader = gguf.GGUFReader(str(path))

    def field(key: str) -> object:
        found = reader.get_field(key)
        assert found is not None, key
        return found.contents()

    assert field("general.source.version") == version
    assert field("general.source.kind") == "full"
    assert field("general.source.sha256") == lineage["source_sha256"]
    assert reader.get_field("general.source.adapter_sha256") is None
    # Its tokenizer is the base's, so llama.cpp's pre-tokenizer name is the base's too.
    assert field("tokenizer.ggml.pre") == _source_pre_tokenizer(base_model.path)

    tensor = next(t for t in reader.tensors if t.name == "blk.0.attn_v.weight")
    written = dequantize(tensor.data, tensor.tensor_type).reshape(-1)

    def weight(model_dir: Path) -> Any:  # stored in bfloat16, which numpy cannot read
        with safe_open(str(model_dir / "model.safetensors"), framework="pt") as fh:
            return fh.get_tensor("model.layers.0.self_attn.v_proj.weight").float().numpy()

    off_full = float(np.abs(written - weight(folder).reshape(-1)).mean())
    off_base = float(np.abs(written - weight(base_model.path).reshape(-1)).mean())
    print(f"\nmean |gguf - full| {off_full:.5f}, |gguf - base| {off_base:.5f}")
    assert off_full < off_base / 4, (off_full, off_base)
