"""The trainer's /v1/fine_tuning/jobs routes without training: OpenAI shapes, and a bad job answered
with a clear 4xx while no stored state changes."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.trainer.config import TrainerSettings
from tests.trainer.api.requests import GOOD_DPO, GOOD_SFT, _job, assert_refused, snapshot, upload


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


FULL_CASES: dict[str, tuple[dict[str, Any], str, str]] = {
    "dpo": ({"method": {"type": "dpo"}}, "adapter", "not available for method 'dpo'"),
    "lora_block": ({"lora": {"r": 8}}, "lora", "lora is set but adapter is 'none'"),
    "base_adapter": ({"base_adapter": "orders@v1"}, "base_adapter", "no starting adapter"),
    "unknown_kind": ({"adapter": "full"}, "adapter", "'lora' or 'none'"),
}


@pytest.mark.parametrize("case", sorted(FULL_CASES))
def test_a_full_fine_tune_is_refused_naming_the_field_and_nothing_is_stored(
    client: TestClient, trainer_settings: TrainerSettings, case: str
) -> None:
    file_id = upload(client, GOOD_SFT).json()["id"]
    extra, param, fragment = FULL_CASES[case]
    before = snapshot(trainer_settings)
    body = _job(file_id, **{"adapter": "none", **extra})
    error = assert_refused(client.post("/v1/fine_tuning/jobs", json=body), 422, fragment)
    assert error["param"] == param
    assert snapshot(trainer_settings) == before
