"""`services.trainer.recipes.saving`: the saved adapter folder is the same bytes for the same seed,
a stopped run keeps nothing, and the folder loads in vLLM."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.trainer.config import TrainerSettings
from services.trainer.recipes.context import Stopped
from shared.registry.adapters import list_versions
from shared.registry.db import open_registry
from tests.trainer.conftest import RecordingReporter, run_in_process
from tests.trainer.recipes.specs import BASE, sft_spec


@pytest.mark.slow
def test_same_seed_same_bytes_other_seed_other_bytes(
    trainer_model_settings: TrainerSettings, sft_file: Path, tmp_path: Path
) -> None:
    def adapter_bytes(seed: int, name: str) -> tuple[bytes, bytes]:
        result, _ = run_in_process(
            trainer_model_settings,
            {**sft_spec(), "seed": seed},
            sft_file,
            adapter_name=name,
            work=tmp_path / name,
        )
        folder = result.adapter_dir
        return (folder / "adapter_model.safetensors").read_bytes(), (
            folder / "adapter_config.json"
        ).read_bytes()

    first, second, other = adapter_bytes(3, "a"), adapter_bytes(3, "b"), adapter_bytes(4, "c")
    assert first == second
    assert first[0] != other[0]


@pytest.mark.slow
def test_stop_request_keeps_nothing(
    trainer_model_settings: TrainerSettings, sft_file: Path
) -> None:
    reporter = RecordingReporter(stop_after_metrics=1)
    with pytest.raises(Stopped):
        run_in_process(
            trainer_model_settings,
            sft_spec(max_steps=6),
            sft_file,
            reporter=reporter,
            adapter_name="stopped",
        )
    steps = [e["data"]["step"] for e in reporter.events if e["type"] == "metrics"]
    assert max(steps) < 6
    registry = open_registry(trainer_model_settings)
    with registry.session() as s:
        assert list_versions(s, "stopped") == []
    registry.dispose()


@pytest.mark.slow
def test_trained_adapter_loads_in_vllm(
    trainer_model_settings: TrainerSettings, sft_file: Path
) -> None:
    import subprocess
    import sys

    pytest.importorskip("vllm")
    result, _ = run_in_process(trainer_model_settings, sft_spec(), sft_file, adapter_name="vllm")
    script = Path(__file__).with_name("vllm_adapter_check.py")
    base = trainer_model_settings.models_dir / BASE
    proc = subprocess.run(
        [sys.executable, str(script), str(base), str(result.adapter_dir)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert "VLLM_OK" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-4000:]
