"""Perplexity of reference text, in-process (transformers + peft), with a recorded sliding window.

For a chat item the scored tokens are the assistant's reference reply (chat template applied, the
end-of-turn token excluded) given its prompt; for a plain-text item they are the text's tokens after
one end-of-text prefix token, as lm-eval's ``loglikelihood_rolling`` does. Sequences longer than
``window`` are scored in windows of at most ``window`` tokens that advance by ``stride``, so every
token after the first window is predicted with at least ``window - stride`` tokens of context
(HF's strided perplexity). The stride changes the number, so it is part of the metric's settings.

Corpus perplexity is token-weighted, ``exp(sum NLL / sum tokens)``; bits per byte divides the same
NLL by the UTF-8 bytes of the scored text (comparable across tokenizers). Windows of all items are
batched together by length, and the loss is taken with ``cross_entropy`` over the scored positions
only, so no full log-softmax tensor is kept.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pydantic import BaseModel, Field, model_validator

from services.evaluator.data import EvalItem
from services.evaluator.local_model import LocalModels
from services.evaluator.subjects import Subject
from shared.datasets.records import Message
from shared.errors import ValidationError

Progress = Callable[[int], None]


class PerplexitySettings(BaseModel):
    window: int = Field(default=1024, ge=16, description="max tokens per forward pass")
    stride: int = Field(default=512, ge=1, description="new tokens scored per extra window")
    batch_tokens: int = Field(default=4096, ge=64, description="padded tokens per batch")

    @model_validator(mode="after")
    def _stride_fits(self) -> PerplexitySettings:
        if self.stride > self.window:
            raise ValueError(f"stride {self.stride} is larger than window {self.window}")
        return self

    def describe(self) -> dict[str, object]:
        return {
            "window": self.window,
            "stride": self.stride,
            "aggregate": "token-weighted: exp(sum nll / sum tokens)",
            "scored": "reference reply given prompt (chat template, end-of-turn excluded); "
            "plain text after one end-of-text token",
        }


@dataclass(frozen=True)
class TokenSeq:
    ids: list[int]
    score_from: int  # first position whose token is scored
    n_bytes: int


@dataclass
class ItemNLL:
    nll: float
    n_tokens: int
    n_bytes: int

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll / self.n_tokens) if self.n_tokens else math.nan


@dataclass(frozen=True)
class Window:
    seq: int
    begin: int
    end: int
    score_from: int


def build_sequence(models: LocalModels, item: EvalItem) -> TokenSeq:
    tok = models.tokenizer
    n_bytes = len(item.reference.encode("utf-8"))
    if item.is_text:
        prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        ids = [int(prefix), *tok(item.reference, add_special_tokens=False)["input_ids"]]
        return TokenSeq(ids, 1, n_bytes)
    renderer = models.renderer
    before = renderer.ids(list(item.messages), add_generation_prompt=True)
    full = renderer.ids([*item.messages, Message("assistant", item.reference)])
    if full[: len(before)] != before:
        raise ValidationError(
            f"{item.location}: the chat template renders the prompt differently once the reply "
            "is added, so the reply's tokens cannot be isolated",
            param="data",
        )
    span = full[len(before) :]
    stop = next((i for i, t in enumerate(span) if t in renderer.stop_ids), len(span))
    return TokenSeq(full[: len(before) + stop], len(before), n_bytes)


def plan_windows(seqs: Sequence[TokenSeq], window: int, stride: int) -> list[Window]:
    out: list[Window] = []
    for k, seq in enumerate(seqs):
        length, pos = len(seq.ids), seq.score_from
        first = True
        while pos < length:
            end = min(length, window) if first and pos < window else min(length, pos + stride)
            out.append(Window(k, max(0, end - window), end, pos))
            pos, first = end, False
    return out


def score_windows(
    model: object,
    seqs: Sequence[TokenSeq],
    windows: list[Window],
    *,
    pad_id: int,
    batch_tokens: int,
    progress: Progress | None = None,
) -> list[float]:
    """Sum of NLL (nats) per sequence over its scored tokens."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    totals = [0.0] * len(seqs)
    order = sorted(
        range(len(windows)), key=lambda i: windows[i].end - windows[i].begin, reverse=True
    )
    i = 0
    while i < len(order):
        longest = windows[order[i]].end - windows[order[i]].begin
        size = max(1, batch_tokens // max(longest, 1))
        batch = [windows[j] for j in order[i : i + size]]
        i += len(batch)
        ids = torch.full((len(batch), longest), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), longest), dtype=torch.long)
        labels = torch.full((len(batch), longest), -100, dtype=torch.long)
        for r, w in enumerate(batch):
            chunk = seqs[w.seq].ids[w.begin : w.end]
            ids[r, : len(chunk)] = torch.tensor(chunk)
            mask[r, : len(chunk)] = 1
            lo = w.score_from - w.begin
            labels[r, lo : len(chunk)] = torch.tensor(chunk[lo:])
        logits = model(input_ids=ids, attention_mask=mask).logits  # type: ignore[operator]
        losses = F.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]),
            labels[:, 1:].reshape(-1),
            reduction="none",
            ignore_index=-100,
        ).view(len(batch), -1)
        for r, w in enumerate(batch):
            totals[w.seq] += float(losses[r].double().sum())
        if progress is not None:
            progress(len(batch))
    return totals


def score_items(
    models: LocalModels,
    subject: Subject,
    items: Sequence[EvalItem],
    settings: PerplexitySettings,
    progress: Progress | None = None,
) -> list[ItemNLL]:
    seqs = [build_sequence(models, item) for item in items]
    windows = plan_windows(seqs, settings.window, settings.stride)
    with models.activate(subject) as model:
        totals = score_windows(
            model,
            seqs,
            windows,
            pad_id=int(models.tokenizer.pad_token_id),
            batch_tokens=settings.batch_tokens,
            progress=progress,
        )
    return [
        ItemNLL(nll=t, n_tokens=len(s.ids) - s.score_from, n_bytes=s.n_bytes)
        for t, s in zip(totals, seqs, strict=True)
    ]


def n_windows(models: LocalModels, items: Sequence[EvalItem], settings: PerplexitySettings) -> int:
    seqs = [build_sequence(models, item) for item in items]
    return len(plan_windows(seqs, settings.window, settings.stride))
