"""Serving parity: the same prompts through in-process peft and through the server must agree.

Greedy outputs are compared as text (``parity.greedy_agreement``), and the log-probability the
server gave each token it generated is compared with the log-probability the in-process model
gives the same token after the same prefix (``parity.max_logprob_diff``, ``.mean_logprob_diff``,
in nats). A served adapter that is silently not applied, a wrong base, or a numerics bug shows up
here (vLLM issues 7977 and 10798; lm-eval 2432). The tolerance is recorded with the metrics; gate
on it with e.g. ``parity.max_logprob_diff: {max: 0.05}``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from services.evaluator.data import EvalItem
from services.evaluator.generation import DecodingSettings, chat_completions, generate_local
from services.evaluator.local_model import LocalModels
from services.evaluator.metrics import catalogue
from services.evaluator.results import SubjectResult


def _server_tokens(
    models: LocalModels, response: dict[str, Any]
) -> tuple[str, list[int], list[float]]:
    choice = response["choices"][0]
    text = str(choice["message"].get("content") or "")
    content = ((choice.get("logprobs") or {}).get("content")) or []
    ids: list[int] = []
    lps: list[float] = []
    for entry in content:
        token = str(entry.get("token", ""))
        if token.startswith("token_id:"):
            ids.append(int(token.split(":", 1)[1]))
        else:
            found = models.tokenizer.convert_tokens_to_ids(token)
            if not isinstance(found, int) or found == models.tokenizer.unk_token_id:
                return text, [], []
            ids.append(found)
        lps.append(float(entry["logprob"]))
    return text, ids, lps


def local_logprobs(
    models: LocalModels, subject: Any, prompt: list[int], continuation: list[int]
) -> list[float]:
    import torch

    with models.activate(subject) as model:
        ids = torch.tensor([prompt + continuation])
        logits = model(input_ids=ids).logits[0].float()
        logp = torch.log_softmax(logits, dim=-1)
        start = len(prompt)
        return [float(logp[start - 1 + k, tok]) for k, tok in enumerate(continuation)]


def run(
    models: LocalModels,
    plan: Any,
    result: SubjectResult,
    items: Sequence[EvalItem],
    advance: Callable[[int], None],
) -> None:
    part = plan.suite.parity
    subset = list(items[: part.items])
    subject = plan.candidate
    decoding = DecodingSettings(max_new_tokens=part.max_new_tokens, temperature=0.0)
    responses = chat_completions(
        plan.server_url,
        subject.served_name,
        [i.prompt_dicts() for i in subset],
        decoding,
        api_key=plan.server_api_key or None,
        extra={
            "logprobs": True,
            "top_logprobs": part.top_logprobs,
            "return_tokens_as_token_ids": True,
        },
    )
    local = generate_local(models, subject, subset, decoding, batch_size=len(subset))
    agree: dict[str, float] = {}
    max_diff: dict[str, float | None] = {}
    mean_diff: dict[str, float | None] = {}
    for item, response, local_text in zip(subset, responses, local, strict=True):
        text, ids, lps = _server_tokens(models, response)
        agree[item.item_id] = float(text.strip() == local_text.strip())
        rec = result.item_map()[item.item_id]
        rec.extra["parity"] = {"server": text, "local": local_text}
        if ids:
            ours = local_logprobs(models, subject, models.prompt_ids(list(item.messages)), ids)
            diffs = [abs(a - b) for a, b in zip(lps, ours, strict=True)]
            max_diff[item.item_id] = max(diffs) if diffs else 0.0
            mean_diff[item.item_id] = sum(diffs) / len(diffs) if diffs else 0.0
        else:
            max_diff[item.item_id] = None
            mean_diff[item.item_id] = None
        advance(1)
    settings = {
        "server_url": plan.server_url,
        "served_model": subject.served_name,
        "items": len(subset),
        "max_new_tokens": part.max_new_tokens,
        "logprob_tolerance": part.logprob_tolerance,
        "decoding": "greedy",
        "local": models.describe(subject),
    }
    conf = plan.suite.confidence
    result.add_metric(catalogue.spec("parity.greedy_agreement"), agree, settings, confidence=conf)
    result.add_metric(
        catalogue.spec("parity.max_logprob_diff"), max_diff, settings, confidence=conf
    )
    result.add_metric(
        catalogue.spec("parity.mean_logprob_diff"), mean_diff, settings, confidence=conf
    )
