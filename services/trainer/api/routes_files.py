"""``/v1/files``: upload (validated, size-limited), list, retrieve, download."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import FileResponse

from services.trainer import files
from services.trainer.api.deps import SessionDep, SettingsDep
from services.trainer.schemas import FileList, FileObject
from shared.errors import LoraplexError

router = APIRouter(prefix="/v1/files", tags=["files"])
_CHUNK = 1 << 20


class FileTooLarge(LoraplexError):
    code = "file_too_large"
    status_code = 413


def too_large(limit: int) -> FileTooLarge:
    return FileTooLarge(
        f"the file is larger than the upload limit of {limit} bytes "
        "(LORAPLEX_MAX_UPLOAD_BYTES); split it or raise the limit",
        param="file",
    )


@router.post("", response_model=FileObject)
def upload_file(
    session: SessionDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File()],
    purpose: Annotated[str, Form()],
) -> FileObject:
    """Upload a data file. ``fine-tune`` files are validated completely before they are stored."""
    name = files.check_filename(file.filename)
    files.check_purpose(purpose)
    settings.uploads_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=settings.uploads_dir, suffix=".upload") as tmp:
        size = 0
        while chunk := file.file.read(_CHUNK):
            size += len(chunk)
            if size > settings.max_upload_bytes:
                raise too_large(settings.max_upload_bytes)
            tmp.write(chunk)
        tmp.flush()
        row = files.create_file(
            session, settings, filename=name, purpose=purpose, path=Path(tmp.name)
        )
        return files.to_api(row)


@router.get("", response_model=FileList)
def list_files(
    session: SessionDep,
    purpose: str | None = None,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 100,
    order: str = "desc",
) -> FileList:
    """List uploaded files, newest first."""
    rows, has_more = files.list_files(session, purpose=purpose, after=after, limit=limit)
    if order == "asc":
        rows.reverse()
    data = [files.to_api(r) for r in rows]
    return FileList(
        data=data,
        has_more=has_more,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
    )


@router.get("/{file_id}", response_model=FileObject)
def retrieve_file(file_id: str, session: SessionDep) -> FileObject:
    """One file's metadata, including its validation report."""
    return files.to_api(files.get_file(session, file_id))


@router.get("/{file_id}/content")
def file_content(file_id: str, session: SessionDep, settings: SettingsDep) -> FileResponse:
    """The file's bytes, as uploaded."""
    row = files.get_file(session, file_id)
    path = files.file_path(settings, row)
    return FileResponse(path, filename=row.filename, media_type="application/octet-stream")
