"""PII in training data: where it is (file, line, field, kind), and the data with it redacted.

The scan runs on the cleaned text of each example, which is what the model trains on, with the
detectors of :mod:`shared.pii`. A finding records where the PII is and its kind, never the text:
reports, job events, logs and adapter manifests may be read by people who must not see it.

What a job does with findings is its ``data.pii`` setting (:data:`ACTIONS`): ``report`` lists
them, ``redact`` trains on the text with each finding replaced by its placeholder (``[EMAIL]``),
``refuse`` fails validation naming each one.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from shared.datasets.records import Example, Location
from shared.pii import KINDS, detect, redact

PiiAction = Literal["report", "redact", "refuse"]
ACTIONS: tuple[PiiAction, ...] = ("report", "redact", "refuse")
MAX_LISTED = 50


@dataclass(frozen=True)
class PiiFinding:
    location: Location
    field: str
    kind: str

    def __str__(self) -> str:
        return f"{self.location}, field `{self.field}`: {self.kind}"

    def to_dict(self) -> dict[str, Any]:
        return {"line": self.location.line, "field": self.field, "kind": self.kind}


def _prompt_fields(count: int, prefix: str) -> list[str]:
    """Field names of ``count`` prompt messages: ``prompt`` for a one-message prompt (given as a
    string or a one-message list), else ``prompt[i].content``. A preference record without
    ``prompt`` (whole ``chosen``/``rejected`` conversations) is named as if it had one."""
    if count == 1:
        return [prefix]
    return [f"{prefix}[{i}].content" for i in range(count)]


def example_fields(example: Example) -> list[str]:
    """The record field each of the example's messages came from, in message order (the
    ``chosen``/``rejected`` replies follow)."""
    fmt, msgs = example.format, example.messages
    if fmt in (
        "chat",
        "prompt",
    ):  # a prompt record's own fields (graders read them) are not scanned
        return [f"messages[{i}].content" for i in range(len(msgs))]
    if fmt == "alpaca":
        # The user turn is the instruction with the optional input after it.
        return [
            {"system": "system", "user": "instruction/input"}.get(m.role, "output") for m in msgs
        ]
    if fmt == "prompt_completion":
        return [*_prompt_fields(len(msgs) - 1, "prompt"), "completion"]
    if fmt == "openai_preference":
        names = [f"input.messages[{i}].content" for i in range(len(msgs))]
        return [*names, "preferred_output", "non_preferred_output"]
    return [*_prompt_fields(len(msgs), "prompt"), "chosen", "rejected"]


def _texts(example: Example) -> list[tuple[str, str]]:
    """(field, text) of everything the example trains on."""
    texts = [m.content for m in example.messages]
    texts += [t for t in (example.chosen, example.rejected) if t is not None]
    return list(zip(example_fields(example), texts, strict=True))


def scan_examples(
    examples: Iterable[Example], kinds: Sequence[str] | None = None
) -> list[PiiFinding]:
    """Every finding, in file order, one per PII span."""
    out: list[PiiFinding] = []
    for example in examples:
        for field, text in _texts(example):
            out.extend(PiiFinding(example.location, field, f.kind) for f in detect(text, kinds))
    return out


def pii_report(findings: Sequence[PiiFinding], action: PiiAction | None = None) -> dict[str, Any]:
    """Counts per kind and the first findings (line, field, kind; no PII text)."""
    kinds = Counter(f.kind for f in findings)
    report: dict[str, Any] = {
        "count": len(findings),
        "kinds": {k: kinds[k] for k in KINDS if kinds[k]},
        "examples": len({(f.location.source, f.location.line) for f in findings}),
        "findings": [f.to_dict() | {"file": f.location.source} for f in findings[:MAX_LISTED]],
        "complete_list": len(findings) <= MAX_LISTED,
    }
    if action is not None:
        report["action"] = action
    return report


def describe_kinds(findings: Sequence[PiiFinding]) -> str:
    """``email 2, phone 1``: what a message about findings may say."""
    kinds = Counter(f.kind for f in findings)
    return ", ".join(f"{k} {kinds[k]}" for k in KINDS if kinds[k])


def _redacted_text(text: str, kinds: Sequence[str] | None) -> str:
    return redact(text, kinds)[0]


def redact_examples(
    examples: Sequence[Example], kinds: Sequence[str] | None = None
) -> tuple[list[Example], list[PiiFinding]]:
    """The examples with every finding replaced by its placeholder, and the findings."""
    findings = scan_examples(examples, kinds)
    if not findings:
        return list(examples), findings
    out: list[Example] = []
    for example in examples:
        messages = tuple(
            dataclasses.replace(m, content=_redacted_text(m.content, kinds))
            for m in example.messages
        )
        chosen, rejected = (
            None if t is None else _redacted_text(t, kinds)
            for t in (example.chosen, example.rejected)
        )
        out.append(
            dataclasses.replace(example, messages=messages, chosen=chosen, rejected=rejected)
        )
    return out, findings


__all__ = [
    "ACTIONS",
    "PiiAction",
    "PiiFinding",
    "describe_kinds",
    "example_fields",
    "pii_report",
    "redact_examples",
    "scan_examples",
]


def pii_step(
    train: list[Example],
    validation: list[Example],
    action: PiiAction,
    kinds: Sequence[str] | None,
    errors: list[str],
    warnings: list[str],
    *,
    max_ids: int,
) -> tuple[list[Example], list[Example], dict[str, Any]]:
    """Scan (and for ``redact`` rewrite) both sides of a split; for ``refuse`` the errors name
    each finding (the first ``max_ids``), otherwise a warning says what was found and done."""
    found: list[PiiFinding] = []
    if action == "redact":
        train, found_train = redact_examples(train, kinds)
        validation, found_val = redact_examples(validation, kinds)
        found = found_train + found_val
    else:
        found = scan_examples([*train, *validation], kinds)
    found.sort(key=lambda f: (f.location.source, f.location.line))
    section = pii_report(found, action)
    if not found:
        return train, validation, section
    summary = (
        f"{len(found)} PII span(s) ({describe_kinds(found)}) in {section['examples']} example(s)"
    )
    if action == "refuse":
        errors.extend(f"{f}: PII, and data.pii is 'refuse'" for f in found[:max_ids])
        if len(found) > max_ids:
            errors.append(f"... {summary} in all")
    elif action == "redact":
        warnings.append(f"{summary} replaced by placeholders such as [EMAIL] before training")
    else:
        warnings.append(
            f"{summary} are trained on as they are (data.pii 'report'; 'redact' replaces them, "
            "'refuse' fails the job); the report's pii.findings names file, line and field"
        )
    return train, validation, section
