"""Which weights answered: the provenance every proxied answer carries.

Headers, on every answer (streamed or not, errors too): ``x-loraplex-adapter-version`` (the
version id, or ``base``), ``x-loraplex-adapter-sha256`` (the registry's content hash of the
adapter's files; adapters only), ``x-loraplex-base-model`` and ``x-loraplex-base-sha256`` (the
base the answer ran on and its weights hash), ``x-loraplex-model`` (the name that answered).

A successful non-streamed JSON answer also gets a ``loraplex`` field, which the OpenAI shape
allows (the SDK keeps unknown fields: ``completion.model_extra["loraplex"]``). Streamed answers
carry the headers only: they reach the client before the first event, and the events pass
through untouched (the hot path copies each one once). The field is spliced in before the body's
closing brace, so the engine's bytes are not parsed and re-encoded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from services.server.names import Target

VERSION_HEADER = "x-loraplex-adapter-version"
ADAPTER_SHA256_HEADER = "x-loraplex-adapter-sha256"
BASE_HEADER = "x-loraplex-base-model"
BASE_SHA256_HEADER = "x-loraplex-base-sha256"
MODEL_HEADER = "x-loraplex-model"
BODY_FIELD = "loraplex"
BASE_VERSION = "base"
_JSON = b"application/json"


@dataclass(frozen=True)
class Stamp:
    """The provenance of one target, encoded once: its headers and its body field."""

    headers: tuple[tuple[bytes, bytes], ...]
    field: bytes
    """``"loraplex":{...}`` to splice into a JSON object."""


class Provenance:
    """Stamps per target. Versions are immutable, so a stamp is built once per version id (the
    cache is bounded by the registered versions the server has answered for)."""

    def __init__(self, base_name: str, base_sha256: str) -> None:
        self.base_name = base_name
        self.base_sha256 = base_sha256
        self._stamps: dict[str, Stamp] = {}

    def stamp(self, target: Target) -> Stamp:
        key = target.key
        found = self._stamps.get(key)
        if found is None:
            if len(self._stamps) > 10_000:
                self._stamps.clear()
            found = self._stamps[key] = self._build(target)
        return found

    def _build(self, target: Target) -> Stamp:
        version = target.version
        info: dict[str, str]
        if version is None:
            info = {"version": BASE_VERSION, "base_model": self.base_name}
            info["base_sha256"] = self.base_sha256
        else:
            info = {
                "version": version.id,
                "sha256": version.sha256,
                "base_model": version.base_model,
                "base_sha256": version.base_model_sha256,
            }
        headers = [(VERSION_HEADER, info["version"])]
        if version is not None:
            headers.append((ADAPTER_SHA256_HEADER, version.sha256))
        headers += [
            (BASE_HEADER, info["base_model"]),
            (BASE_SHA256_HEADER, info["base_sha256"]),
            (MODEL_HEADER, version.id if version is not None else self.base_name),
        ]
        body = json.dumps({BODY_FIELD: info}, separators=(",", ":")).encode()[1:-1]
        return Stamp(tuple((k.encode(), v.encode()) for k, v in headers), body)


def add_body_field(data: bytes, content_type: bytes, field: bytes) -> bytes:
    """``data`` with ``field`` added when it is a JSON object (else unchanged). No content type
    reads as JSON, as the proxy labels such an answer."""
    if content_type and not content_type.lower().startswith(_JSON):
        return data
    body = data.rstrip()
    if not body.lstrip().startswith(b"{") or not body.endswith(b"}"):
        return data
    inner = body[:-1].rstrip()
    if inner == b"{":
        return inner + field + b"}"
    return inner + b"," + field + b"}"
