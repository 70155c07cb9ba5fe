"""``services.trainer.files``: uploaded data files, checked and stored by content hash: names and
purposes, the upload's report, the worker's near-duplicate count, local files registered as if
uploaded, listing, and the PII refusal's wording."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from services.trainer.files import (
    check_filename,
    check_purpose,
    create_file,
    data_file,
    file_path,
    get_file,
    inspect_training_file,
    list_files,
    pii_problem,
    record_near_duplicates,
    register_local_file,
)
from shared.artifacts import open_store
from shared.errors import NotFoundError, ValidationError
from shared.registry.db import open_registry
from shared.registry.models import utcnow
from shared.settings import SharedSettings
from tests.trainer.conftest import order_chat, write_jsonl


@pytest.fixture
def session(settings: SharedSettings) -> Iterator[Session]:
    registry = open_registry(settings)
    try:
        with registry.session() as s:
            yield s
    finally:
        registry.dispose()


def chat(user: str, assistant: str) -> dict[str, object]:
    return {
        "messages": [
            {"role": "user", "content": user},
            {"role": "assistant", "content": assistant},
        ]
    }


def mugs(n: int) -> dict[str, object]:
    """A chat without PII (order_chat's carry person names)."""
    return chat(f"Convert {n} red mugs to JSON.", json.dumps({"item": "mug", "n": n}))


@pytest.mark.parametrize(
    "name", ["orders.jsonl", "my data:v2 (ü).jsonl", "..hidden.jsonl", "a..b.jsonl", "ü" * 300]
)
def test_local_file_names_become_allowed_upload_names(name: str) -> None:
    from services.trainer.files import check_filename, local_filename

    safe = local_filename(Path("/some/folder") / name)
    assert check_filename(safe) == safe
    if name == "orders.jsonl":
        assert safe == name  # plain names are kept as they are


def test_a_name_and_a_purpose_are_checked() -> None:
    with pytest.raises(ValidationError) as caught:
        check_filename(None)
    assert caught.value.code == "invalid_filename" and "no file name" in caught.value.message
    assert check_filename("train (2).jsonl") == "train (2).jsonl"
    for purpose in ("fine-tune", "evals", "user_data"):
        assert check_purpose(purpose) == purpose
    with pytest.raises(ValidationError) as caught:
        check_purpose("batch")
    assert caught.value.param == "purpose" and caught.value.code == "invalid_purpose"


def test_the_upload_report_counts_examples_duplicates_and_pii() -> None:
    rows = [mugs(1), mugs(2), mugs(1), chat("mail me at jo.smith@gmail.com", "ok")]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    kind, count, report = inspect_training_file(data, "t.jsonl")
    assert (kind, count) == ("sft", 4)
    assert report["examples"] == 4 and report["exact_duplicates"] == 1
    assert report["near_duplicates"] is None  # the worker computes it
    assert report["pii"]["count"] == 1 and report["pii"]["findings"][0]["line"] == 4
    assert "jo.smith" not in json.dumps(report)
    with pytest.raises(ValidationError, match=r"t\.jsonl"):
        inspect_training_file(b"{nope\n", "t.jsonl")


def test_a_file_of_another_purpose_is_stored_raw_without_parsing(
    session: Session, settings: SharedSettings, tmp_path: Path
) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"not json\nat all\n")
    row = create_file(session, settings, filename="notes.txt", purpose="user_data", path=path)
    assert (row.format, row.row_count, row.bytes, row.report) == ("raw", 2, 16, {})
    assert row.id.startswith("file-") and file_path(settings, row).read_bytes() == path.read_bytes()
    with pytest.raises(ValidationError):
        create_file(session, settings, filename="notes.txt", purpose="fine-tune", path=path)


def test_the_near_duplicate_count_replaces_the_files_null(
    session: Session, settings: SharedSettings, sft_file: Path
) -> None:
    row = create_file(session, settings, filename="sft.jsonl", purpose="fine-tune", path=sft_file)
    record_near_duplicates(session, row.id, {"count": "many"})  # not a count: ignored
    record_near_duplicates(session, "file-missing", {"count": 3})  # no such file: ignored
    assert row.report["near_duplicates"] is None
    record_near_duplicates(session, row.id, {"count": 3, "threshold": 0.85})
    session.flush()
    session.expire_all()
    stored = get_file(session, row.id).report
    assert stored["near_duplicates"] == 3 and stored["near_duplicate_threshold"] == 0.85
    assert stored["near_duplicates_complete"] is True and stored["examples"] == 10


def test_a_local_file_is_reused_only_with_the_same_content_name_purpose_and_stored_copy(
    session: Session, settings: SharedSettings, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "orders.jsonl", [order_chat(i) for i in range(3)])
    first = register_local_file(session, settings, path)
    assert first.filename == "orders.jsonl" and first.purpose == "fine-tune"
    assert register_local_file(session, settings, path).id == first.id
    assert register_local_file(session, settings, path, purpose="evals").id != first.id
    copy = write_jsonl(tmp_path / "copy.jsonl", [order_chat(i) for i in range(3)])
    assert register_local_file(session, settings, copy).id != first.id
    # The stored copy vanished: the file is stored (and registered) again.
    file_path(settings, first).unlink()
    again = register_local_file(session, settings, path)
    assert again.id != first.id and open_store(settings).has_file(first.sha256)


def test_files_list_newest_first_by_purpose_and_page(
    session: Session, settings: SharedSettings, tmp_path: Path
) -> None:
    ids = []
    for i, purpose in enumerate(["fine-tune", "evals", "fine-tune", "fine-tune"]):
        path = tmp_path / f"f{i}.txt"
        path.write_text(f"{i}\n")
        row = create_file(session, settings, filename=path.name, purpose="user_data", path=path)
        row.purpose, row.created_at = purpose, utcnow() + timedelta(seconds=i)
        ids.append(row.id)
    session.flush()
    rows, more = list_files(session, limit=2)
    assert [r.id for r in rows] == [ids[3], ids[2]] and more
    rows, more = list_files(session, purpose="fine-tune", after=ids[3])
    assert [r.id for r in rows] == [ids[2], ids[0]] and not more
    assert list_files(session, after="file-unknown") == ([], False)
    with pytest.raises(NotFoundError) as caught:
        get_file(session, "file-nope", param="training_file")
    assert caught.value.param == "training_file" and caught.value.code == "file_not_found"


def test_data_file_reads_the_stored_copy_with_its_lineage(
    session: Session, settings: SharedSettings, sft_file: Path
) -> None:
    row = create_file(session, settings, filename="sft.jsonl", purpose="fine-tune", path=sft_file)
    got = data_file(settings, row, "training_file sft.jsonl")
    assert (got.file_id, got.sha256, got.name) == (row.id, row.sha256, "training_file sft.jsonl")
    assert got.path == file_path(settings, row) and got.path != sft_file
    assert data_file(settings, row).name == "sft.jsonl"


def test_the_pii_refusal_names_where_and_scans_files_uploaded_before_scanning(
    session: Session, settings: SharedSettings, tmp_path: Path
) -> None:
    rows = [chat(f"write to user{i}@gmail.com", "ok") for i in range(12)] + [mugs(0)]
    path = write_jsonl(tmp_path / "pii.jsonl", rows)
    row = create_file(session, settings, filename="pii.jsonl", purpose="fine-tune", path=path)
    why = pii_problem(settings, row, "training_file", None)
    assert why is not None
    assert why.startswith(f"training_file {row.id} holds 12 PII span(s) (email 12)")
    assert "pii.jsonl line 1, field `messages[0].content`: email" in why
    assert "; and 2 more;" in why and "gmail" not in why
    # Only the chosen kinds count.
    assert pii_problem(settings, row, "training_file", ["phone"]) is None
    # A report from before PII scanning existed has no section: the file is scanned now.
    row.report = {k: v for k, v in row.report.items() if k != "pii"}
    assert pii_problem(settings, row, "training_file", None) == why
    clean = write_jsonl(tmp_path / "clean.jsonl", [mugs(i) for i in range(3)])
    ok = create_file(session, settings, filename="clean.jsonl", purpose="fine-tune", path=clean)
    assert pii_problem(settings, ok, "validation_file", None) is None
