"""Perplexity: the windows that cover a sequence, the tokens scored for chat and plain-text items,
the summed NLL over batches of windows (fake tokenizer and fake model, no weights), and, slow, the
real embedded model against a direct computation."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import pytest

from services.evaluator.data import EvalItem, load_data
from services.evaluator.local_model import LocalModels
from services.evaluator.perplexity import (
    ItemNLL,
    PerplexitySettings,
    TokenSeq,
    Window,
    build_sequence,
    n_windows,
    plan_windows,
    score_items,
    score_windows,
)
from services.evaluator.subjects import Subject
from shared.basemodel import ResolvedBaseModel
from shared.datasets.records import Message
from shared.errors import ValidationError
from tests.evaluator.conftest import EXAMPLES

TEXTS = [
    "The quick brown fox jumps over the lazy dog. " * 12,
    "Paris is the capital of France.",
    "Привет, мир! Это проверка.",
]

VOCAB = 64
BOS, EOS, PAD, END_OF_TURN, USER, ASSISTANT = 1, 2, 0, 3, 5, 6


class FakeTokenizer:
    """One token per character; ids 10..59, so no character is a special token."""

    bos_token_id: int | None = BOS
    eos_token_id = EOS
    pad_token_id = PAD

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": [10 + ord(c) % 50 for c in text]}


class FakeRenderer:
    """``<role> content <end-of-turn>`` per message; the generation prompt opens the assistant's
    turn. ``drift`` renders that opening differently from a finished turn (a broken template)."""

    def __init__(self, drift: bool = False) -> None:
        self.drift = drift
        self.stop_ids = {END_OF_TURN}

    def ids(self, messages: Sequence[Message], *, add_generation_prompt: bool = False) -> list[int]:
        tok = FakeTokenizer()
        out: list[int] = []
        for m in messages:
            out += [USER if m.role == "user" else ASSISTANT, *tok(m.content)["input_ids"]]
            out.append(END_OF_TURN)
        if add_generation_prompt:
            out.append(ASSISTANT + 1 if self.drift else ASSISTANT)
        return out


def fake_models(drift: bool = False, model: Any = None) -> Any:
    @contextmanager
    def activate(subject: Subject) -> Iterator[Any]:
        yield model

    return SimpleNamespace(
        tokenizer=FakeTokenizer(), renderer=FakeRenderer(drift), activate=activate
    )


class UniformModel:
    """Equal logits everywhere: every scored token costs exactly log(VOCAB) nats."""

    def __call__(self, input_ids: Any, attention_mask: Any) -> Any:
        import torch

        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, VOCAB))


class NextIdModel:
    """Predicts id + 1 with near certainty: a sequence counting up costs ~0 nats, but only if each
    position's logits are held against the *next* token."""

    def __call__(self, input_ids: Any, attention_mask: Any) -> Any:
        import torch

        logits = torch.zeros(*input_ids.shape, VOCAB)
        logits.scatter_(2, ((input_ids + 1) % VOCAB).unsqueeze(-1), 50.0)
        return SimpleNamespace(logits=logits)


def test_settings_refuse_a_stride_larger_than_the_window() -> None:
    with pytest.raises(ValueError, match="stride 64 is larger than window 32"):
        PerplexitySettings(window=32, stride=64)
    described = PerplexitySettings(window=32, stride=8).describe()
    assert described["window"] == 32 and described["stride"] == 8


def test_item_perplexity_is_exp_of_mean_nll() -> None:
    assert ItemNLL(nll=6.0, n_tokens=3, n_bytes=9).perplexity == pytest.approx(math.exp(2.0))
    assert math.isnan(ItemNLL(nll=0.0, n_tokens=0, n_bytes=0).perplexity)


def test_windows_score_every_token_once_with_the_context_the_stride_leaves() -> None:
    seq = TokenSeq(list(range(10)), score_from=1, n_bytes=9)
    assert plan_windows([seq], window=4, stride=2) == [
        Window(0, 0, 4, 1),
        Window(0, 2, 6, 4),
        Window(0, 4, 8, 6),
        Window(0, 6, 10, 8),
    ]
    for length, start, window, stride in [(50, 1, 16, 5), (50, 20, 16, 16), (7, 3, 16, 4)]:
        seqs = [TokenSeq(list(range(length)), start, 0), TokenSeq([1, 2], 1, 0)]
        windows = plan_windows(seqs, window, stride)
        scored = [(w.seq, p) for w in windows for p in range(w.score_from, w.end)]
        expected = [(0, p) for p in range(start, length)] + [(1, 1)]
        assert sorted(scored) == sorted(expected) and len(set(scored)) == len(scored)
        for w in windows:
            assert w.end - w.begin <= window and w.begin <= w.score_from < w.end
            if w.score_from >= window:  # past the first window: at least window - stride context
                assert w.score_from - w.begin >= window - stride


def test_a_plain_text_item_is_scored_after_one_prefix_token() -> None:
    models = fake_models()
    seq = build_sequence(models, EvalItem("t", (), "héllo", "t:1"))
    assert seq.ids[0] == BOS and seq.score_from == 1
    assert seq.ids[1:] == FakeTokenizer()("héllo")["input_ids"]
    assert seq.n_bytes == len("héllo".encode())  # UTF-8 bytes, not characters
    models.tokenizer.bos_token_id = None  # no BOS: end-of-text stands in, as in lm-eval
    assert build_sequence(models, EvalItem("t", (), "hi", "t:1")).ids[0] == EOS


def test_a_chat_item_scores_only_the_reply_without_its_end_of_turn() -> None:
    item = EvalItem("c", (Message("user", "ab"),), "xyz", "t:2")
    seq = build_sequence(fake_models(), item)
    prompt = FakeRenderer().ids(list(item.messages), add_generation_prompt=True)
    assert seq.ids[: seq.score_from] == prompt
    assert seq.ids[seq.score_from :] == FakeTokenizer()("xyz")["input_ids"]
    with pytest.raises(
        ValidationError, match="t:2: the chat template renders the prompt differently"
    ):
        build_sequence(fake_models(drift=True), item)


def test_score_windows_sums_the_nll_of_scored_tokens_across_padded_batches() -> None:
    seqs = [TokenSeq(list(range(10, 40)), 3, 0), TokenSeq([11, 12, 13], 1, 0)]
    windows = plan_windows(seqs, window=16, stride=4)
    ticks: list[int] = []
    totals = score_windows(
        UniformModel(), seqs, windows, pad_id=PAD, batch_tokens=64, progress=ticks.append
    )
    assert totals == pytest.approx([27 * math.log(VOCAB), 2 * math.log(VOCAB)])
    assert sum(ticks) == len(windows) and len(ticks) > 1  # several batches
    counting = [TokenSeq(list(range(10, 40)), 3, 0)]
    assert score_windows(
        NextIdModel(), counting, plan_windows(counting, 16, 4), pad_id=PAD, batch_tokens=64
    ) == [pytest.approx(0.0, abs=1e-6)]


def test_score_items_and_n_windows_use_the_subject_and_the_settings() -> None:
    models = fake_models(model=UniformModel())
    base = ResolvedBaseModel("m", EXAMPLES, "0" * 64, "test")
    items = [
        EvalItem("t", (), "some plain text", "t:1"),
        EvalItem("c", (Message("user", "q"),), "answer", "t:2"),
    ]
    settings = PerplexitySettings(window=16, stride=4)
    scores = score_items(models, Subject(label="m", base=base), items, settings)
    assert [s.n_tokens for s in scores] == [15, 6]
    assert [s.n_bytes for s in scores] == [15, 6]
    assert scores[0].nll == pytest.approx(15 * math.log(VOCAB))
    assert n_windows(models, items, settings) == 1 + 1
    assert n_windows(models, items, PerplexitySettings(window=16, stride=1)) == 1 + 1
    assert n_windows(models, [items[0]] * 3, PerplexitySettings(window=16, stride=16)) == 3


@pytest.fixture(scope="module")
def models(base_model: ResolvedBaseModel) -> LocalModels:
    return LocalModels(Subject(label=base_model.name, base=base_model))


@pytest.mark.slow
def test_perplexity_matches_direct_loss_and_window_settings_matter(
    models: LocalModels, base_model: ResolvedBaseModel
) -> None:
    import torch

    subject = Subject(label=base_model.name, base=base_model)
    items = [EvalItem(f"t{k}", (), t, f"text {k}") for k, t in enumerate(TEXTS)]
    full = score_items(models, subject, items, PerplexitySettings(window=1024, stride=512))
    tok = models.tokenizer
    for item, got in zip(items, full, strict=True):
        prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        ids = [prefix, *tok(item.reference, add_special_tokens=False)["input_ids"]]
        with torch.no_grad():
            loss = models.model(torch.tensor([ids]), labels=torch.tensor([ids])).loss
        assert got.n_tokens == len(ids) - 1
        assert got.nll == pytest.approx(float(loss) * (len(ids) - 1), rel=1e-4)
        assert got.n_bytes == len(item.reference.encode())
    # Windows smaller than the text: disjoint windows lose context (higher NLL); a stride keeps it.
    disjoint = score_items(models, subject, items[:1], PerplexitySettings(window=32, stride=32))
    strided = score_items(models, subject, items[:1], PerplexitySettings(window=32, stride=8))
    assert disjoint[0].nll > strided[0].nll > full[0].nll * 0.99
    assert disjoint[0].n_tokens == strided[0].n_tokens == full[0].n_tokens


@pytest.mark.slow
def test_chat_perplexity_scores_only_the_reference_reply(
    models: LocalModels, base_model: ResolvedBaseModel
) -> None:
    subject = Subject(label=base_model.name, base=base_model)
    items = load_data(EXAMPLES / "test.jsonl", limit=3).items
    scores = score_items(models, subject, items, PerplexitySettings())
    for item, s in zip(items, scores, strict=True):
        n_ref = len(models.tokenizer(item.reference, add_special_tokens=False)["input_ids"])
        assert abs(s.n_tokens - n_ref) <= 1  # the reply's tokens, not the prompt's
        assert 1.0 < math.exp(s.nll / s.n_tokens) < 100
