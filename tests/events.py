"""Assertions on the domain events a process logged (``shared.logs.event``), in both formats.

``records`` are captured ``LogRecord`` objects (pytest's ``caplog.records``): each event is
rendered with the text and the JSON formatter, exactly as a service would write it, and both
renderings must carry the event name and the fields asked for. ``lines`` are lines read back from a
service's log file, in either format.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any

from shared.logs import JsonFormatter, Redactor, TextFormatter, secret_values


def events(records: Iterable[logging.LogRecord], name: str) -> list[logging.LogRecord]:
    return [r for r in records if getattr(r, "event", None) == name]


def assert_event(records: Iterable[logging.LogRecord], name: str, **fields: Any) -> dict[str, Any]:
    """The first record of event ``name`` whose fields include ``fields``, checked in both forms;
    returns its JSON rendering."""
    found = events(records, name)
    assert found, f"no {name} event was logged"
    redactor = Redactor(secret_values())
    for record in found:
        data = getattr(record, "fields", {})
        if any(data.get(k) != v for k, v in fields.items()):
            continue
        redactor.filter(record)
        text = TextFormatter("test").format(record)
        doc = json.loads(JsonFormatter("test").format(record))
        assert f" {name}" in text, text
        assert doc["event"] == name and doc["service"] == "test", doc
        for key, value in fields.items():
            assert doc[key] == value, (key, doc)
            assert f"{key}=" in text, text
        return dict(doc)
    raise AssertionError(f"no {name} event with {fields}; logged: {[r.fields for r in found]}")  # type: ignore[attr-defined]


def parse_lines(text: str) -> list[dict[str, Any]]:
    """Events in a log file: JSON lines as they are, text lines as ``{"event", "raw"}``."""
    out: list[dict[str, Any]] = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
            continue
        parts = line.split(" ", 4)
        if len(parts) >= 4 and parts[1] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            out.append({"event": parts[3].rstrip(":"), "level": parts[1], "raw": line})
    return out
