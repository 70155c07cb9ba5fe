"""Helpers for the trainer API tests: uploads, and a snapshot of all stored state (database rows,
artifact store, upload spool) to show a refused request changed nothing."""

from __future__ import annotations

import json
from typing import Any

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


def assert_refused(resp: Any, status: int, *fragments: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    error: dict[str, Any] = resp.json()["error"]
    assert set(error) >= {"code", "message", "param"}
    text = error["message"] + " " + " ".join(error.get("details") or [])
    for fragment in fragments:
        assert fragment in text, text
    return error


def _job(file_id: str, **extra: Any) -> dict[str, Any]:
    return {"model": "smollm2-135m-instruct", "training_file": file_id, **extra}
