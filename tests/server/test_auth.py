"""`services.server.auth`: key scopes and the admin key."""

from __future__ import annotations

import pytest

from services.server.auth import Access
from services.server.config import ServerSettings
from services.server.errors import AuthError, ForbiddenError


def test_access_scopes_and_admin() -> None:
    settings = ServerSettings(
        admin_key="adm", api_keys={"k1": ["bot"], "k2": ["*"]}, engine_urls=["http://x"]
    )
    access = Access(settings)
    scope = access.inference_scope("Bearer k1")
    access.check_model(scope, "bot:prod")
    access.check_model(scope, "bot@v3")
    with pytest.raises(ForbiddenError):
        access.check_model(scope, "other")
    assert access.inference_scope("Bearer k2").unrestricted
    assert access.inference_scope("Bearer adm").unrestricted
    with pytest.raises(AuthError):
        access.inference_scope(None)
    with pytest.raises(ForbiddenError):  # a valid key without the admin scope
        access.check_admin("Bearer k2")
    with pytest.raises(AuthError):
        access.check_admin("Bearer nope")
    access.check_admin("Bearer adm")
