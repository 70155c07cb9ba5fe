"""The server's view of :mod:`shared.auth`: which models an inference key may use, and the admin
check. Keys come from the suite's key configuration (``LORAPLEX_KEYS``/``LORAPLEX_KEYS_FILE``) plus
the server's older settings, kept so existing deployments keep working: each ``LORAPLEX_API_KEYS``
entry is a key with the ``infer`` and ``read`` scopes on the adapters it lists, and
``LORAPLEX_ADMIN_KEY`` a key with every scope."""

from __future__ import annotations

import hashlib

from services.server.config import ALL_ADAPTERS, ServerSettings
from services.server.names import adapter_of
from shared.auth import ALL, LOCAL, SCOPES, KeyRing, Principal
from shared.errors import ForbiddenError


class AccessScope:
    """What one inference caller may use: adapter names (patterns) and the base by its name.

    Not ``Scope``: that is ASGI's request scope, which the app and the proxy also handle.
    """

    __slots__ = ("principal",)

    def __init__(self, principal: Principal) -> None:
        self.principal = principal

    @property
    def unrestricted(self) -> bool:
        return ALL in self.principal.adapters

    def allows(self, model: str) -> bool:
        return self.principal.may_touch(model) or self.principal.may_touch(adapter_of(model))


OPEN = AccessScope(LOCAL)


def _label(key: str, kind: str) -> str:
    return f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def keyring(settings: ServerSettings) -> KeyRing:
    entries: list[tuple[str, Principal]] = []
    for key, names in settings.api_keys.items():
        adapters = (ALL,) if ALL_ADAPTERS in names else tuple(names)
        entries.append(
            (key, Principal(_label(key, "api-key"), frozenset({"infer", "read"}), adapters))
        )
    admin = settings.admin_key.get_secret_value() if settings.admin_key else ""
    if admin:
        entries.append((admin, Principal(_label(admin, "admin-key"), frozenset(SCOPES))))
    for spec in settings.key_specs():
        principal = Principal(
            spec.name, frozenset(spec.scopes), tuple(spec.adapters), spec.max_concurrent
        )
        entries.append((spec.key.get_secret_value(), principal))
    return KeyRing(entries)


class Access:
    def __init__(self, settings: ServerSettings) -> None:
        self.keys = keyring(settings)
        self.admin_enabled = self.keys.enabled and self._any_admin(settings)

    @staticmethod
    def _any_admin(settings: ServerSettings) -> bool:
        if settings.admin_key and settings.admin_key.get_secret_value():
            return True
        return any("admin" in spec.scopes for spec in settings.key_specs())

    @property
    def inference_keys_required(self) -> bool:
        return self.keys.enabled

    def inference_scope(self, authorization: str | None) -> AccessScope:
        """The caller's scope; AuthError when keys are configured and none matches."""
        principal = self.keys.authenticate(authorization)
        principal.require("infer")
        return AccessScope(principal)

    def listing_scope(self, authorization: str | None) -> AccessScope:
        """What a caller may see in /v1/models and /v1/adapters: ``infer`` or ``read`` keys."""
        principal = self.keys.authenticate(authorization)
        if not (principal.has("infer") or principal.has("read")):
            raise ForbiddenError(f"key {principal.name!r} lacks the 'infer' or 'read' scope")
        return AccessScope(principal)

    def check_model(self, scope: AccessScope, model: str) -> None:
        if not scope.allows(model):
            raise ForbiddenError(f"this API key may not use model {model!r}", param="model")

    def check_admin(self, authorization: str | None) -> Principal:
        if not self.admin_enabled:
            raise ForbiddenError("the admin API is disabled (no key has the admin scope)")
        principal = self.keys.authenticate(authorization)
        principal.require("admin")
        return principal
