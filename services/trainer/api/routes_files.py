"""``/v1/files``: upload (streamed under the size limit, then validated), list, retrieve, download."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO, Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from services.trainer import files
from services.trainer.api.deps import ReadSessionDep, RegistryDep, SettingsDep
from services.trainer.config import TrainerSettings
from services.trainer.responses import FileList, FileObject
from shared.errors import LoraplexError, TooLarge, ValidationError
from shared.registry.db import Registry

router = APIRouter(prefix="/v1/files", tags=["files"])

MAX_FIELD_BYTES = 1024  # a text field (``purpose``)
MAX_PARTS = 8
# Boundaries and part headers around the fields: a body longer than the file limit plus this is
# refused even if no single part is over its own limit.
FRAMING_BYTES = 64 * 1024

_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "title": "File"},
                        "purpose": {"type": "string", "enum": list(files.PURPOSES)},
                    },
                }
            }
        },
    }
}


class UnsupportedMediaType(LoraplexError):
    code = "unsupported_media_type"
    status_code = 415


class FileTooLarge(LoraplexError):
    code = "file_too_large"
    status_code = 413


def too_large(limit: int) -> FileTooLarge:
    return FileTooLarge(
        f"the file is larger than the upload limit of {limit} bytes "
        "(LORAPLEX_MAX_UPLOAD_BYTES); split it or raise the limit",
        param="file",
    )


# Statuses as shared.http maps request errors: not parseable 400, not the expected fields 422.
def malformed(message: str) -> LoraplexError:
    return LoraplexError(message, code="invalid_request")


def bad_form(message: str, param: str | None = "file") -> ValidationError:
    return ValidationError(message, param=param, code="invalid_request")


def _decode(value: bytes) -> str:
    try:
        return value.decode()
    except UnicodeDecodeError:
        return value.decode("latin-1")


class UploadStream:
    """One ``multipart/form-data`` body, parsed while it arrives.

    The ``file`` part goes straight to a spool file in the uploads folder, counted as it comes: the
    first byte past the limit stops the reading and the request is answered 413, whether or not the
    client sent a Content-Length (``Transfer-Encoding: chunked`` has none). The file name and
    ``purpose`` are checked as soon as their part arrives, so a bad one is refused before the file
    is read. Text fields are capped at MAX_FIELD_BYTES. :meth:`close` removes the spool file.
    """

    def __init__(self, boundary: bytes, spool_dir: Path, limit: int) -> None:
        self.spool_dir = spool_dir
        self.limit = limit
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.path: Path | None = None
        self.size = 0
        self.finished = False
        self._out: IO[bytes] | None = None
        self._parts = 0
        self._headers: dict[bytes, bytes] = {}
        self._header = (b"", b"")
        self._name = ""
        self._in_file = False
        self._text = bytearray()
        self._pending: list[bytes] = []
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_end": self._end,
            },
        )

    async def receive(self, request: Request) -> None:
        received = 0
        try:
            async for chunk in request.stream():
                received += len(chunk)
                if received > self.limit + FRAMING_BYTES:
                    raise too_large(self.limit)
                try:
                    self._parser.write(chunk)
                except MultipartParseError as exc:
                    raise malformed(f"the multipart body is malformed: {exc}") from exc
                if self._pending:
                    pending, self._pending = self._pending, []
                    await run_in_threadpool(self._write, pending)
        except ClientDisconnect as exc:
            raise malformed("the client disconnected during the upload") from exc
        if not self.finished:
            raise malformed("the multipart body ended before its closing boundary")

    def result(self) -> tuple[str, str, Path]:
        """(file name, purpose, spool path) of a complete upload."""
        if self.filename is None or self.path is None:
            raise bad_form("the upload has no `file` part")
        purpose = self.fields.get("purpose")
        if purpose is None:
            raise bad_form("the upload has no `purpose` field", param="purpose")
        return self.filename, purpose, self.path

    def close_writer(self) -> None:
        if self._out is not None:
            self._out.close()

    def close(self) -> None:
        self.close_writer()
        if self.path is not None:
            self.path.unlink(missing_ok=True)

    def _write(self, chunks: list[bytes]) -> None:
        assert self._out is not None
        for chunk in chunks:
            self._out.write(chunk)

    # -- parser callbacks (raising stops the parse and answers the request) --------------------
    def _part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise bad_form(f"the upload has more than {MAX_PARTS} parts", param=None)
        self._headers, self._text, self._in_file = {}, bytearray(), False

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header = (self._header[0] + data[start:end], self._header[1])

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._header = (self._header[0], self._header[1] + data[start:end])

    def _header_end(self) -> None:
        self._headers[self._header[0].lower()] = self._header[1]
        self._header = (b"", b"")

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition"))
        if b"name" not in options:
            raise malformed("a part has no Content-Disposition name")
        self._name = _decode(options[b"name"])
        if b"filename" not in options:
            return
        if self._name != "file" or self.filename is not None:
            raise bad_form("send exactly one file, in the `file` field")
        self.filename = files.check_filename(_decode(options[b"filename"]))
        fd, name = tempfile.mkstemp(dir=self.spool_dir, suffix=".upload")
        self.path = Path(name)
        self._out = os.fdopen(fd, "wb")
        self._in_file = True

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self.size += end - start
            if self.size > self.limit:
                raise too_large(self.limit)
            self._pending.append(data[start:end])
            return
        if len(self._text) + end - start > MAX_FIELD_BYTES:
            raise TooLarge(
                f"field `{self._name[:64]}` is longer than {MAX_FIELD_BYTES} bytes",
                param=self._name[:64] or None,
            )
        self._text += data[start:end]

    def _part_end(self) -> None:
        if self._in_file:
            self._in_file = False
            return
        value = _decode(bytes(self._text))
        if self._name == "purpose":
            files.check_purpose(value)  # refused before the file is read, if it comes first
        self.fields[self._name] = value

    def _end(self) -> None:
        self.finished = True


def _store(
    registry: Registry, settings: TrainerSettings, name: str, purpose: str, path: Path
) -> FileObject:
    with registry.session() as session:
        row = files.create_file(session, settings, filename=name, purpose=purpose, path=path)
        return files.to_api(row)


@router.post("", response_model=FileObject, openapi_extra=_UPLOAD_BODY)
async def upload_file(request: Request, registry: RegistryDep, settings: SettingsDep) -> FileObject:
    """Upload a data file (multipart fields ``file`` and ``purpose``). ``fine-tune`` files are
    validated completely before they are stored."""
    content_type, params = parse_options_header(request.headers.get("content-type"))
    boundary = params.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise UnsupportedMediaType(
            "send the upload as multipart/form-data with fields `file` and `purpose`"
        )
    settings.uploads_dir.mkdir(parents=True, exist_ok=True)
    upload = UploadStream(boundary, settings.uploads_dir, settings.max_upload_bytes)
    try:
        await upload.receive(request)
        name, purpose, path = upload.result()
        await run_in_threadpool(upload.close_writer)
        return await run_in_threadpool(_store, registry, settings, name, purpose, path)
    finally:
        await run_in_threadpool(upload.close)


@router.get("", response_model=FileList)
def list_files(
    session: ReadSessionDep,
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
def retrieve_file(file_id: str, session: ReadSessionDep) -> FileObject:
    """One file's metadata, including its validation report."""
    return files.to_api(files.get_file(session, file_id))


@router.get("/{file_id}/content")
def file_content(file_id: str, session: ReadSessionDep, settings: SettingsDep) -> FileResponse:
    """The file's bytes, as uploaded."""
    row = files.get_file(session, file_id)
    path = files.file_path(settings, row)
    return FileResponse(path, filename=row.filename, media_type="application/octet-stream")
