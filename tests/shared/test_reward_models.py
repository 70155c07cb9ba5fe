"""`shared.reward_models`: what marks a registered version as a reward model, and the scorer the
trainer and the evaluator share (right-padded batches read at each sequence's own last token)."""

from __future__ import annotations

from typing import Any

import pytest

from shared.reward_models import problems, score_sequences


@pytest.mark.parametrize(
    ("manifest", "why"),
    [
        ({"method": "supervised"}, "method 'supervised', not 'reward'"),
        ({}, "method 'unknown', not 'reward'"),
        ({"method": "reward"}, "no reward section with the pad token id"),
        ({"method": "reward", "reward": {"pad_token_id": "2"}}, "no reward section"),
    ],
)
def test_a_version_that_is_not_a_reward_model_says_why(manifest: dict[str, Any], why: str) -> None:
    found = problems(manifest)
    assert len(found) == 1 and why in found[0]


def test_a_reward_manifest_has_no_problem() -> None:
    assert problems({"method": "reward", "reward": {"pad_token_id": 2}}) == []


class LastToken:
    """A stand-in model: the score of a sequence is its last real token id (padding masked)."""

    training = True

    def __init__(self) -> None:
        import torch

        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.batches: list[int] = []
        self.modes: list[bool] = []

    def parameters(self) -> Any:
        return iter([self.weight])

    def eval(self) -> None:
        self.training = False

    def train(self, mode: bool = True) -> None:
        self.training = mode

    def __call__(self, input_ids: Any, attention_mask: Any) -> Any:
        import torch

        self.batches.append(int(input_ids.shape[0]))
        self.modes.append(self.training)
        last = attention_mask.sum(dim=1) - 1
        logits = input_ids[torch.arange(input_ids.shape[0]), last].float().view(-1, 1)
        return type("Out", (), {"logits": logits})()


def test_each_sequence_is_scored_at_its_own_last_token_in_batches_and_eval_mode() -> None:
    model = LastToken()
    scores = score_sequences(model, [[1, 2, 3], [4], [5, 6], [7, 8, 9, 10], [11]], 0, batch=2)
    assert scores == [3.0, 4.0, 6.0, 10.0, 11.0]
    assert model.batches == [2, 2, 1]
    assert model.modes == [False, False, False] and model.training  # restored afterwards


def test_an_answer_is_read_as_the_assistant_turn_after_the_prompt() -> None:
    from shared.datasets.records import Message
    from shared.reward_models import answer_ids

    class Renderer:
        def ids(self, messages: list[Message]) -> list[int]:
            self.seen = messages
            return [len(m.content) for m in messages]

    renderer = Renderer()
    prompt = (Message("system", "Be brief."), Message("user", "Hi?"))
    assert answer_ids(renderer, prompt, "Hello") == [9, 3, 5]
    assert renderer.seen == [*prompt, Message("assistant", "Hello")]
