"""PII in uploaded training files, through the trainer's HTTP API: the upload reports where it is
(file, line, field, kind) and never what; a job with ``data.pii: refuse`` is refused with a 4xx
naming each finding (and a clean file passes); ``report`` (the default) and ``redact`` accept the
file (the redaction itself is in tests/shared/test_datasets_pii.py, on the data the recipe
trains on)."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.trainer.config import TrainerSettings
from tests.trainer.api.requests import _job, assert_refused, snapshot, upload

EMAIL = "jane.doe@gmail.com"
CARD = "4111 1111 1111 1111"


def chat(user: str, assistant: str) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "content": user},
            {"role": "assistant", "content": assistant},
        ]
    }


CLEAN = [
    chat(f"Convert {i} red mugs to JSON.", json.dumps({"item": "mug", "n": i})) for i in range(4)
]
WITH_PII = [
    CLEAN[0],
    chat(f"Send the receipt to {EMAIL} please.", '{"item": "receipt"}'),
    chat("What do I pay with?", f"Your card {CARD} is on file."),
    CLEAN[3],
]


def body(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def test_upload_reports_where_pii_is_and_never_what(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    resp = upload(client, body(WITH_PII))
    assert resp.status_code == 200, resp.text
    pii = resp.json()["report"]["pii"]
    assert pii["count"] == 2 and pii["kinds"] == {"email": 1, "card": 1}
    assert pii["findings"] == [
        {"file": "train.jsonl", "line": 2, "field": "messages[0].content", "kind": "email"},
        {"file": "train.jsonl", "line": 3, "field": "messages[1].content", "kind": "card"},
    ]
    fetched = client.get(f"/v1/files/{resp.json()['id']}").text
    assert EMAIL not in fetched and CARD not in fetched
    validated = [r for r in caplog.records if getattr(r, "event", None) == "file.validated"]
    assert validated and validated[0].__dict__["fields"]["pii_spans"] == 2
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert EMAIL not in logged and CARD not in logged
    # Control: a clean file reports nothing.
    clean = upload(client, body(CLEAN), name="clean.jsonl").json()["report"]["pii"]
    assert clean["count"] == 0 and clean["findings"] == []


def test_refuse_names_file_line_field_and_kind_and_stores_nothing(
    client: TestClient, trainer_settings: TrainerSettings
) -> None:
    file_id = upload(client, body(WITH_PII)).json()["id"]
    before = snapshot(trainer_settings)
    error = assert_refused(
        client.post("/v1/fine_tuning/jobs", json=_job(file_id, data={"pii": "refuse"})),
        422,
        "data.pii is 'refuse'",
        "train.jsonl line 2, field `messages[0].content`: email",
        "train.jsonl line 3, field `messages[1].content`: card",
    )
    assert error["param"] == "training_file"
    assert EMAIL not in json.dumps(error) and CARD not in json.dumps(error)
    assert snapshot(trainer_settings) == before


def test_refuse_passes_a_clean_file_and_counts_only_the_chosen_kinds(client: TestClient) -> None:
    clean = upload(client, body(CLEAN)).json()["id"]
    made = client.post("/v1/fine_tuning/jobs", json=_job(clean, data={"pii": "refuse"}))
    assert made.status_code == 200, made.text
    emails_only = upload(client, body(WITH_PII[:2])).json()["id"]
    job = _job(emails_only, data={"pii": "refuse", "pii_kinds": ["card", "iban"]}, suffix="k")
    assert client.post("/v1/fine_tuning/jobs", json=job).status_code == 200
    job["data"]["pii_kinds"] = ["email"]
    assert_refused(client.post("/v1/fine_tuning/jobs", json=job), 422, ": email")


@pytest.mark.parametrize("action", ["report", "redact", None])
def test_report_and_redact_accept_a_file_with_pii(client: TestClient, action: str | None) -> None:
    file_id = upload(client, body(WITH_PII)).json()["id"]
    extra = {} if action is None else {"data": {"pii": action}}
    made = client.post("/v1/fine_tuning/jobs", json=_job(file_id, **extra))
    assert made.status_code == 200, made.text


def test_an_unknown_action_or_kind_is_a_clear_422(client: TestClient) -> None:
    file_id = upload(client, body(CLEAN)).json()["id"]
    assert_refused(
        client.post("/v1/fine_tuning/jobs", json=_job(file_id, data={"pii": "ignore"})), 422, "pii"
    )
    assert_refused(
        client.post("/v1/fine_tuning/jobs", json=_job(file_id, data={"pii_kinds": ["dna"]})),
        422,
        "pii_kinds",
    )
