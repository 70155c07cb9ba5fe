"""The canary (services/server/canary.py) against a stand-in engine client."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from services.server.canary import CANARY_PROMPT, Canary
from services.server.engines import Engine
from services.server.errors import EngineError
from services.server.names import VersionInfo
from shared.errors import ValidationError

BASE = {"Paris": -0.1, " Lyon": -3.0}


class FakeClient:
    def __init__(self, answers: dict[str, dict[str, float] | EngineError]) -> None:
        self.answers = answers
        self.asked: list[tuple[str, str]] = []

    async def next_token_logprobs(
        self, model: str, prompt: str, timeout: float, top: int = 5
    ) -> dict[str, float]:
        self.asked.append((model, prompt))
        answer = self.answers[model]
        if isinstance(answer, EngineError):
            raise answer
        return answer


def _version() -> VersionInfo:
    return VersionInfo(
        id="demo@v1",
        adapter="demo",
        version=1,
        sha256="0" * 64,
        base_model="tiny-base",
        base_model_sha256="1" * 64,
        rank=4,
        size_bytes=1000,
        created=datetime.now(UTC),
    )


def _check(answers: dict[str, Any]) -> FakeClient:
    client = FakeClient(answers)
    engine = Engine(id="engine-0", url="http://x", managed=False)
    canary = Canary({"engine-0": client}, "tiny-base", timeout=5)  # type: ignore[dict-item]
    asyncio.run(canary(engine, _version()))
    return client


def test_an_adapter_that_changes_the_answer_passes() -> None:
    client = _check({"tiny-base": BASE, "demo@v1": {"Paris": -0.5, " Lyon": -1.0}})
    assert client.asked == [("tiny-base", CANARY_PROMPT), ("demo@v1", CANARY_PROMPT)]


def test_an_adapter_that_answers_like_the_base_is_refused() -> None:
    with pytest.raises(ValidationError, match="answers exactly like the base model") as info:
        _check({"tiny-base": BASE, "demo@v1": dict(BASE)})
    assert info.value.code == "adapter_not_servable"


def test_an_engine_refusal_is_a_validation_error_naming_the_status() -> None:
    refusal = EngineError("The model `demo@v1` does not exist.", engine_status=404)
    with pytest.raises(ValidationError, match="failed with 404: The model") as info:
        _check({"tiny-base": BASE, "demo@v1": refusal})
    assert info.value.param == "model"
