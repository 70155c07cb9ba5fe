"""Uploaded data files (OpenAI's "file" objects): validated on upload, stored by content hash.

A ``fine-tune`` file is parsed completely on upload and refused with every problem listed (file,
line, field) before anything is stored; nothing about a refused upload remains afterwards.

The upload runs only the checks whose cost is linear in the file (bounded by the upload size
limit): parsing, record formats, exact duplicates, and the PII scan (``shared.datasets.pii``:
linear-time patterns; its report says where PII is, line, field and kind, never what). Near-duplicate detection is not
run here: it is the worker's data validation (``shared.datasets.prepare``) that computes it, on
the examples the job really trains on (after exact de-duplication, with the job's threshold),
in a process built for long work, so an upload can neither stall nor bloat the API. The worker
then writes its count into this file's report (:func:`record_near_duplicates`); until a job has
validated the file the report's ``near_duplicates`` is ``null`` (not computed yet).
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.trainer.responses import FileObject, unix_time
from shared.artifacts import open_store
from shared.datasets import parse_file
from shared.datasets.pii import describe_kinds, pii_report, scan_examples
from shared.errors import NotFoundError, ValidationError
from shared.logs import event
from shared.registry.models import DatasetRow
from shared.settings import SharedSettings

log = logging.getLogger(__name__)

FINE_TUNE = "fine-tune"
# Other services keep their own files in the same table; the trainer stores them but never trains
# on them.
PURPOSES = (FINE_TUNE, "evals", "user_data")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ ()+-]{0,254}$")


@dataclass(frozen=True)
class DataFile:
    """A data file as a recipe reads it, with what the adapter's lineage records about it."""

    path: Path
    name: str  # what errors call it: the uploaded file name or the path given
    file_id: str | None = None
    sha256: str | None = None


def check_filename(name: str | None) -> str:
    """A plain file name: no folders, no ``..``, no control characters."""
    if not name:
        raise ValidationError("the upload has no file name", param="file", code="invalid_filename")
    if "/" in name or "\\" in name or ".." in name or not _SAFE_NAME.match(name):
        raise ValidationError(
            f"file name {name!r} is not allowed: use a plain name (letters, digits, '.', '_', "
            "'-', ' ') without folders or '..'",
            param="file",
            code="invalid_filename",
        )
    return name


def check_purpose(purpose: str) -> str:
    if purpose not in PURPOSES:
        raise ValidationError(
            f"purpose {purpose!r} is not supported; use one of {', '.join(PURPOSES)}",
            param="purpose",
            code="invalid_purpose",
        )
    return purpose


def inspect_training_file(data: bytes, filename: str) -> tuple[str, int, dict[str, Any]]:
    """(kind, rows, report) of a fine-tune file, or a ValidationError listing every problem."""
    loaded, problems = parse_file(data, filename)
    problems.raise_if_any(f"training data {filename}", param="file")
    keys = [e.content_key() for e in loaded.examples]
    report = {
        "file_format": loaded.file_format,
        "kind": loaded.kind,
        "formats": loaded.formats,
        "examples": len(loaded.examples),
        "exact_duplicates": len(keys) - len(set(keys)),
        # What the default cleaning changes in the replies (a job can keep markup: data.keep_markup)
        "cleaning": loaded.cleaning,
        "near_duplicates": None,  # filled in by the first job that validates the file
        # Where PII is (line, field, kind), never what: file reports are readable by API users.
        "pii": pii_report(scan_examples(loaded.examples)),
    }
    return loaded.kind, len(loaded.examples), report


def pii_problem(
    settings: SharedSettings, row: DatasetRow, param: str, kinds: Sequence[str] | None
) -> str | None:
    """Why a job with ``data.pii: refuse`` cannot train on ``row``, naming where its PII is;
    None when it holds none. Files uploaded before PII scanning existed are scanned now."""
    section = (row.report or {}).get("pii")
    if kinds is not None or not isinstance(section, dict):
        loaded, _problems = parse_file(file_path(settings, row).read_bytes(), row.filename)
        found = scan_examples(loaded.examples, kinds)
        section = pii_report(found)
        summary = describe_kinds(found)
    else:
        summary = ", ".join(f"{k} {n}" for k, n in section.get("kinds", {}).items())
    if not section.get("count"):
        return None
    listed = "; ".join(
        f"{row.filename} line {f['line']}, field `{f['field']}`: {f['kind']}"
        for f in section.get("findings", [])[:10]
    )
    more = section["count"] - min(10, len(section.get("findings", [])))
    return (
        f"{param} {row.id} holds {section['count']} PII span(s) ({summary}) and data.pii is "
        f"'refuse': {listed}" + (f"; and {more} more" if more > 0 else "") + "; remove them, or "
        "use data.pii 'redact' to train on placeholders"
    )


def create_file(
    session: Session, settings: SharedSettings, *, filename: str, purpose: str, path: Path
) -> DatasetRow:
    """Validate and store an uploaded file that has been spooled to ``path``."""
    check_filename(filename)
    check_purpose(purpose)
    data = path.read_bytes()
    if purpose == FINE_TUNE:
        kind, rows, report = inspect_training_file(data, filename)
    else:
        kind, rows, report = "raw", data.count(b"\n"), {}
    sha = open_store(settings).put_file(path)
    row = DatasetRow(
        id=f"file-{uuid.uuid4().hex[:24]}",
        filename=filename,
        purpose=purpose,
        format=kind,
        sha256=sha,
        row_count=rows,
        bytes=len(data),
        report=report,
    )
    session.add(row)
    session.flush()
    event(
        log,
        "file.validated",
        file=row.id,
        filename=filename,
        purpose=purpose,
        kind=kind,
        rows=rows,
        bytes=len(data),
        sha256=sha[:12],
        exact_duplicates=report.get("exact_duplicates"),
        pii_spans=(report.get("pii") or {}).get("count"),  # counts only: never the PII itself
    )
    return row


def record_near_duplicates(session: Session, file_id: str, found: dict[str, Any]) -> None:
    """Put a job's near-duplicate count (its data report's ``near_duplicates`` section) into the
    file's report; the latest job's count wins, with the threshold it used."""
    row = session.get(DatasetRow, file_id)
    if row is None or not isinstance(found.get("count"), int):
        return
    # A new dict: SQLAlchemy does not see in-place changes to a JSON column.
    row.report = {
        **(row.report or {}),
        "near_duplicates": found["count"],
        "near_duplicate_threshold": found.get("threshold"),
        "near_duplicates_complete": found.get("complete", True),
    }


def local_filename(path: Path) -> str:
    """``path``'s name made acceptable to :func:`check_filename` (other characters become ``_``)."""
    name = re.sub(r"[^A-Za-z0-9._ ()+-]", "_", path.name).replace("..", "_").lstrip("._ -+()")
    return (name or "data")[:255]


def register_local_file(
    session: Session, settings: SharedSettings, path: Path, purpose: str = FINE_TUNE
) -> DatasetRow:
    """A local data file as a registry file, exactly as if it had been uploaded.

    ``loraplex train run`` trains on files that never went through ``POST /v1/files``; without a
    row and a stored copy, the adapter's lineage would name a file nobody can read back, and the
    evaluator could not rebuild its validation split. A file already registered with the same
    content, name and purpose is reused, so running the same config twice records the same
    lineage (and the registry recognises the same adapter version).
    """
    from shared.artifacts import file_sha256

    filename = local_filename(path)
    sha = file_sha256(path)
    existing = session.scalars(
        select(DatasetRow)
        .where(
            DatasetRow.sha256 == sha,
            DatasetRow.filename == filename,
            DatasetRow.purpose == purpose,
        )
        .order_by(DatasetRow.created_at, DatasetRow.id)
        .limit(1)
    ).first()
    if existing is not None and open_store(settings).has_file(sha):
        return existing
    return create_file(session, settings, filename=filename, purpose=purpose, path=path)


def get_file(session: Session, file_id: str, param: str = "file_id") -> DatasetRow:
    row = session.get(DatasetRow, file_id)
    if row is None:
        raise NotFoundError(f"file {file_id!r} does not exist", param=param, code="file_not_found")
    return row


def list_files(
    session: Session, *, purpose: str | None = None, after: str | None = None, limit: int = 100
) -> tuple[list[DatasetRow], bool]:
    stmt = select(DatasetRow).order_by(DatasetRow.created_at.desc(), DatasetRow.id.desc())
    if purpose:
        stmt = stmt.where(DatasetRow.purpose == purpose)
    rows = list(session.scalars(stmt))
    if after:
        ids = [r.id for r in rows]
        rows = rows[ids.index(after) + 1 :] if after in ids else []
    return rows[:limit], len(rows) > limit


def file_path(settings: SharedSettings, row: DatasetRow) -> Path:
    return open_store(settings).get_file(row.sha256)


def data_file(settings: SharedSettings, row: DatasetRow, name: str | None = None) -> DataFile:
    """A registered file as a recipe reads it: the stored copy, with the id and hash its lineage
    records (``name``: what errors call it, the stored file name by default)."""
    return DataFile(file_path(settings, row), name or row.filename, row.id, row.sha256)


def to_api(row: DatasetRow) -> FileObject:
    return FileObject(
        id=row.id,
        bytes=row.bytes,
        created_at=unix_time(row.created_at) or 0,
        filename=row.filename,
        purpose=row.purpose,
        report=row.report or None,
    )
