"""HTTP conventions shared by the three services: one error shape, mapped in one place.

Errors answer ``{"error": {"code", "message", "param", "type"}}`` like the OpenAI API, so the
official SDK raises its typed exceptions with our message. Request-validation errors name the field.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.errors import LoraplexError

log = logging.getLogger(__name__)


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


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(LoraplexError)
    async def _domain(_req: Request, exc: LoraplexError) -> JSONResponse:
        if not exc.user_error:
            log.error("system error: %s", exc)
        return JSONResponse({"error": exc.to_dict()}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")]
            problems.append(f"{'.'.join(loc) or 'body'}: {err.get('msg')}")
        first = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        body = error_body("invalid_request", "; ".join(problems), param)
        body["error"]["details"] = problems
        return JSONResponse(body, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}.get(
            exc.status_code, "http_error"
        )
        return JSONResponse(
            error_body(code, str(exc.detail), user=exc.status_code < 500),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )
