"""HTTP conventions shared by the three services: one error shape, mapped in one place.

Errors answer ``{"error": {"code", "message", "param", "type"}}`` like the OpenAI API, so the
official SDK raises its typed exceptions with our message. The same bad input gets the same status
on every service: a body that does not match the schema is 422 naming the field, a body that is
not JSON (or nests deeper than a parser should follow) 400, a domain error its own status, and our
own failures 500 without a stack trace. 429 and 503 carry ``Retry-After``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.errors import LoraplexError

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "invalid_request",
    401: "invalid_api_key",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
}


def error_body(
    code: str, message: str, param: str | None = None, user: bool = True
) -> dict[str, Any]:
    return {
        "error": {
            "code": code,
            "message": message,
            "param": param,
            "type": "invalid_request_error" if user else "server_error",
        }
    }


def error_response_parts(exc: LoraplexError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, raw headers and body for ``exc``: what a pure-ASGI path sends."""
    body = json.dumps({"error": exc.to_dict()}).encode()
    headers = [(b"content-type", b"application/json")]
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        headers.append((b"retry-after", str(int(retry_after)).encode()))
    return exc.status_code, headers, body


def error_response(exc: LoraplexError) -> Response:
    status, headers, body = error_response_parts(exc)
    return Response(body, status_code=status, headers={k.decode(): v.decode() for k, v in headers})


def validation_error(exc: RequestValidationError) -> LoraplexError:
    """FastAPI's error list as one 422 that names each field (or 400 for a body that is not
    JSON at all)."""
    problems = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header")]
        problems.append(f"{'.'.join(loc) or 'body'}: {err.get('msg')}")
    first = exc.errors()[0] if exc.errors() else {}
    param = (
        ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")) or None
    )
    out = LoraplexError("; ".join(problems) or "invalid request", param=param, details=problems)
    out.code = "invalid_request"
    out.status_code = 400 if first.get("type") == "json_invalid" else 422
    return out


def install_error_handlers(app: FastAPI) -> None:
    """The one error mapping; every service's app installs it."""

    @app.exception_handler(LoraplexError)
    async def _domain(_req: Request, exc: LoraplexError) -> Response:
        if not exc.user_error:
            log.error("system error: %s", exc)
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req: Request, exc: RequestValidationError) -> Response:
        return error_response(validation_error(exc))

    @app.exception_handler(RecursionError)
    async def _too_deep(_req: Request, _exc: RecursionError) -> Response:
        err = LoraplexError("the request body nests too deeply to parse", code="invalid_request")
        return error_response(err)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException) -> Response:
        err = LoraplexError(str(exc.detail), code=_HTTP_CODES.get(exc.status_code, "http_error"))
        err.status_code = exc.status_code
        err.user_error = exc.status_code < 500
        response = error_response(err)
        for name, value in (getattr(exc, "headers", None) or {}).items():
            response.headers[name] = value
        return response

    @app.exception_handler(Exception)
    async def _unexpected(_req: Request, exc: Exception) -> Response:
        log.exception("unhandled error")
        err = LoraplexError("internal server error; see the service's log", code="server_error")
        err.status_code, err.user_error = 500, False
        return error_response(err)
