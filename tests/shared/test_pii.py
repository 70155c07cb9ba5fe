"""PII detectors: precision and recall per kind on the labelled set (with floors), redaction,
canonical forms, and linear time on crafted input (the checksums each detector relies on are in
test_pii_checks.py).

The labelled set (``tests/shared/data/pii_labelled.jsonl``) holds true PII next to hard
negatives; its labels were written by hand with each line (checksummed values computed by a
generator, never by these detectors). ``bench/pii_detect.py`` records the same figures in
docs/benchmarks.md.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from bench.pii_detect import load, measure
from shared.pii import (
    KINDS,
    Finding,
    canonical,
    detect,
    redact,
)

# Floors per kind on the whole set (dev + held-out lines); measured figures are in
# docs/benchmarks.md. Names are a heuristic: lower floors, stated as such.
FLOORS: dict[str, tuple[float, float]] = {
    "email": (0.95, 0.9),
    "card": (0.95, 0.95),
    "iban": (0.95, 0.95),
    "national_id": (0.95, 0.95),
    "phone": (0.9, 0.9),
    "ip_address": (0.9, 0.9),
    "person_name": (0.85, 0.75),
}


def test_the_labelled_set_is_big_and_covers_every_kind() -> None:
    rows = load()
    assert len(rows) >= 150
    labelled = {label["kind"] for row in rows for label in row["pii"]}
    assert labelled == set(KINDS)
    assert sum(1 for row in rows if not row["pii"]) >= 60  # hard negatives and clean lines


@pytest.mark.parametrize("kind", KINDS)
def test_precision_and_recall_meet_their_floors(kind: str) -> None:
    counts = measure(load())[kind]
    precision_floor, recall_floor = FLOORS[kind]
    assert counts.gold >= 10
    assert counts.precision >= precision_floor, counts.false_alarms
    assert counts.recall >= recall_floor, counts.misses


def test_the_measure_counts_misses_and_false_alarms() -> None:
    # Control: a set whose labels disagree with the detectors scores below every floor.
    rows: list[dict[str, Any]] = [
        {"text": "write to jane.doe@gmail.com", "pii": []},
        {
            "text": "order 4111 1111 1111 1112",
            "pii": [{"kind": "card", "text": "4111 1111 1111 1112"}],
        },
    ]
    counts = measure(rows)
    assert counts["email"].precision == 0.0 and counts["email"].fp == 1
    assert counts["card"].recall == 0.0 and counts["card"].fn == 1


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("card 4111 1111 1111 1111 ok", "card"),
        ("IBAN DE89 3704 0044 0532 0130 00 THANKS", "iban"),
        ("ssn 536-22-1234", "national_id"),
        ("peer 8.8.8.8 connected", "ip_address"),
    ],
)
def test_a_checked_digit_changed_is_no_longer_pii(text: str, kind: str) -> None:
    assert [f.kind for f in detect(text)] == [kind]
    broken = {
        "card": text.replace("1111 ok", "1112 ok"),
        "iban": text.replace("00 THANKS", "01 THANKS"),
        "national_id": text.replace("536", "666"),
        "ip_address": text.replace("8.8.8.8", "10.8.8.8"),
    }[kind]
    assert detect(broken) == []


def test_overlaps_go_to_the_earlier_kind() -> None:
    found = detect("pay 4111-1111-1111-1111 now")
    assert [(f.kind, f.text) for f in found] == [("card", "4111-1111-1111-1111")]


def test_redaction_leaves_nothing_detectable() -> None:
    for row in load():
        redacted, found = redact(row["text"])
        assert detect(redacted) == [], (row["text"], redacted)
        assert len(found) == sum(redacted.count(f"[{k}]") for k in ("EMAIL", "CARD", "IBAN",
            "NATIONAL_ID", "PHONE", "IP", "NAME"))  # fmt: skip
    text, found = redact("mail jane.doe@gmail.com or call +44 20 7946 0958")
    assert text == "mail [EMAIL] or call [PHONE]" and [f.kind for f in found] == ["email", "phone"]


def test_kinds_can_be_chosen_and_unknown_ones_are_refused() -> None:
    text = "jane.doe@gmail.com from 8.8.8.8"
    assert [f.kind for f in detect(text, ["ip_address"])] == ["ip_address"]
    with pytest.raises(ValueError, match="unknown PII kinds"):
        detect(text, ["dna"])


def test_canonical_forms_match_the_same_pii_written_differently() -> None:
    def one(text: str) -> Finding:
        (found,) = detect(text)
        return found

    assert canonical(one("call +1 (555) 234-5678")) == canonical(one("call 555-234-5678"))
    assert canonical(one("call +44 20 7946 0958")) == canonical(one("call 020 7946 0958"))
    assert canonical(one("Jane.Doe@Gmail.com")) == canonical(one("jane.doe@gmail.com"))
    assert canonical(one("DE89 3704 0044 0532 0130 00")) == canonical(one("DE89370400440532013000"))
    assert canonical(one("at 2001:4860:4860:0:0:0:0:8888")) == canonical(
        one("at 2001:4860:4860::8888")
    )
    assert canonical(one("call 555-234-5678")) != canonical(one("call 555-234-5679"))


@pytest.mark.parametrize(
    "crafted",
    [
        "1 " * 40_000,
        "a@" * 40_000,
        "a." * 40_000 + "@",
        "+1 " * 30_000,
        "DE89 " * 20_000,
        "Dear " + "Ab " * 30_000,
        "1:" * 40_000,
        "4" * 80_000,
    ],
)
def test_crafted_input_scans_in_linear_time(crafted: str) -> None:
    # 80k characters: a quadratic pattern would take minutes here, a linear one well under 10 s
    # even on a busy 2-core machine.
    start = time.perf_counter()
    detect(crafted)
    assert time.perf_counter() - start < 10
