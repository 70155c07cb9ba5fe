"""Process logging for every loraplex command: one line per domain event, text or JSON, no secrets.

``configure(service)`` installs one handler on the root logger (replacing any earlier one, so a
library's ``basicConfig`` cannot leave the process silent) that writes to stderr:

- ``LORAPLEX_LOG_FORMAT=text`` (default): ``2026-12-02T05:06:07Z INFO trainer job.claimed
  job=ftjob-1 attempt=1``, easy to read and to grep;
- ``LORAPLEX_LOG_FORMAT=json``: one object per line with ``ts``, ``level``, ``service``,
  ``logger``, ``event`` and the event's fields, the shape Kubernetes log collectors expect.

``event(log, "job.claimed", job="ftjob-1", attempt=1)`` is how a domain event is logged: a stable
dotted name and the ids involved as fields. Plain ``log.info("...")`` lines still work and get the
event name ``log``.

Every line passes through a redaction filter: the values of secret settings present in the
environment (``LORAPLEX_*KEY*``, ``*TOKEN*``, ``*PASSWORD*``, ``*SECRET*``) and the password part
of any URL are replaced by ``***`` before anything is written.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

FORMATS = ("text", "json")
_SECRET_NAME = re.compile(r"(KEY|TOKEN|PASSWORD|SECRET)", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.\-]*://[^/\s:@]+:)(?P<pw>[^@\s/]+)(?=@)")
MASK = "***"
# Secrets shorter than this are not searched for: masking "1" would mangle every number.
_MIN_SECRET_LEN = 4


def mask_url(url: str) -> str:
    """``postgresql://user:pw@host/db`` -> ``postgresql://user:***@host/db``."""
    return _URL_PASSWORD.sub(lambda m: m.group("head") + MASK, url)


def _embedded_keys(value: str) -> list[str]:
    """Keys inside a JSON key table: ``{"<key>": [...]}`` (LORAPLEX_API_KEYS) or
    ``[{"key": "<key>", ...}]`` (LORAPLEX_KEYS)."""
    if not value.lstrip().startswith(("{", "[")):
        return []
    try:
        table = json.loads(value)
    except ValueError:
        return []
    if isinstance(table, dict):
        found = list(table)
    elif isinstance(table, list):
        found = [e.get("key") for e in table if isinstance(e, dict)]
    else:
        found = []
    return [k for k in found if isinstance(k, str) and len(k) >= _MIN_SECRET_LEN]


def secret_values(environ: dict[str, str] | None = None) -> list[str]:
    """The values of secret-looking LORAPLEX_* settings (and AWS/HF credentials) in ``environ``."""
    env = os.environ if environ is None else environ
    out = []
    for name, value in env.items():
        if not value or len(value) < _MIN_SECRET_LEN:
            continue
        if name.startswith(("LORAPLEX_", "AWS_", "HF_")) and _SECRET_NAME.search(name):
            out.append(value)
            if name.endswith("_FILE") and not value.lstrip().startswith(("{", "[")):
                try:  # a mounted key file such as LORAPLEX_KEYS_FILE: mask what it holds
                    value = Path(value).read_text()
                except OSError:
                    continue
            out.extend(_embedded_keys(value))
    # Longest first, so a secret that contains another is masked whole.
    return sorted(set(out), key=len, reverse=True)


class Redactor(logging.Filter):
    """Masks known secret values and URL passwords in the message and in every field."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if len(s) >= _MIN_SECRET_LEN]

    def clean(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return mask_url(text) if "://" in text else text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed call must not raise where it logs
            message = f"{record.msg!r} {record.args!r}"
        message = self.clean(message)
        record.msg, record.args = message, None
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            record.fields = {k: self._value(v) for k, v in fields.items()}
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.clean(record.exc_text)
        return True

    def _value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.clean(value)
        if isinstance(value, list | tuple):
            return [self._value(v) for v in value]
        if isinstance(value, dict):
            return {k: self._value(v) for k, v in value.items()}
        return value


def _utc(created: float) -> str:
    ms = int((created % 1) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{ms:03d}Z"


def _text_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, str):
        return value if value and not re.search(r"[\s=\"]", value) else json.dumps(value)
    return json.dumps(value, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        name = getattr(record, "event", None)
        fields = getattr(record, "fields", None) or {}
        head = f"{_utc(record.created)} {record.levelname} {self.service}"
        if name:
            body = " ".join([name, *(f"{k}={_text_value(v)}" for k, v in fields.items())])
        else:
            body = f"{record.name}: {record.getMessage()}"
        if record.exc_text:
            body += "\n" + record.exc_text
        return f"{head} {body}"


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": _utc(record.created),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "event": getattr(record, "event", None) or "log",
            "message": record.getMessage(),
        }
        for key, value in (getattr(record, "fields", None) or {}).items():
            doc.setdefault(key, value)
        if record.exc_text:
            doc["exception"] = record.exc_text
        return json.dumps(doc, default=str, ensure_ascii=False)


def log_format() -> str:
    value = os.environ.get("LORAPLEX_LOG_FORMAT", "text").strip().lower() or "text"
    if value not in FORMATS:
        from shared.errors import ConfigError

        raise ConfigError(
            f"LORAPLEX_LOG_FORMAT must be one of {', '.join(FORMATS)}, got {value!r}",
            param="LORAPLEX_LOG_FORMAT",
        )
    return value


def configure(service: str, level: str | None = None, *, fmt: str | None = None) -> None:
    """Route every logger of this process through one redacting handler on stderr."""
    chosen = fmt or log_format()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service) if chosen == "json" else TextFormatter(service))
    handler.addFilter(Redactor(secret_values()))
    level_name = (level or os.environ.get("LORAPLEX_LOG_LEVEL") or "INFO").upper()
    logging.basicConfig(level=level_name, handlers=[handler], force=True)
    # Libraries that log every HTTP call or every weight file would drown the domain events.
    for noisy in ("httpx", "httpcore", "urllib3", "filelock", "asyncio", "multipart", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log the domain event ``name`` with its ids and figures as structured fields."""
    if not logger.isEnabledFor(level):
        return
    text = " ".join([name, *(f"{k}={_text_value(v)}" for k, v in fields.items())])
    logger.log(level, "%s", text, extra={"event": name, "fields": fields})
