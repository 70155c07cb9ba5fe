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
