"""`shared.model_shapes`: the table of published model shapes, checked against the published
parameter counts."""

from __future__ import annotations

import pytest

from shared.memory import ModelShape
from shared.model_shapes import KNOWN_MODELS

# Published parameter counts; the table leaves out Qwen2.5's q/k/v biases (under 0.01%).
PUBLISHED_PARAMS = {
    "SmolLM2-135M": 134_515_008,
    "SmolLM2-360M": 361_821_120,
    "Qwen2.5-0.5B": 494_032_768,
    "Qwen2.5-1.5B": 1_543_714_304,
    "SmolLM2-1.7B": 1_711_376_384,
    "Qwen2.5-7B": 7_615_616_512,
    "Llama-3.1-8B": 8_030_261_248,
    "Llama-3.1-70B": 70_553_706_496,
}


def test_the_model_table_holds_the_published_shapes() -> None:
    assert list(KNOWN_MODELS) == list(PUBLISHED_PARAMS)
    for name, config in KNOWN_MODELS.items():
        params = ModelShape.from_config(config).params
        assert params == pytest.approx(PUBLISHED_PARAMS[name], rel=1e-4), name
