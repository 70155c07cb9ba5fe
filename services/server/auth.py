"""Who may call what: optional inference keys (each limited to a list of adapters) and a separate
admin key for ``/admin``. Keys are compared in constant time."""

from __future__ import annotations

import hmac

from services.server.config import ALL_ADAPTERS, ServerSettings
from services.server.errors import AuthError, ForbiddenError
from services.server.names import adapter_of


def bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class Scope:
    """What one caller may use: every model, or a set of adapter names (and the base by name)."""

    __slots__ = ("names",)

    def __init__(self, names: frozenset[str] | None) -> None:
        self.names = names

    @property
    def unrestricted(self) -> bool:
        return self.names is None

    def allows(self, model: str) -> bool:
        if self.names is None:
            return True
        return model in self.names or adapter_of(model) in self.names


OPEN = Scope(None)


class Access:
    def __init__(self, settings: ServerSettings) -> None:
        admin = settings.admin_key.get_secret_value() if settings.admin_key else ""
        self.admin_key = admin.encode()
        self.keys: list[tuple[bytes, Scope]] = [
            (key.encode(), OPEN if ALL_ADAPTERS in names else Scope(frozenset(names)))
            for key, names in settings.api_keys.items()
        ]

    @property
    def admin_enabled(self) -> bool:
        return bool(self.admin_key)

    @property
    def inference_keys_required(self) -> bool:
        return bool(self.keys)

    def inference_scope(self, authorization: str | None) -> Scope:
        """The caller's scope; AuthError when keys are configured and none matches.

        The admin key is accepted too, with full scope, so operators can test what they deploy.
        """
        if not self.keys:
            return OPEN
        token = bearer(authorization)
        if token is None:
            raise AuthError("missing API key: send 'Authorization: Bearer <key>'")
        raw = token.encode()
        found: Scope | None = None
        for key, scope in self.keys:  # no early exit: constant time over the key list
            if hmac.compare_digest(raw, key):
                found = scope
        if found is None and self.admin_key and hmac.compare_digest(raw, self.admin_key):
            found = OPEN
        if found is None:
            raise AuthError("invalid API key")
        return found

    def check_model(self, scope: Scope, model: str) -> None:
        if not scope.allows(model):
            raise ForbiddenError(f"this API key may not use model {model!r}", param="model")

    def check_admin(self, authorization: str | None) -> None:
        token = bearer(authorization)
        if not self.admin_key:
            raise ForbiddenError("the admin API is disabled (no admin key configured)")
        if token is None or not hmac.compare_digest(token.encode(), self.admin_key):
            raise AuthError("admin endpoints need 'Authorization: Bearer <admin key>'")
