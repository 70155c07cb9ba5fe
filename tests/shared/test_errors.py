"""`shared.errors`: each error's status and code, its details listed, its OpenAI-style body."""

from __future__ import annotations

import pytest

from shared.errors import (
    AuthError,
    ConflictError,
    ForbiddenError,
    LoraplexError,
    NotFoundError,
    RateLimited,
    SystemFailure,
    TooLarge,
    ValidationError,
)


@pytest.mark.parametrize(
    ("cls", "status", "code"),
    [
        (NotFoundError, 404, "not_found"),
        (ConflictError, 409, "conflict"),
        (ValidationError, 422, "invalid_input"),
        (AuthError, 401, "invalid_api_key"),
        (ForbiddenError, 403, "permission_denied"),
        (TooLarge, 413, "request_too_large"),
        (RateLimited, 429, "rate_limit_exceeded"),
        (SystemFailure, 500, "server_error"),
    ],
)
def test_each_error_has_its_status_and_code(
    cls: type[LoraplexError], status: int, code: str
) -> None:
    err = cls("no")
    assert (err.status_code, err.code) == (status, code)
    assert cls("no", code="custom").code == "custom"


def test_the_body_names_the_parameter_and_lists_the_details() -> None:
    err = ValidationError("2 problems", param="file", details=["line 1: a", "line 2: b"])
    assert str(err) == "2 problems\n  - line 1: a\n  - line 2: b"
    assert err.to_dict() == {
        "code": "invalid_input",
        "message": "2 problems",
        "param": "file",
        "type": "invalid_request_error",
        "details": ["line 1: a", "line 2: b"],
    }
    assert SystemFailure("disk").to_dict()["type"] == "server_error"
    assert "details" not in NotFoundError("x").to_dict()
    assert RateLimited("slow down", retry_after=7).retry_after == 7
