"""Domain errors shared by every service.

Each error carries a machine-readable ``code``, an optional ``param`` (the field, file or line it is
about) and whether it is the user's fault. HTTP layers map ``user_error`` to 4xx and anything else to
5xx in one place; CLIs print ``message`` and exit non-zero.
"""

from __future__ import annotations

from typing import Any


class LoraplexError(Exception):
    """Base class: something the caller can read and act on."""

    code = "error"
    status_code = 400
    user_error = True

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        details: list[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.details = details or []

    def __str__(self) -> str:
        if not self.details:
            return self.message
        return self.message + "\n" + "\n".join(f"  - {d}" for d in self.details)

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "code": self.code,
            "message": self.message,
            "param": self.param,
            "type": "invalid_request_error" if self.user_error else "server_error",
        }
        if self.details:
            body["details"] = self.details
        return body


class ConfigError(LoraplexError):
    code = "invalid_config"


class NotFoundError(LoraplexError):
    code = "not_found"
    status_code = 404


class ConflictError(LoraplexError):
    code = "conflict"
    status_code = 409


class ValidationError(LoraplexError):
    code = "invalid_input"
    status_code = 422


class IntegrityError(LoraplexError):
    """Stored bytes do not match their recorded hash."""

    code = "integrity_error"
    status_code = 409


class OfflineError(LoraplexError):
    code = "offline"
    status_code = 400


class SystemFailure(LoraplexError):
    """A fault of ours or of the machine, not of the request."""

    code = "server_error"
    status_code = 500
    user_error = False


class AuthError(LoraplexError):
    """No key, or a key no one configured."""

    code = "invalid_api_key"
    status_code = 401


class ForbiddenError(LoraplexError):
    """A valid key without the scope or adapter name the request needs, or a move the registry's
    rules refuse (a protected alias without passing evidence)."""

    code = "permission_denied"
    status_code = 403


class TooLarge(LoraplexError):
    code = "request_too_large"
    status_code = 413


class RateLimited(LoraplexError):
    """Too much at once for one key; ``retry_after`` seconds is when to try again."""

    code = "rate_limit_exceeded"
    status_code = 429

    def __init__(self, message: str, *, retry_after: int = 1, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after
