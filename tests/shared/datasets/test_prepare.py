"""`shared.datasets.prepare`: duplicates dropped or reported, and the seeded validation split."""

from __future__ import annotations

from shared.datasets import near_duplicates, parse_file, split_validation
from shared.datasets.prepare import drop_exact_duplicates
from tests.shared.datasets.test_loading import jsonl


def test_exact_duplicates_dropped_and_near_duplicates_reported() -> None:
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"order {i} of the blue shirts please now"},
                {"role": "assistant", "content": "ok"},
            ]
        }
        for i in range(3)
    ]
    rows.append(rows[0])
    loaded, _ = parse_file(jsonl(*rows), "d.jsonl")
    dedup = drop_exact_duplicates(loaded.examples)
    assert len(dedup.kept) == 3
    assert dedup.duplicates == [("d.jsonl:4", "d.jsonl:1")]
    pairs = near_duplicates(
        [
            "the quick brown fox jumps over the lazy dog today",
            "the quick brown fox jumps over the lazy dog today!",
            "completely different words here for sure",
        ],
        threshold=0.8,
    )
    assert [(p.a, p.b) for p in pairs] == [(0, 1)]


def test_validation_split_is_seeded_and_keeps_groups_together() -> None:
    loaded, _ = parse_file(
        jsonl(*[{"prompt": f"question number {i}", "completion": "a"} for i in range(50)]),
        "d.jsonl",
    )
    ex = loaded.examples
    train1, val1 = split_validation(ex, 0.1, seed=1)
    _, val2 = split_validation(ex, 0.1, seed=1)
    _, val3 = split_validation(ex, 0.1, seed=2)
    assert [e.id for e in val1] == [e.id for e in val2] and len(val1) == 5
    assert {e.id for e in val1} != {e.id for e in val3}
    assert not {e.id for e in train1} & {e.id for e in val1}
    groups = [i // 10 for i in range(50)]  # five clusters of ten
    train, val = split_validation(ex, 0.1, seed=3, groups=groups)
    val_groups = {groups[ex.index(e)] for e in val}
    assert all(groups[ex.index(e)] not in val_groups for e in train)
