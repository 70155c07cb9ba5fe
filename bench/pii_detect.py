"""Precision and recall of the PII detectors (``shared/pii.py``) per kind, on the labelled set
``tests/shared/data/pii_labelled.jsonl`` (true PII next to hard negatives: Luhn-failing order
numbers, version strings shaped like IPs, dates and ISBNs shaped like phone numbers, documentation
domains and private address ranges), plus the scanning speed on that text.

A detected span counts as a true positive when a labelled span of the same kind overlaps it; a
labelled span nobody detected is a false negative. The set was written alongside the detectors,
so the ``dev`` lines (``split``) are an upper bound of what they reach on real data; the
``heldout`` lines were written after the detectors were frozen and never tuned against, and are
reported apart (they are few: 30 lines, so read them as a rough check, names most of all).

    python bench/pii_detect.py
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.pii import KINDS, detect

LABELLED = Path(__file__).resolve().parents[1] / "tests" / "shared" / "data" / "pii_labelled.jsonl"


@dataclass
class Counts:
    tp: int = 0  # detected spans that overlap a labelled one of their kind
    fp: int = 0
    fn: int = 0  # labelled spans no detection of their kind overlaps
    gold: int = 0
    misses: list[str] = field(default_factory=list)
    false_alarms: list[str] = field(default_factory=list)

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return (self.gold - self.fn) / self.gold if self.gold else 1.0


def load(path: Path = LABELLED) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def measure(rows: list[dict[str, Any]]) -> dict[str, Counts]:
    counts: dict[str, Counts] = {kind: Counts() for kind in KINDS}
    for row in rows:
        text: str = row["text"]
        gold = []
        for label in row["pii"]:
            start = text.index(label["text"])
            gold.append((label["kind"], start, start + len(label["text"])))
        found = detect(text)
        for f in found:
            hit = any(k == f.kind and s < f.end and f.start < e for k, s, e in gold)
            c = counts[f.kind]
            if hit:
                c.tp += 1
            else:
                c.fp += 1
                c.false_alarms.append(f"{f.text!r} in {text!r}")
        for kind, s, e in gold:
            c = counts[kind]
            c.gold += 1
            if not any(f.kind == kind and f.start < e and s < f.end for f in found):
                c.fn += 1
                c.misses.append(f"{text[s:e]!r} in {text!r}")
    return counts


def main() -> None:
    from _report import record

    rows = load()
    counts = measure(rows)
    held = measure([r for r in rows if r.get("split") == "heldout"])
    text = "\n".join(r["text"] for r in rows) * 200
    start = time.perf_counter()
    detect(text)
    seconds = time.perf_counter() - start
    figures: dict[str, Any] = {
        "lines": len(rows),
        "labelled_spans": sum(c.gold for c in counts.values()),
    }
    for kind, c in counts.items():
        figures[f"{kind} precision"] = round(c.precision, 3)
        figures[f"{kind} recall"] = round(c.recall, 3)
        figures[f"{kind} spans (tp/fp/fn)"] = f"{c.tp}/{c.fp}/{c.fn}"
        h = held[kind]
        figures[f"{kind} held-out precision / recall"] = (
            f"{h.precision:.3f} / {h.recall:.3f} ({h.gold} spans)"
        )
    figures["scan MB/s (all detectors)"] = round(len(text.encode()) / 1e6 / seconds, 2)
    figures["held-out lines"] = sum(1 for r in rows if r.get("split") == "heldout")
    misses = [m for c in counts.values() for m in c.misses]
    alarms = [m for c in counts.values() for m in c.false_alarms]
    record(
        "pii_detect",
        title="PII detectors: precision and recall per kind on the labelled set",
        baseline="the labelled set's own spans (tests/shared/data/pii_labelled.jsonl)",
        figures=figures,
        ratios={},
        targets={},
        notes=(
            "Floors checked by tests/shared/test_pii.py. The set was written with the detectors, "
            "so these are upper bounds; person names are a heuristic (title, cue or a listed "
            "given name before a capitalised word) and miss names without that context.\n\n"
            f"Misses: {'; '.join(misses) or 'none'}.\n\n"
            f"False alarms: {'; '.join(alarms) or 'none'}."
        ),
    )


if __name__ == "__main__":
    main()
