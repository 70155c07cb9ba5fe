"""The trainer API without training: OpenAI shapes, and bad input answered with a clear 4xx while
no stored state changes (database rows, artifact store, upload spool)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from services.trainer.config import TrainerSettings
from shared.registry.db import open_registry
from shared.registry.models import AdapterVersionRow, DatasetRow, JobEventRow, TrainingJobRow
from tests.trainer.conftest import order_chat, order_pair


def snapshot(settings: TrainerSettings) -> dict[str, Any]:
    registry = open_registry(settings)
    try:
        with registry.session() as s:
            counts = {
                t.__tablename__: s.scalar(select(func.count()).select_from(t))
                for t in (DatasetRow, TrainingJobRow, JobEventRow, AdapterVersionRow)
            }
    finally:
        registry.dispose()
    # Every file under the data dir (artifact store, upload spool) except the database itself.
    files = sorted(
        str(p.relative_to(settings.data_dir))
        for p in settings.data_dir.rglob("*")
        if p.is_file() and not p.name.startswith(("registry.db", ".registry"))
    )
    return {"rows": counts, "files": files}


def upload(
    client: TestClient, content: bytes, name: str = "train.jsonl", purpose: str = "fine-tune"
) -> Any:
    return client.post("/v1/files", files={"file": (name, content)}, data={"purpose": purpose})


def lines(*rows: Any) -> bytes:
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows).encode()


GOOD_SFT = lines(*[order_chat(i) for i in range(4)])
GOOD_DPO = lines(*[order_pair(i) for i in range(4)])


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


def test_create_list_retrieve_cancel_a_job(client: TestClient) -> None:
    file_id = upload(client, GOOD_SFT).json()["id"]
    resp = client.post(
        "/v1/fine_tuning/jobs",
        json={
            "model": "smollm2-135m-instruct",
            "training_file": file_id,
            "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}}},
            "suffix": "orders",
            "seed": 7,
            "metadata": {"team": "a"},
            "lora": {"r": 8, "quantization": "nf4"},
        },
    )
    assert resp.status_code == 200, resp.text
    job = resp.json()
    assert job["object"] == "fine_tuning.job" and job["status"] == "validating_files"
    assert job["hyperparameters"]["n_epochs"] == 3 and job["seed"] == 7
    assert job["lora"]["r"] == 8 and job["adapter_name"] == "orders"
    assert client.get("/v1/fine_tuning/jobs").json()["data"][0]["id"] == job["id"]
    events = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events").json()
    assert events["data"][0]["object"] == "fine_tuning.job.event"
    assert "created" in events["data"][-1]["message"]
    # Pagination: newest first, `after` continues below the given event.
    first = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events", params={"limit": 1}).json()
    assert first["has_more"]
    rest = client.get(
        f"/v1/fine_tuning/jobs/{job['id']}/events", params={"after": first["data"][0]["id"]}
    ).json()
    assert rest["data"][0]["id"] != first["data"][0]["id"]
    cancelled = client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    # A finished stream ends by itself.
    stream = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events", params={"stream": "true"})
    assert "event: done" in stream.text and "cancelled" in stream.text
    assert client.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()["data"] == []


def assert_refused(resp: Any, status: int, *fragments: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    error: dict[str, Any] = resp.json()["error"]
    assert set(error) >= {"code", "message", "param"}
    text = error["message"] + " " + " ".join(error.get("details") or [])
    for fragment in fragments:
        assert fragment in text, text
    return error


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


def _job(file_id: str, **extra: Any) -> dict[str, Any]:
    return {"model": "smollm2-135m-instruct", "training_file": file_id, **extra}


JOB_CASES: dict[str, tuple[dict[str, Any], int, list[str]]] = {
    "unknown_base_model": ({"model": "llama-9000"}, 422, ["unknown base model 'llama-9000'"]),
    "rank_above_server_max": ({"lora": {"r": 64}}, 422, ["lora.r = 64", "max LoRA rank 16"]),
    "dora": ({"lora": {"use_dora": True}}, 422, ["DoRA"]),
    "modules_to_save": ({"lora": {"modules_to_save": ["lm_head"]}}, 422, ["modules_to_save"]),
    "missing_training_file": ({"training_file": "file-doesnotexist"}, 422, ["does not exist"]),
    "dpo_on_chat_data": ({"method": {"type": "dpo"}}, 422, ["needs preference pairs"]),
    "unknown_field": ({"learning_rate": 0.1}, 422, ["learning_rate"]),
    "bad_hyperparameter": (
        {"method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 0}}}},
        422,
        ["n_epochs"],
    ),
    "bad_suffix": ({"suffix": "Has Spaces!"}, 422, ["adapter name"]),
    "unknown_base_adapter": ({"base_adapter": "nope@v1"}, 422, ["nope@v1"]),
}


@pytest.mark.parametrize("case", sorted(JOB_CASES))
def test_bad_jobs_are_refused_and_nothing_is_stored(
    client: TestClient, trainer_settings: TrainerSettings, case: str
) -> None:
    file_id = upload(client, GOOD_SFT).json()["id"]
    body, status, fragments = JOB_CASES[case]
    before = snapshot(trainer_settings)
    assert_refused(
        client.post("/v1/fine_tuning/jobs", json=_job(file_id, **body)), status, *fragments
    )
    assert snapshot(trainer_settings) == before


def test_training_file_of_another_purpose(
    client: TestClient, trainer_settings: TrainerSettings
) -> None:
    other = upload(client, GOOD_SFT, purpose="evals").json()["id"]
    before = snapshot(trainer_settings)
    error = assert_refused(
        client.post("/v1/fine_tuning/jobs", json=_job(other)), 422, "purpose 'evals'"
    )
    assert error["param"] == "training_file"
    assert snapshot(trainer_settings) == before


def test_every_job_problem_is_listed_at_once(client: TestClient) -> None:
    file_id = upload(client, GOOD_DPO).json()["id"]
    error = assert_refused(
        client.post(
            "/v1/fine_tuning/jobs",
            json=_job(file_id, model="nope", lora={"r": 32, "bias": "all"}),
        ),
        422,
    )
    joined = "\n".join(error["details"])
    assert "unknown base model" in joined and "r = 32" in joined and "bias" in joined
    assert "needs chat data" in joined


def test_unknown_job_and_file_are_404(client: TestClient) -> None:
    assert_refused(client.get("/v1/fine_tuning/jobs/ftjob-nope"), 404, "does not exist")
    assert_refused(client.get("/v1/files/file-nope"), 404, "does not exist")


def test_base_adapter_alias_is_pinned_to_its_version_at_creation(
    client: TestClient, trainer_settings: TrainerSettings
) -> None:
    from shared.registry.adapters import NewVersion, register_version, set_alias
    from shared.registry.models import BaseModelRow

    registry = open_registry(trainer_settings)
    try:
        with registry.session() as s:
            s.add(
                BaseModelRow(
                    name="smollm2-135m-instruct", weights_sha256="0" * 64, path="/x", source="t"
                )
            )
            s.flush()
            for n in (1, 2):
                register_version(
                    s, NewVersion("shop", f"{n:064d}", "smollm2-135m-instruct", 8, 1, {})
                )
            set_alias(s, "shop", "prod", "shop@v1")
    finally:
        registry.dispose()
    file_id = upload(client, GOOD_SFT).json()["id"]
    resp = client.post("/v1/fine_tuning/jobs", json=_job(file_id, base_adapter="shop:prod"))
    assert resp.status_code == 200, resp.text
    job_id = resp.json()["id"]
    registry = open_registry(trainer_settings)
    try:
        with registry.session() as s:
            # The alias may move later; the job keeps the version it meant.
            assert s.get(TrainingJobRow, job_id).config["base_adapter"] == "shop@v1"  # type: ignore[union-attr]
    finally:
        registry.dispose()
    assert_refused(
        client.post("/v1/fine_tuning/jobs", json=_job(file_id, base_adapter="shop:canary")),
        422,
        "canary",
    )
