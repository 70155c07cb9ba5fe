"""The trainer's /v1/files routes without training: OpenAI shapes, and a bad upload answered with a
clear 4xx while no stored state changes."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from services.trainer.config import TrainerSettings
from tests.trainer.api.requests import GOOD_SFT, assert_refused, lines, snapshot, upload
from tests.trainer.conftest import order_chat, order_pair


def test_upload_list_retrieve_and_download(client: TestClient) -> None:
    resp = upload(client, GOOD_SFT)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["object"] == "file" and body["id"].startswith("file-")
    assert body["purpose"] == "fine-tune" and body["bytes"] == len(GOOD_SFT)
    assert body["report"]["kind"] == "sft" and body["report"]["examples"] == 4
    listed = client.get("/v1/files").json()
    assert [f["id"] for f in listed["data"]] == [body["id"]]
    assert client.get(f"/v1/files/{body['id']}").json()["filename"] == "train.jsonl"
    assert client.get(f"/v1/files/{body['id']}/content").content == GOOD_SFT


UPLOAD_CASES = {
    "invalid_json_line": (lines(order_chat(0), "{oops"), 422, ["train.jsonl line 2: invalid JSON"]),
    "wrong_role": (
        lines({"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]}),
        422,
        ["line 1: `messages[1].role` must be one of user, assistant, system; got 'bot'"],
    ),
    "empty_assistant": (
        lines(
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]}
        ),
        422,
        ["line 1: `messages[1].content` is empty"],
    ),
    "missing_field": (
        lines(order_chat(0), {"prompt": "q"}),
        422,
        ["line 2: missing field `completion`"],
    ),
    "chosen_equals_rejected": (
        lines(order_pair(0), {"prompt": "q", "chosen": "same", "rejected": "same"}),
        422,
        ["line 2:", "identical"],
    ),
    "all_problems_listed": (
        lines("{x", {"prompt": "q"}, {"messages": []}),
        422,
        ["line 1", "line 2", "line 3"],
    ),
    "file_too_large": (lines(*[order_chat(i % 8) for i in range(200)]), 413, ["limit"]),
    # Above limit + multipart allowance: refused from Content-Length before the body is read.
    "file_far_too_large": (
        lines(*[order_chat(i % 8) for i in range(400)]),
        413,
        ["limit"],
    ),
}


@pytest.mark.parametrize("case", sorted(UPLOAD_CASES))
def test_bad_uploads_are_refused_and_nothing_is_stored(
    client: TestClient, trainer_settings: TrainerSettings, case: str
) -> None:
    content, status, fragments = UPLOAD_CASES[case]
    before = snapshot(trainer_settings)
    assert_refused(upload(client, content), status, *fragments)
    assert snapshot(trainer_settings) == before


@pytest.mark.parametrize(
    "name", ["../../etc/passwd", "..", "a/b.jsonl", "evil\\..\\x.jsonl", ".hidden"]
)
def test_path_traversal_in_file_name(
    client: TestClient, trainer_settings: TrainerSettings, name: str
) -> None:
    before = snapshot(trainer_settings)
    assert_refused(upload(client, GOOD_SFT, name=name), 422, "not allowed")
    assert snapshot(trainer_settings) == before


def test_unknown_purpose(client: TestClient, trainer_settings: TrainerSettings) -> None:
    before = snapshot(trainer_settings)
    assert_refused(upload(client, GOOD_SFT, purpose="assistants"), 422, "purpose")
    assert snapshot(trainer_settings) == before
