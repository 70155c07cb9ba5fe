"""Errors only the server raises, on top of :mod:`shared.errors`."""

from __future__ import annotations

from typing import Any

from shared.errors import AuthError, ForbiddenError, LoraplexError, TooLarge, ValidationError

__all__ = [
    "AuthError",
    "EngineError",
    "ForbiddenError",
    "ModelNotFound",
    "Quarantined",
    "TooLarge",
    "Unavailable",
]


class ModelNotFound(LoraplexError):
    code = "model_not_found"
    status_code = 404


class Quarantined(ValidationError):
    """An adapter version this server refuses to load again: loading it killed engines."""

    code = "adapter_quarantined"


class Unavailable(LoraplexError):
    """Nothing can serve the request right now; the client should retry after ``retry_after``."""

    code = "unavailable"
    status_code = 503
    user_error = False

    def __init__(self, message: str, *, retry_after: int = 5, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class EngineError(LoraplexError):
    """An engine refused or failed an operation (load, unload)."""

    code = "engine_error"
    status_code = 502
    user_error = False

    def __init__(self, message: str, *, engine_status: int | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.engine_status = engine_status


def error_body(exc: LoraplexError) -> dict[str, Any]:
    """OpenAI's error envelope: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": exc.to_dict()}
