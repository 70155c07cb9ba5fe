"""Serving parity with the server and the in-process model replaced by fakes: the served tokens
are read back by id or by name, and the metrics compare replies as text and the log-probabilities
token by token."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from services.evaluator import parity
from services.evaluator.scoring import new_subject
from tests.evaluator import planning


class Tokenizer:
    unk_token_id = 0

    def __init__(self) -> None:
        self.vocab = {"hello": 11, "world": 12}

    def convert_tokens_to_ids(self, token: str) -> int:
        return self.vocab.get(token, self.unk_token_id)


MODELS: Any = SimpleNamespace(
    tokenizer=Tokenizer(),
    prompt_ids=lambda messages: [1, 2],
    describe=lambda subject=None: {"backend": "fake"},
)


def response(text: str, tokens: list[tuple[str, float]]) -> dict[str, Any]:
    content = [{"token": t, "logprob": lp} for t, lp in tokens]
    return {"choices": [{"message": {"content": text}, "logprobs": {"content": content}}]}


def test_served_tokens_are_read_by_id_or_by_name() -> None:
    by_id = response("hi", [("token_id:11", -0.5), ("token_id:12", -1.0)])
    assert parity._server_tokens(MODELS, by_id) == ("hi", [11, 12], [-0.5, -1.0])
    by_name = response("hello world", [("hello", -0.1), ("world", -0.2)])
    assert parity._server_tokens(MODELS, by_name) == ("hello world", [11, 12], [-0.1, -0.2])
    unknown = response("??", [("hello", -0.1), ("zzz", -0.2)])
    assert parity._server_tokens(MODELS, unknown) == ("??", [], [])  # cannot compare: none
    no_logprobs = {"choices": [{"message": {"content": None}}]}
    assert parity._server_tokens(MODELS, no_logprobs) == ("", [], [])


def test_run_compares_replies_and_log_probabilities(monkeypatch: pytest.MonkeyPatch) -> None:
    plan = planning.plan({"parity": {"enabled": True, "items": 3}}, n=4, server_url="http://srv")
    served = [
        response("same", [("token_id:11", -0.5), ("token_id:12", -1.0)]),
        response("served", [("token_id:11", -2.0)]),
        response("x", [("nope", -1.0)]),
    ]
    asked: dict[str, Any] = {}

    def chat(url: str, model: str, messages: list[Any], decoding: Any, **kw: Any) -> Any:
        asked.update(url=url, model=model, n=len(messages), greedy=decoding.greedy, **kw)
        return served

    monkeypatch.setattr(parity, "chat_completions", chat)
    monkeypatch.setattr(parity, "generate_local", lambda *a, **k: [" same ", "local", "x"])
    # In process: -0.6 and -1.0 for the first reply's tokens, -1.0 for the second's.
    local = {(11, 12): [-0.6, -1.0], (11,): [-1.0]}
    monkeypatch.setattr(parity, "local_logprobs", lambda m, s, prompt, cont: local[tuple(cont)])
    result = new_subject("candidate", plan.candidate, plan.items)
    ticks: list[int] = []
    parity.run(MODELS, plan, result, plan.items, ticks.append)
    assert asked["url"] == "http://srv" and asked["model"] == "a@v2" and asked["n"] == 3
    assert asked["greedy"] and asked["extra"]["logprobs"] is True
    assert ticks == [1, 1, 1]
    metrics = result.metrics
    assert metrics["parity.greedy_agreement"].value == pytest.approx(2 / 3)
    assert metrics["parity.max_logprob_diff"].value == pytest.approx(1.0)
    assert metrics["parity.max_logprob_diff"].n == 2  # the third reply could not be compared
    assert metrics["parity.mean_logprob_diff"].value == pytest.approx((0.05 + 1.0) / 2)
    assert result.item_map()["q1"].extra["parity"] == {"server": "served", "local": "local"}
    assert "parity" not in result.item_map()["q3"].extra  # beyond parity.items
    settings = metrics["parity.greedy_agreement"].settings
    assert settings["served_model"] == "a@v2" and settings["items"] == 3
    assert settings["local"] == {"backend": "fake"}
