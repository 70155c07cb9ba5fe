"""Evaluation items: a prompt (chat messages) and the reference answer, from a data file.

Any format the trainer accepts works (chat, prompt/completion, Alpaca, preference: the last
assistant reply, or ``chosen``, is the reference). Two more shapes are accepted for evaluation only:
custom field names (``prompt_field`` / ``reference_field``, e.g. ``question`` / ``answer``) and
plain ``{"text": ...}`` rows, which only perplexity can use. Every problem is reported with its file
and line, all at once, before any model is loaded.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.datasets.cleaning import Cleaner
from shared.datasets.loading import Problems, RawRecord, convert_record, read_records
from shared.datasets.records import Location, Message
from shared.errors import NotFoundError, ValidationError


@dataclass(frozen=True)
class EvalItem:
    item_id: str
    messages: tuple[Message, ...]
    reference: str
    location: str
    raw: dict[str, Any] = field(default_factory=dict)
    rejected: str | None = None

    @property
    def is_text(self) -> bool:
        """A plain-text item (no prompt): perplexity only."""
        return not self.messages

    @property
    def prompt_text(self) -> str:
        return "\n".join(m.content for m in self.messages if m.role == "user")

    @property
    def item_hash(self) -> str:
        payload = {"m": [[m.role, m.content] for m in self.messages], "r": self.reference}
        return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode()).hexdigest()

    def prompt_dicts(self) -> list[dict[str, str]]:
        return [m.to_dict() for m in self.messages]


@dataclass(frozen=True)
class EvalData:
    source: str
    sha256: str
    items: list[EvalItem]
    # What cleaning changed in the reference answers (shared.datasets.cleaning.Cleaner.report()).
    cleaning: dict[str, Any] = field(default_factory=dict)

    @property
    def has_prompts(self) -> bool:
        return all(not i.is_text for i in self.items)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "source": self.source,
            "sha256": self.sha256,
            "n_items": len(self.items),
        }
        if self.cleaning:
            out["cleaning"] = self.cleaning
        return out


# Fields that hold the reference when ``messages`` ends with the user turn (the held-out test format).
REFERENCE_FIELDS = ("expected", "reference", "answer")


def _as_text(value: Any) -> str:
    """References may be structured (a JSON object); they are compared as the model writes them."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _item_id(raw: RawRecord) -> str:
    data = raw.data if isinstance(raw.data, dict) else {}
    given = data.get("id")
    if isinstance(given, str | int) and str(given):
        return str(given)
    return f"{raw.location.unit}-{raw.location.line}"


def _remap(
    raw: RawRecord, prompt_field: str, reference_field: str, problems: Problems
) -> RawRecord | None:
    data = raw.data
    if not isinstance(data, dict):
        problems.add(raw.location, "each record must be a JSON object")
        return None
    missing = [f for f in (prompt_field, reference_field) if data.get(f) in (None, "")]
    for name in missing:
        kind = "reference" if name == reference_field else "prompt"
        problems.add(raw.location, f"missing {kind} field `{name}`")
    if missing:
        return None
    return RawRecord(
        raw.location,
        {"prompt": data[prompt_field], "completion": _as_text(data[reference_field])},
    )


def parse_items(
    data: bytes,
    source: str,
    *,
    prompt_field: str | None = None,
    reference_field: str | None = None,
    limit: int | None = None,
    cleaner: Cleaner | None = None,
) -> list[EvalItem]:
    """The file's items; ``cleaner`` cleans them and counts what it changed in the references."""
    problems = Problems()
    cleaner = cleaner or Cleaner()
    _fmt, records = read_records(data, source, problems)
    if not records and not problems:
        problems.add(Location(source, 1), "the file holds no records")
    items: list[EvalItem] = []
    seen: dict[str, Location] = {}
    for raw in records:
        if limit is not None and len(items) >= limit:
            break
        body = raw.data if isinstance(raw.data, dict) else {}
        item_id = _item_id(raw)
        if item_id in seen:
            problems.add(raw.location, f"duplicate item id {item_id!r} (first at {seen[item_id]})")
            continue
        seen[item_id] = raw.location
        if reference_field or prompt_field:
            mapped = _remap(
                raw, prompt_field or "prompt", reference_field or "completion", problems
            )
            if mapped is None:
                continue
            raw = mapped
        elif set(body) <= {"text", "id", "meta", "metadata"} and isinstance(body.get("text"), str):
            if not body["text"].strip():
                problems.add(raw.location, "`text` is empty")
                continue
            items.append(EvalItem(item_id, (), body["text"], str(raw.location), body))
            continue
        elif "messages" in body and isinstance(body["messages"], list):
            last = body["messages"][-1] if body["messages"] else None
            if not isinstance(last, dict) or last.get("role") != "assistant":
                ref_key = next((k for k in REFERENCE_FIELDS if body.get(k) not in (None, "")), None)
                if ref_key is None:
                    problems.add(
                        raw.location,
                        "missing reference: end `messages` with the assistant's reference answer "
                        f"or add one of the fields {', '.join(REFERENCE_FIELDS)}",
                    )
                    continue
                raw = RawRecord(
                    raw.location,
                    {
                        "messages": [
                            *body["messages"],
                            {"role": "assistant", "content": _as_text(body[ref_key])},
                        ]
                    },
                )
        elif "prompt" in body and not ({"completion", "chosen"} & set(body)):
            problems.add(raw.location, "missing reference field `completion`")
            continue
        example = convert_record(raw, problems, cleaner)
        if example is None:
            continue
        if example.chosen is not None:
            items.append(
                EvalItem(
                    item_id,
                    example.messages,
                    example.chosen,
                    str(raw.location),
                    body,
                    rejected=example.rejected,
                )
            )
            continue
        msgs = list(example.messages)
        items.append(EvalItem(item_id, tuple(msgs[:-1]), msgs[-1].content, str(raw.location), body))
    problems.raise_if_any(f"evaluation data {source}", param="data")
    return items


def load_data(
    path: str | Path,
    *,
    prompt_field: str | None = None,
    reference_field: str | None = None,
    limit: int | None = None,
    source: str | None = None,
    keep_markup: bool = False,
) -> EvalData:
    p = Path(path)
    if not p.is_file():
        raise NotFoundError(f"evaluation data file {p} does not exist", param="data")
    raw = p.read_bytes()
    cleaner = Cleaner(keep_markup=keep_markup)
    items = parse_items(
        raw,
        source or p.name,
        prompt_field=prompt_field,
        reference_field=reference_field,
        limit=limit,
        cleaner=cleaner,
    )
    if not items:
        raise ValidationError(f"evaluation data {p} holds no usable items", param="data")
    return EvalData(str(p), hashlib.sha256(raw).hexdigest(), items, cleaner.report())
