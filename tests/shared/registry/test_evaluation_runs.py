"""`shared.registry.evaluation_runs`: a promotion record splits into the run's columns and joins
back in the same order."""

from __future__ import annotations

from typing import Any

import pytest

from shared.registry.evaluation_runs import promotion_columns, promotion_record
from shared.registry.models import EvaluationRunRow
from tests.shared.registry.migrations.versions.test_0003_structured_columns import (
    PENDING,
    REFUSED,
    SKIPPED,
)


@pytest.mark.parametrize("record", [PENDING, REFUSED, SKIPPED, {"state": "moved", "extra": 1}])
def test_promotion_columns_and_record_round_trip_in_order(record: dict[str, Any]) -> None:
    row = EvaluationRunRow(**promotion_columns(record))
    joined = promotion_record(row)
    assert joined == record and list(joined or {}) == list(record)
    assert (row.promotion_alias, row.promotion_state) == (record.get("alias"), record["state"])
    assert row.promotion_detail is not None and "state" not in row.promotion_detail


def test_no_promotion_is_none_in_every_column() -> None:
    row = EvaluationRunRow(**promotion_columns(None))
    assert (row.promotion_alias, row.promotion_state, row.promotion_detail) == (None, None, None)
    assert promotion_record(row) is None
