"""The shipped general multiple-choice set (the forgetting check's data) is what its script builds."""

from __future__ import annotations

from collections import Counter

from services.evaluator import forgetting
from services.evaluator.tasks import build_general_mc


def test_shipped_set_is_what_the_script_builds() -> None:
    rows = build_general_mc.build()
    assert build_general_mc.OUT.read_text() == build_general_mc.render(rows)  # no drift
    assert len(rows) >= 300
    assert len({r["question"] for r in rows}) == len(rows)  # no duplicate questions
    assert len({r["id"] for r in rows}) == len(rows)
    for r in rows:
        choices = r["choices"]
        assert isinstance(choices, list) and len(set(choices)) == 4, r
    # Answer positions balanced: a model that always picks one position scores a quarter.
    counts = Counter(r["answer"] for r in rows)
    assert sorted(counts) == [0, 1, 2, 3] and max(counts.values()) - min(counts.values()) <= 1
    assert forgetting.count(build_general_mc.OUT.as_posix()) == len(rows)
