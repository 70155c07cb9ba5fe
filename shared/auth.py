"""Who may do what, the same way on the trainer, the evaluator and the server.

One key configuration (``LORAPLEX_KEYS``, or a mounted ``LORAPLEX_KEYS_FILE``) lists keys, each
with a name (what logs and alias history show; never the key), scopes and the adapter names it
may touch (shell patterns). :class:`Guard` is the pure-ASGI layer in front of every app: it checks
the key from the headers *before* a byte of the body is read, caps the body while it streams in,
and bounds each key's concurrent requests (429 with ``Retry-After``). Routes then check what only
the body can say (which adapter) with :meth:`Principal.require`.

With no keys at all a service is open, and :func:`check_bind` keeps it on loopback: a developer's
laptop needs no set-up, and a pod cannot be exposed by forgetting the Secret.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import ipaddress
import json
import logging
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from shared.errors import (
    AuthError,
    ConfigError,
    ForbiddenError,
    LoraplexError,
    RateLimited,
    TooLarge,
)

log = logging.getLogger(__name__)

ScopeName = Literal["infer", "read", "train", "evaluate", "promote", "admin", "metrics"]
SCOPES: tuple[str, ...] = ("infer", "read", "train", "evaluate", "promote", "admin", "metrics")
ALL = "*"
MIN_KEY_LEN = 16
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


class KeySpec(BaseModel):
    """One entry of the key configuration."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Label for logs and alias history (never the key itself).")
    key: SecretStr = Field(description=f"The bearer token, at least {MIN_KEY_LEN} characters.")
    scopes: list[ScopeName] = Field(min_length=1, description="What the key may do.")
    adapters: list[str] = Field(
        default_factory=lambda: [ALL],
        min_length=1,
        description="Adapter names (shell patterns such as 'support-*') it may touch; '*': all.",
    )
    max_concurrent: int | None = Field(
        default=None, ge=1, description="In-flight requests for this key; empty: the service's."
    )

    @field_validator("name")
    @classmethod
    def _label(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"key name {value!r} must be 1-64 letters, digits, '_', '.' or '-'")
        return value

    @field_validator("key")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < MIN_KEY_LEN:
            raise ValueError(f"a key must be at least {MIN_KEY_LEN} characters")
        return value


def load_key_file(path: Path) -> list[KeySpec]:
    """A JSON list of key entries (the shape of ``LORAPLEX_KEYS``), e.g. a mounted Secret."""
    try:
        raw = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read key file {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError(f"key file {path} is not JSON: {exc}") from None
    if not isinstance(raw, list):
        raise ConfigError(f"key file {path} must hold a JSON list of keys")
    specs = []
    for i, entry in enumerate(raw):
        try:
            specs.append(KeySpec.model_validate(entry))
        except ValueError as exc:
            raise ConfigError(f"key file {path}, entry {i}: {exc}") from None
    return specs


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: what its key allows."""

    name: str
    scopes: frozenset[str]
    adapters: tuple[str, ...] = (ALL,)
    max_concurrent: int | None = None

    def has(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes

    def may_touch(self, adapter: str) -> bool:
        return any(p == ALL or fnmatch.fnmatchcase(adapter, p) for p in self.adapters)

    def require(self, scope: str, adapter: str | None = None, *, param: str | None = None) -> None:
        """ForbiddenError unless this key has ``scope`` (and may touch ``adapter``)."""
        if not self.has(scope):
            raise ForbiddenError(f"key {self.name!r} lacks the {scope!r} scope", param=param)
        if adapter is not None and not self.may_touch(adapter):
            raise ForbiddenError(
                f"key {self.name!r} may not touch adapter {adapter!r}", param=param
            )


# What a service with no keys grants: everything, on loopback only (see check_bind).
LOCAL = Principal("local", frozenset(SCOPES))


def bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class KeyRing:
    """The configured keys, looked up in constant time by their sha256."""

    def __init__(self, entries: Iterable[tuple[str, Principal]]) -> None:
        self._entries = [(hashlib.sha256(k.encode()).digest(), p) for k, p in entries]
        names = Counter(p.name for _, p in self._entries)
        if dupes := [n for n, c in names.items() if c > 1]:
            raise ConfigError(f"key names must be unique; repeated: {', '.join(sorted(dupes))}")

    @classmethod
    def from_specs(cls, specs: Sequence[KeySpec]) -> KeyRing:
        return cls(
            (
                s.key.get_secret_value(),
                Principal(s.name, frozenset(s.scopes), tuple(s.adapters), s.max_concurrent),
            )
            for s in specs
        )

    @property
    def enabled(self) -> bool:
        return bool(self._entries)

    def authenticate(self, authorization: str | None) -> Principal:
        """The caller's principal; :data:`LOCAL` when no keys are configured."""
        if not self._entries:
            return LOCAL
        token = bearer(authorization)
        if token is None:
            raise AuthError("missing API key: send 'Authorization: Bearer <key>'")
        digest = hashlib.sha256(token.encode()).digest()
        found: Principal | None = None
        for key, principal in self._entries:  # no early exit: the same time for every key
            if hmac.compare_digest(digest, key):
                found = principal
        if found is None:
            raise AuthError("invalid API key")
        return found


def is_loopback(host: str) -> bool:
    if host in {"localhost", ""}:
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(service: str, host: str, keys: KeyRing) -> None:
    """Refuse to listen beyond loopback with no keys; say so when open on loopback."""
    if keys.enabled:
        return
    if not is_loopback(host):
        raise ConfigError(
            f"{service}: refusing to listen on {host} with no API keys: anyone who can reach it "
            "could train, evaluate or promote. Configure keys (LORAPLEX_KEYS as a JSON list of "
            '{"name", "key", "scopes", "adapters"}, or LORAPLEX_KEYS_FILE pointing to such a '
            "file; see docs/security.md), or bind 127.0.0.1",
            param="host",
        )
    log.warning(
        "%s: no API keys configured; every route is open to processes on this machine and the "
        "service listens on %s only",
        service,
        host,
    )


@dataclass(frozen=True)
class Rule:
    """Requests whose method is in ``methods`` and whose path matches ``pattern`` need ``scope``
    (any of them, when several; None: public)."""

    methods: frozenset[str]
    pattern: re.Pattern[str]
    scopes: tuple[str, ...] | None
    max_body: int | None = None  # None: the guard's default


def rule(methods: str, pattern: str, *scopes: str, max_body: int | None = None) -> Rule:
    for scope in scopes:
        if scope not in SCOPES:
            raise ValueError(f"unknown scope {scope!r}")
    return Rule(frozenset(methods.split()), re.compile(pattern + r"\Z"), scopes or None, max_body)


PUBLIC_OPS = [rule("GET HEAD", r"/(health|ready)")]
DOCS = [rule("GET HEAD", r"/(docs|redoc|openapi\.json)(/.*)?", "read")]
METRICS = [rule("GET HEAD", r"/metrics", "metrics", "read")]


ASGIApp = Callable[[dict[str, Any], Callable[[], Awaitable[dict[str, Any]]], Any], Awaitable[None]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ErrorReply = Callable[[LoraplexError], tuple[int, list[tuple[bytes, bytes]], bytes]]


def json_error_reply(exc: LoraplexError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """OpenAI's error envelope, with Retry-After on 429."""
    from shared.http import error_response_parts

    return error_response_parts(exc)


@dataclass
class Guard:
    """Authentication, scopes, body caps and per-key concurrency, before the app sees a request.

    ``rules`` are tried in order; a path no rule names still needs a valid key (any scope), so an
    unauthenticated caller learns nothing, not even which paths exist. The principal goes to
    ``scope["state"]["principal"]`` for the route's adapter-name checks.
    """

    keys: KeyRing
    rules: Sequence[Rule]
    max_body: int
    max_concurrent: int
    retry_after_s: int = 1
    reply: ErrorReply = json_error_reply
    _in_flight: Counter[str] = field(default_factory=Counter)

    def match(self, method: str, path: str) -> Rule | None:
        for r in self.rules:
            if method in r.methods and r.pattern.match(path):
                return r
        return None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Send, app: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        matched = self.match(method, path)
        try:
            principal = self._admit(scope, matched)
        except LoraplexError as exc:
            await self._send_error(send, exc)
            return
        limit = matched.max_body if matched and matched.max_body is not None else self.max_body
        length = _header(scope, b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await self._send_error(send, _too_large(limit))
            return
        cap = principal.max_concurrent or self.max_concurrent
        if self._in_flight[principal.name] >= cap:
            await self._send_error(
                send,
                RateLimited(
                    f"key {principal.name!r} has {cap} requests in flight, its limit; retry later",
                    retry_after=self.retry_after_s,
                ),
            )
            return
        scope.setdefault("state", {})["principal"] = principal
        self._in_flight[principal.name] += 1
        received = 0
        started = replied = False

        async def capped_receive() -> dict[str, Any]:
            nonlocal received, replied
            message: dict[str, Any] = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Answer now: frameworks turn errors raised while reading into their own 400.
                    if not started and not replied:
                        replied = True
                        await self._send_error(send, _too_large(limit))
                    raise _too_large(limit)
            return message

        async def watched_send(message: dict[str, Any]) -> None:
            nonlocal started
            if replied:
                return  # the 413 went out; whatever the app says after it is dropped
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await app(scope, capped_receive, watched_send)
        except TooLarge:
            if not replied:
                raise
        finally:
            self._in_flight[principal.name] -= 1
            if self._in_flight[principal.name] <= 0:
                del self._in_flight[principal.name]

    def _admit(self, scope: dict[str, Any], matched: Rule | None) -> Principal:
        if matched is not None and matched.scopes is None:
            return LOCAL if not self.keys.enabled else Principal("anonymous", frozenset())
        auth = _header(scope, b"authorization")
        principal = self.keys.authenticate(auth)
        if matched is not None and not any(principal.has(s) for s in matched.scopes or ()):
            wanted = " or ".join(repr(s) for s in matched.scopes or ())
            raise ForbiddenError(f"key {principal.name!r} lacks the {wanted} scope")
        return principal

    async def _send_error(self, send: Send, exc: LoraplexError) -> None:
        status, headers, body = self.reply(exc)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _too_large(limit: int) -> TooLarge:
    return TooLarge(f"the request body is larger than this route's limit of {limit} bytes")


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


class GuardMiddleware:
    """:class:`Guard` as Starlette middleware (``app.add_middleware(GuardMiddleware, guard=...)``)."""

    def __init__(self, app: Any, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await self.guard(scope, receive, send, self.app)


def principal_of(state: Any) -> Principal:
    """The principal the guard admitted (``request.state``); LOCAL when no guard ran (tests)."""
    found = getattr(state, "principal", None)
    return found if isinstance(found, Principal) else LOCAL
