"""`services.server.errors`: the server's own errors, their status and code, in OpenAI's envelope."""

from __future__ import annotations

from services.server.errors import (
    EngineError,
    ModelNotFound,
    Quarantined,
    Unavailable,
    error_body,
)
from shared.errors import ValidationError


def test_each_error_has_its_status_code_and_envelope() -> None:
    assert error_body(ModelNotFound("no model 'x'", param="model")) == {
        "error": {
            "code": "model_not_found",
            "message": "no model 'x'",
            "param": "model",
            "type": "invalid_request_error",
        }
    }
    busy = Unavailable("no engine ready")
    assert (busy.status_code, busy.retry_after, busy.to_dict()["type"]) == (503, 5, "server_error")
    failed = EngineError("load failed", engine_status=400)
    assert (failed.status_code, failed.code, failed.engine_status) == (502, "engine_error", 400)
    quarantined = Quarantined("killed engines")
    assert isinstance(quarantined, ValidationError) and quarantined.code == "adapter_quarantined"
