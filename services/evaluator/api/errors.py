"""Errors as ``{"error": {code, message, param, type, details?}}``; user errors 4xx, ours 5xx."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from shared.errors import LoraplexError

log = logging.getLogger("loraplex.evaluator.api")


def install(app: FastAPI) -> None:
    @app.exception_handler(LoraplexError)
    async def domain_error(_request: Request, exc: LoraplexError) -> JSONResponse:
        # An unreachable judge or server is the request's problem to fix (its URL), not a crash.
        status = exc.status_code if exc.user_error else 502 if exc.param else 500
        return JSONResponse({"error": exc.to_dict()}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            f"{'.'.join(str(p) for p in e['loc'] if p != 'body')}: {e['msg']}" for e in exc.errors()
        ]
        body = {
            "code": "invalid_request",
            "message": details[0] if details else "invalid request",
            "param": None,
            "type": "invalid_request_error",
            "details": details,
        }
        return JSONResponse({"error": body}, status_code=422)

    @app.exception_handler(Exception)
    async def crash(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        body = {
            "code": "server_error",
            "message": "internal error; see the evaluator's log",
            "param": None,
            "type": "server_error",
        }
        return JSONResponse({"error": body}, status_code=500)
