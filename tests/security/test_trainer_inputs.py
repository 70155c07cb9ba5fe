"""Trainer inputs a request can turn against us: each test performs the attack and asserts it is
refused with a 4xx, within bounded time or memory, and that nothing stored changed.

- an upload over the size limit, sent chunked (no Content-Length), is cut off while streaming;
- one 20 MB row costs the upload a bounded amount of memory (no per-example arrays of GBs), and
  near-duplicate detection stays bounded on it and on pathological files;
- a regex ``lora.target_modules`` (ReDoS in peft) is refused at job creation and by the worker;
- a job cannot add a version on another base model under an existing adapter name.
"""

from __future__ import annotations

import json
import time
import tracemalloc
from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.trainer.config import TrainerSettings
from services.trainer.job_reporter import JobReporter
from services.trainer.jobs import add_event
from services.trainer.recipes.context import EventKind
from services.trainer.worker import Worker
from shared.datasets.cleaning import find_near_duplicates
from shared.registry.adapters import NewVersion, register_version
from shared.registry.db import open_registry
from shared.registry.models import BaseModelRow, DatasetRow, TrainingJobRow
from shared.settings import EMBEDDED_BASE_MODEL, SharedSettings
from tests.trainer.api.requests import GOOD_SFT, assert_refused, snapshot, upload
from tests.trainer.conftest import order_chat

LIMIT = 256 * 1024
BOUNDARY = "loraplex-test-boundary"
CHUNK = 16 * 1024


class Metered:
    """ASGI wrapper that hands the app its request body in small chunks and counts how much of
    it the app pulled, the way a server passes on a slow chunked upload."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.consumed = 0
        self.headers: dict[bytes, bytes] = {}

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.headers = {k.lower(): v for k, v in scope["headers"]}
        buffer, more, done = b"", True, False

        async def metered() -> dict[str, Any]:
            nonlocal buffer, more, done
            if done:
                return dict(await receive())
            while not buffer and more:
                message = await receive()
                buffer, more = message.get("body", b""), message.get("more_body", False)
            piece, buffer = buffer[:CHUNK], buffer[CHUNK:]
            self.consumed += len(piece)
            done = not buffer and not more
            return {"type": "http.request", "body": piece, "more_body": not done}

        await self.app(scope, metered, send)


def multipart(content: bytes, name: str = "train.jsonl", purpose: str = "fine-tune") -> bytes:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n{purpose}\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return head + content + f"\r\n--{BOUNDARY}--\r\n".encode()


@pytest.fixture
def tsettings(settings: SharedSettings) -> TrainerSettings:
    return TrainerSettings(data_dir=settings.data_dir, max_upload_bytes=LIMIT)


@pytest.fixture
def metered(tsettings: TrainerSettings) -> Iterator[tuple[TestClient, Metered]]:
    from services.trainer.api.app import create_app

    wrapper = Metered(create_app(tsettings))
    with TestClient(wrapper) as client:
        yield client, wrapper


@pytest.fixture
def client(tsettings: TrainerSettings) -> Iterator[TestClient]:
    from services.trainer.api.app import create_app

    with TestClient(create_app(tsettings)) as c:
        yield c


# -- 1. uploads over the limit are cut off while they stream -------------------------------------
@pytest.mark.parametrize("extra", [32 * 1024, 40 * LIMIT], ids=["just_over", "far_over"])
def test_chunked_upload_over_the_limit_stops_at_the_limit(
    metered: tuple[TestClient, Metered], tsettings: TrainerSettings, extra: int
) -> None:
    client, wrapper = metered
    line = (json.dumps(order_chat(1)) + "\n").encode()
    body = multipart(line * ((LIMIT + extra) // len(line) + 1))
    before = snapshot(tsettings)

    def chunks() -> Iterator[bytes]:  # a generator: httpx sends it chunked, without a length
        for start in range(0, len(body), CHUNK):
            yield body[start : start + CHUNK]

    resp = client.post(
        "/v1/files",
        content=chunks(),
        headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"},
    )
    assert b"content-length" not in wrapper.headers
    assert wrapper.headers.get(b"transfer-encoding") == b"chunked"
    error = assert_refused(resp, 413, "limit")
    assert error["code"] == "file_too_large" and error["param"] == "file"
    # Reading stopped at the first chunk past the limit, not at the end of the body.
    assert wrapper.consumed <= LIMIT + 2 * CHUNK < len(body)
    assert snapshot(tsettings) == before
    assert not any(tsettings.uploads_dir.iterdir())


def test_bad_file_name_is_refused_before_the_file_is_read(
    metered: tuple[TestClient, Metered], tsettings: TrainerSettings
) -> None:
    client, wrapper = metered
    body = multipart(GOOD_SFT * 40, name="../../etc/passwd")
    before = snapshot(tsettings)
    resp = client.post(
        "/v1/files",
        content=body,
        headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"},
    )
    assert_refused(resp, 422, "not allowed")
    assert wrapper.consumed <= 2 * CHUNK < len(body)
    assert snapshot(tsettings) == before


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b"file=x&purpose=fine-tune", "application/x-www-form-urlencoded", 415),
        (b"--nope\r\ngarbage", f"multipart/form-data; boundary={BOUNDARY}", 400),
        (multipart(b"").replace(b'name="file"', b'name="other"'), None, 422),
        (multipart(GOOD_SFT, purpose="x" * 5000), None, 413),
    ],
    ids=["not_multipart", "malformed", "no_file_part", "huge_text_field"],
)
def test_malformed_uploads_are_refused(
    client: TestClient,
    tsettings: TrainerSettings,
    body: bytes,
    content_type: str | None,
    status: int,
) -> None:
    before = snapshot(tsettings)
    resp = client.post(
        "/v1/files",
        content=body,
        headers={"content-type": content_type or f"multipart/form-data; boundary={BOUNDARY}"},
    )
    assert_refused(resp, status)
    assert snapshot(tsettings) == before


# -- 2. one huge row: bounded memory, no hang ------------------------------------------------------
def huge_row(words: int) -> bytes:
    # Distinct words: the worst case for shingling (every 3-gram is new).
    text = " ".join(f"w{i}" for i in range(words))
    row = {
        "messages": [
            {"role": "user", "content": "summarise"},
            {"role": "assistant", "content": text},
        ]
    }
    return (json.dumps(row) + "\n").encode()


def test_upload_of_one_20mb_row_has_bounded_memory(settings: SharedSettings) -> None:
    from services.trainer.api.app import create_app

    content = huge_row(2_500_000)
    assert len(content) > 20_000_000
    tsettings = TrainerSettings(data_dir=settings.data_dir, max_upload_bytes=32 * 1024 * 1024)
    with TestClient(create_app(tsettings)) as client:
        tracemalloc.start()
        started = time.monotonic()
        try:
            resp = upload(client, content)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        elapsed = time.monotonic() - started
    assert resp.status_code == 200, resp.text
    # Before the bound, near-duplicate detection alone built 64 x (3-grams) arrays: > 3 GB here.
    assert peak < 8 * len(content), (
        f"peak {peak / 1e6:.0f} MB for a {len(content) / 1e6:.0f} MB row"
    )
    assert elapsed < 120
    report = resp.json()["report"]
    assert report["examples"] == 1 and report["near_duplicates"] is None  # the worker computes it


def test_near_duplicate_search_is_bounded_on_huge_rows() -> None:
    text = " ".join(f"w{i}" for i in range(2_500_000))
    tracemalloc.start()
    try:
        found = find_near_duplicates([text, text + " tail", "short text"])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50_000_000
    assert found.clipped_texts == 2 and [(p.a, p.b) for p in found.pairs] == [(0, 1)]


def test_near_duplicate_search_stops_at_its_work_limit() -> None:
    # 250 templates x 200 copies: every band bucket is as large as allowed, ~10^7 pairs.
    texts = [
        f"template {i % 250} of a file made to blow up the pair checks {i % 7}"
        for i in range(50_000)
    ]
    started = time.monotonic()
    found = find_near_duplicates(texts, max_candidates=50_000)
    assert time.monotonic() - started < 60
    assert not found.complete and 0 < len(found.pairs) <= 50_000


def test_the_worker_writes_the_near_duplicate_count_into_the_file_report(
    client: TestClient, tsettings: TrainerSettings
) -> None:
    file_id = upload(client, GOOD_SFT).json()["id"]
    assert client.get(f"/v1/files/{file_id}").json()["report"]["near_duplicates"] is None
    worker = Worker(tsettings, "w")
    try:
        with worker.registry.session() as s:
            s.add(
                TrainingJobRow(
                    id="ftjob-near",
                    status="validating_files",
                    base_model=EMBEDDED_BASE_MODEL,
                    adapter_name="t",
                    training_file=file_id,
                    config={"training_file": file_id},
                )
            )
        found = {"count": 3, "threshold": 0.9, "complete": True, "pairs": []}
        JobReporter(worker, "ftjob-near").event(
            "validated", type=EventKind.VALIDATION, data={"near_duplicates": found}
        )
    finally:
        worker.registry.dispose()
    report = client.get(f"/v1/files/{file_id}").json()["report"]
    assert report["near_duplicates"] == 3 and report["near_duplicate_threshold"] == 0.9


# -- 3. target_modules: no regular expressions ---------------------------------------------------
REDOS = "(.|.)*Z"


@pytest.mark.parametrize(
    "modules",
    [REDOS, [REDOS], "q_proj|v_proj", [".*q_proj"], [], ["x"] * 65, "a" * 200],
    ids=["redos", "redos_in_list", "alternation", "wildcard", "empty", "too_many", "too_long"],
)
def test_regex_target_modules_are_refused_at_job_creation(
    client: TestClient, tsettings: TrainerSettings, modules: Any
) -> None:
    file_id = upload(client, GOOD_SFT).json()["id"]
    before = snapshot(tsettings)
    started = time.monotonic()
    resp = client.post(
        "/v1/fine_tuning/jobs",
        json={"training_file": file_id, "lora": {"target_modules": modules}},
    )
    assert time.monotonic() - started < 5
    error = assert_refused(resp, 422, "lora.target_modules")
    assert error["param"] == "lora.target_modules"
    assert snapshot(tsettings) == before


@pytest.mark.parametrize(
    "modules", ["all-linear", ["q_proj", "v_proj"], "model.layers.0.self_attn.q_proj"]
)
def test_plain_target_modules_are_accepted(client: TestClient, modules: Any) -> None:
    file_id = upload(client, GOOD_SFT).json()["id"]
    resp = client.post(
        "/v1/fine_tuning/jobs",
        json={"training_file": file_id, "lora": {"target_modules": modules}},
    )
    assert resp.status_code == 200, resp.text


def test_worker_refuses_a_stored_job_with_a_regex(tsettings: TrainerSettings) -> None:
    """A job queued before the check existed fails as a user error instead of reaching peft."""
    worker = Worker(tsettings, "w")
    try:
        with worker.registry.session() as s:
            s.add(
                TrainingJobRow(
                    id="ftjob-redos",
                    status="validating_files",
                    base_model=EMBEDDED_BASE_MODEL,
                    adapter_name="t",
                    training_file="file-x",
                    config={"training_file": "file-x", "lora": {"target_modules": REDOS}},
                )
            )
            s.flush()
            add_event(s, "ftjob-redos", "created")
        assert worker.claim() == "ftjob-redos"
        started = time.monotonic()
        worker.process("ftjob-redos")
        assert time.monotonic() - started < 10
        with worker.registry.session() as s:
            row = s.get(TrainingJobRow, "ftjob-redos")
            assert row is not None and row.status == "failed" and row.error is not None
            assert row.error["param"] == "lora.target_modules"
            assert row.error["type"] == "user_error"
    finally:
        worker.registry.dispose()
    assert not list(tsettings.data_dir.glob("artifacts/trees/*"))


# -- 4. an adapter name stays on the base model of its first version -----------------------------
OTHER_BASE = "other-base"


def _bases_and_version(settings: TrainerSettings) -> None:
    registry = open_registry(settings)
    try:
        with registry.session() as s:
            for name in (EMBEDDED_BASE_MODEL, OTHER_BASE):
                s.add(BaseModelRow(name=name, weights_sha256="0" * 64, path="/x", source="t"))
            s.flush()
            register_version(s, NewVersion("support-bot", "1" * 64, EMBEDDED_BASE_MODEL, 8, 1, {}))
    finally:
        registry.dispose()


def test_foreign_base_under_an_existing_adapter_name_is_refused(
    client: TestClient, tsettings: TrainerSettings
) -> None:
    _bases_and_version(tsettings)
    file_id = upload(client, GOOD_SFT).json()["id"]
    before = snapshot(tsettings)
    resp = client.post(
        "/v1/fine_tuning/jobs",
        json={"training_file": file_id, "suffix": "support-bot", "model": OTHER_BASE},
    )
    error = assert_refused(resp, 409, EMBEDDED_BASE_MODEL, OTHER_BASE)
    assert error["code"] == "base_model_mismatch" and error["param"] == "suffix"
    assert snapshot(tsettings) == before
    # Its own base, or another name on the other base, is fine.
    for body in (
        {"suffix": "support-bot", "model": EMBEDDED_BASE_MODEL},
        {"suffix": "support-bot-other", "model": OTHER_BASE},
    ):
        resp = client.post("/v1/fine_tuning/jobs", json={"training_file": file_id, **body})
        assert resp.status_code == 200, resp.text


def test_two_jobs_cannot_race_a_new_name_onto_two_bases(
    client: TestClient, tsettings: TrainerSettings
) -> None:
    _bases_and_version(tsettings)
    file_id = upload(client, GOOD_SFT).json()["id"]
    first = client.post(
        "/v1/fine_tuning/jobs",
        json={"training_file": file_id, "suffix": "fresh", "model": EMBEDDED_BASE_MODEL},
    )
    assert first.status_code == 200, first.text
    before = snapshot(tsettings)
    resp = client.post(
        "/v1/fine_tuning/jobs",
        json={"training_file": file_id, "suffix": "fresh", "model": OTHER_BASE},
    )
    assert_refused(resp, 409, first.json()["id"])
    assert snapshot(tsettings) == before
    registry = open_registry(tsettings)
    try:
        with registry.session() as s:
            assert s.get(DatasetRow, file_id) is not None
    finally:
        registry.dispose()
