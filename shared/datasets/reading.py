"""Reading data files (JSONL, JSON, CSV) into raw records, and collecting every problem of a file
with where it is (file, line, field). :mod:`shared.datasets.loading` turns the records into
examples.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from shared.datasets.records import Location
from shared.errors import ValidationError

MAX_LISTED_PROBLEMS = 50
FILE_FORMATS = ("jsonl", "json", "csv")
# CSV cells that hold message lists are JSON strings.
_JSON_COLUMNS = ("messages", "prompt", "completion", "chosen", "rejected", "input")


class Problems:
    """Collects every problem of a file, each prefixed with where it is."""

    def __init__(self) -> None:
        self._items: list[tuple[int, int, str]] = []

    def add(self, where: Location | str, message: str) -> None:
        line = where.line if isinstance(where, Location) else 0
        self._items.append((line, len(self._items), f"{where}: {message}"))

    @property
    def items(self) -> list[str]:
        """All problems, in file order."""
        return [text for _, _, text in sorted(self._items)]

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self, what: str, param: str | None = None) -> None:
        if not self.items:
            return
        listed = self.items[:MAX_LISTED_PROBLEMS]
        if len(self.items) > MAX_LISTED_PROBLEMS:
            listed.append(f"... and {len(self.items) - MAX_LISTED_PROBLEMS} more problems")
        first = self.items[0]
        count = len(self.items)
        raise ValidationError(
            f"{what} has {count} problem{'s' if count != 1 else ''}; first: {first}",
            param=param,
            code="invalid_file",
            details=listed,
        )


@dataclass(frozen=True)
class RawRecord:
    location: Location
    data: Any


# ----------------------------------------------------------------------------------------
def detect_file_format(name: str, head: bytes) -> str:
    suffix = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if suffix in ("jsonl", "ndjson"):
        return "jsonl"
    if suffix in FILE_FORMATS:
        return suffix
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if stripped.startswith(b"["):
        return "json"
    if stripped.startswith(b"{"):
        return "jsonl"
    return "csv"


def read_records(data: bytes, source: str, problems: Problems) -> tuple[str, list[RawRecord]]:
    """Parse a file's bytes into raw records, each with its location."""
    file_format = detect_file_format(source, data[:64])
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        problems.add(Location(source, line), f"not valid UTF-8 text (byte {exc.start})")
        return file_format, []
    if file_format == "jsonl":
        return file_format, list(_read_jsonl(text, source, problems))
    if file_format == "json":
        return file_format, _read_json(text, source, problems)
    return file_format, _read_csv(text, source, problems)


def _read_jsonl(text: str, source: str, problems: Problems) -> Iterator[RawRecord]:
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        loc = Location(source, number)
        try:
            yield RawRecord(loc, json.loads(line))
        except json.JSONDecodeError as exc:
            problems.add(loc, f"invalid JSON ({exc.msg} at column {exc.colno})")


def _read_json(text: str, source: str, problems: Problems) -> list[RawRecord]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        problems.add(
            Location(source, exc.lineno), f"invalid JSON ({exc.msg} at column {exc.colno})"
        )
        return []
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        problems.add(Location(source, 1), "a .json data file must hold a list of records")
        return []
    return [RawRecord(Location(source, i, "record"), item) for i, item in enumerate(data, start=1)]


def _read_csv(text: str, source: str, problems: Problems) -> list[RawRecord]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    records: list[RawRecord] = []
    try:
        start = 2
        for row in reader:
            loc = Location(source, start)
            start = reader.line_num + 1
            if None in row:
                problems.add(loc, "row has more cells than the header has columns")
                continue
            record: dict[str, Any] = {}
            for key, value in row.items():
                if key is None:
                    continue
                key = key.strip()
                if value is None or value == "":
                    continue
                if key in _JSON_COLUMNS and value.lstrip().startswith(("[", "{")):
                    try:
                        record[key] = json.loads(value)
                        continue
                    except json.JSONDecodeError as exc:
                        problems.add(loc, f"column `{key}` holds invalid JSON ({exc.msg})")
                        continue
                record[key] = value
            records.append(RawRecord(loc, record))
    except csv.Error as exc:
        problems.add(Location(source, reader.line_num), f"invalid CSV ({exc})")
    return records


# -- converting ---------------------------------------------------------------------------------
