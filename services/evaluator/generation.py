"""Generate answers for evaluation items: through an OpenAI-compatible server with concurrency, or
in-process in batches. Decoding settings are recorded either way, and answers are cached per full
model identity (base hash, adapter hash, backend, decoding), never in one shared cache.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, Field

from services.evaluator.data import EvalItem
from services.evaluator.local_model import LocalModels
from services.evaluator.subjects import Subject
from shared.errors import SystemFailure, ValidationError

Progress = Callable[[int], None]


class DecodingSettings(BaseModel):
    max_new_tokens: int = Field(default=128, ge=1, le=4096)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class ResponseCache:
    """One SQLite file per model identity: ``prompt hash -> answer``. Greedy answers only."""

    def __init__(self, root: Path, identity: str) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.path = root / f"{identity}.sqlite"
        with closing(sqlite3.connect(self.path)) as db, db:
            db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, answer TEXT)")

    @staticmethod
    def key(item: EvalItem) -> str:
        return hashlib.sha256(
            json.dumps(item.prompt_dicts(), ensure_ascii=False).encode()
        ).hexdigest()

    def get_many(self, items: Sequence[EvalItem]) -> dict[str, str]:
        keys = [self.key(i) for i in items]
        out: dict[str, str] = {}
        with closing(sqlite3.connect(self.path)) as db:
            for k in keys:
                row = db.execute("SELECT answer FROM answers WHERE key = ?", (k,)).fetchone()
                if row is not None:
                    out[k] = row[0]
        return out

    def put_many(self, pairs: dict[str, str]) -> None:
        with closing(sqlite3.connect(self.path)) as db, db:
            db.executemany("INSERT OR REPLACE INTO answers VALUES (?, ?)", list(pairs.items()))


# --------------------------------------------------------------------------------------------
# in-process


def generate_local(
    models: LocalModels,
    subject: Subject,
    items: Sequence[EvalItem],
    decoding: DecodingSettings,
    *,
    batch_size: int = 8,
    progress: Progress | None = None,
) -> list[str]:
    """Batched ``generate`` with left padding; greedy unless ``temperature > 0``."""
    import torch

    tok = models.tokenizer
    prompts = [models.prompt_ids(list(i.messages)) for i in items]
    order = sorted(range(len(items)), key=lambda k: len(prompts[k]))
    answers: list[str] = [""] * len(items)
    stop_ids = sorted(models.renderer.stop_ids)
    pad = int(tok.pad_token_id)
    if not decoding.greedy:
        torch.manual_seed(decoding.seed)
    with models.activate(subject) as model:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            width = max(len(prompts[k]) for k in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, k in enumerate(idx):
                ids[r, width - len(prompts[k]) :] = torch.tensor(prompts[k])
                mask[r, width - len(prompts[k]) :] = 1
            kwargs: dict[str, Any] = {
                "max_new_tokens": decoding.max_new_tokens,
                "eos_token_id": stop_ids,
                "pad_token_id": pad,
                "do_sample": not decoding.greedy,
            }
            if not decoding.greedy:
                kwargs.update(temperature=decoding.temperature, top_p=decoding.top_p)
            else:
                kwargs.update(temperature=None, top_p=None, top_k=None)
            out = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
            for r, k in enumerate(idx):
                answers[k] = tok.decode(out[r, width:], skip_special_tokens=True).strip()
            if progress is not None:
                progress(len(idx))
    return answers


# --------------------------------------------------------------------------------------------
# OpenAI-compatible server


def _endpoint(base_url: str, path: str) -> str:
    base = base_url.rstrip("/")
    if base.endswith("/v1"):
        base = base[: -len("/v1")]
    return f"{base}/v1/{path}"


async def _chat_all(
    url: str,
    model: str,
    messages: list[list[dict[str, str]]],
    decoding: DecodingSettings,
    *,
    concurrency: int,
    api_key: str | None,
    timeout: float,
    progress: Progress | None,
    extra: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    sem = asyncio.Semaphore(concurrency)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    results: list[dict[str, Any]] = [{}] * len(messages)
    async with httpx.AsyncClient(timeout=timeout, headers=headers) as client:

        async def one(k: int) -> None:
            body: dict[str, Any] = {
                "model": model,
                "messages": messages[k],
                "max_tokens": decoding.max_new_tokens,
                "temperature": decoding.temperature,
                "top_p": decoding.top_p,
                "seed": decoding.seed,
                **(extra or {}),
            }
            async with sem:
                for attempt in range(3):
                    try:
                        resp = await client.post(url, json=body)
                    except httpx.TransportError as exc:
                        if attempt == 2:
                            raise SystemFailure(
                                f"cannot reach {url}: {exc.__class__.__name__}: {exc}",
                                param="server_url",
                            ) from exc
                        await asyncio.sleep(0.5 * (attempt + 1))
                        continue
                    if resp.status_code >= 500 and attempt < 2:
                        await asyncio.sleep(0.5 * (attempt + 1))
                        continue
                    break
            if resp.status_code != 200:
                raise ValidationError(
                    f"{url} answered {resp.status_code} for model {model!r}: {resp.text[:300]}",
                    param="server_url",
                )
            results[k] = resp.json()
            if progress is not None:
                progress(1)

        await asyncio.gather(*(one(k) for k in range(len(messages))))
    return results


def chat_completions(
    base_url: str,
    model: str,
    messages: list[list[dict[str, str]]],
    decoding: DecodingSettings,
    *,
    concurrency: int = 16,
    api_key: str | None = None,
    timeout: float = 300.0,
    progress: Progress | None = None,
    extra: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Send chat requests concurrently; raises on the first unreachable or failing request."""
    url = _endpoint(base_url, "chat/completions")
    return asyncio.run(
        _chat_all(
            url,
            model,
            messages,
            decoding,
            concurrency=concurrency,
            api_key=api_key,
            timeout=timeout,
            progress=progress,
            extra=extra,
        )
    )


def message_text(response: dict[str, Any]) -> str:
    try:
        return str(response["choices"][0]["message"]["content"] or "").strip()
    except (KeyError, IndexError, TypeError) as exc:
        raise ValidationError(f"malformed chat completion response: {str(response)[:200]}") from exc


def generate_server(
    base_url: str,
    subject: Subject,
    items: Sequence[EvalItem],
    decoding: DecodingSettings,
    *,
    concurrency: int = 16,
    api_key: str | None = None,
    progress: Progress | None = None,
) -> list[str]:
    responses = chat_completions(
        base_url,
        subject.served_name,
        [i.prompt_dicts() for i in items],
        decoding,
        concurrency=concurrency,
        api_key=api_key,
        progress=progress,
    )
    return [message_text(r) for r in responses]


def check_server(base_url: str, api_key: str | None = None, timeout: float = 5.0) -> list[str]:
    """Model ids the server lists; raises a clear error if it cannot be reached."""
    url = _endpoint(base_url, "models")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        resp = httpx.get(url, headers=headers, timeout=timeout)
    except httpx.TransportError as exc:
        raise SystemFailure(
            f"cannot reach the server at {base_url}: {exc}", param="server_url"
        ) from exc
    if resp.status_code != 200:
        raise SystemFailure(f"{url} answered {resp.status_code}", param="server_url")
    return [m.get("id", "") for m in resp.json().get("data", [])]


def timed(fn: Callable[[], list[str]]) -> tuple[list[str], float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start
