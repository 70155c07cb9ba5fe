"""One place that turns errors into OpenAI-shaped responses: ``{"error": {code, message, param}}``.

User errors (bad input) are 4xx with ``type: invalid_request_error``; our own failures are 5xx
with ``type: server_error`` and never leak a stack trace.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.errors import LoraplexError

log = logging.getLogger("loraplex.trainer.api")


def error_body(
    code: str,
    message: str,
    param: str | None,
    *,
    user: bool = True,
    details: list[str] | None = None,
) -> dict[str, object]:
    body: dict[str, object] = {
        "code": code,
        "message": message,
        "param": param,
        "type": "invalid_request_error" if user else "server_error",
    }
    if details:
        body["details"] = details
    return {"error": body}


def install(app: FastAPI) -> None:
    @app.exception_handler(LoraplexError)
    async def _domain(_: Request, exc: LoraplexError) -> JSONResponse:
        if not exc.user_error:
            log.error("server error: %s", exc)
        return JSONResponse({"error": exc.to_dict()}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = []
        for err in exc.errors():
            loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")]
            details.append(f"{'.'.join(loc) or 'body'}: {err.get('msg', 'invalid')}")
        first = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path"))
        return JSONResponse(
            error_body(
                "invalid_request",
                f"invalid request: {details[0] if details else 'malformed body'}",
                param or None,
                details=details,
            ),
            status_code=400,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "file_too_large"}.get(
            exc.status_code, "http_error"
        )
        return JSONResponse(
            error_body(code, str(exc.detail), None, user=exc.status_code < 500),
            status_code=exc.status_code,
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse(
            error_body("server_error", "internal server error", None, user=False), status_code=500
        )
