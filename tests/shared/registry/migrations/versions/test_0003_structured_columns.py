"""Revision 0003 on SQLite and PostgreSQL: rows stored in 0002's JSON shape are back-filled into the
new columns with nothing lost, and the downgrade gives back exactly the JSON that was there."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command

from shared.registry.db import Registry, alembic_config
from shared.registry.evaluation_runs import promotion_record
from shared.registry.models import EvaluationRunRow, ItemRecordRow, MetricResultRow
from shared.settings import SharedSettings

# 0002's shapes, as the evaluator wrote them (key order included: the API and CLI print them).
REQUEST = {"candidate": "shop@v2", "baseline": "shop:prod", "limit": 8}
PENDING = {
    "alias": "shop:prod",
    "adapter": "shop",
    "name": "prod",
    "to": "shop@v2",
    "from": "shop@v1",
    "moved": False,
    "state": "pending",
    "reason": "gate pass (policy 0123456789ab)",
}
REFUSED = {
    **PENDING,
    "state": "refused",
    "error": "alias shop:prod moved meanwhile",
    "code": "conflict",
}
SKIPPED = {
    "alias": "shop:canary",
    "adapter": "shop",
    "name": "canary",
    "to": "shop@v2",
    "from": None,
    "moved": False,
    "state": "skipped",
    "why": "gate decision is fail; nothing moves",
}
RUNS: dict[str, dict[str, Any]] = {
    # A stored pass whose move is pending, queued by a key, stopped mid-stage once.
    "run-pending": {
        "config": {
            "requested_by": "ci-key",
            "request": REQUEST,
            "plan": {"items": 8},
            "released": 1,
            "stage": "generate (candidate)",
        },
        "promotion": PENDING,
    },
    # A CLI run (requested_by ""), refused move, no stage recorded.
    "run-refused": {
        "config": {"requested_by": "", "request": REQUEST, "plan": None},
        "promotion": REFUSED,
    },
    "run-skipped": {"config": {"requested_by": "k", "request": REQUEST}, "promotion": SKIPPED},
    # From before requested_by was kept, with no promotion at all.
    "run-old": {"config": {"request": REQUEST}, "promotion": None},
}
META = {
    "model": "shop@v2",
    "n": 8,
    "ci": [0.61, 0.83],
    "kind": "binary",
    "higher_is_better": True,
    "statistic": "mean",
    "error": None,
}
METRICS: dict[str, dict[str, Any]] = {
    "exact_match": {"value": 0.75, "settings": {"normalise": True, "_meta": META}},
    # Falsy values must survive: 0 items, lower is better, no CI, an error.
    "token_f1": {
        "value": None,
        "settings": {
            "_meta": {
                **META,
                "n": 0,
                "ci": [None, None],
                "kind": "continuous",
                "higher_is_better": False,
                "error": "value is NaN",
            }
        },
    },
    # A key 0003 does not know stays in settings["_meta"].
    "chrf": {"value": 0.5, "settings": {"order": 6, "_meta": {**META, "weight": 2}}},
    "bleu": {"value": 0.25, "settings": {"order": 4}},  # no _meta at all
}
ITEMS: dict[str, dict[str, Any]] = {
    "i1": {"exact_match": 1.0, "_extra": {"judge_pair": [1.0, 0.5]}},
    "i2": {"exact_match": 0.0},
}

runs_t = sa.table(
    "evaluation_runs",
    sa.column("id", sa.String),
    sa.column("status", sa.String),
    sa.column("candidate", sa.String),
    sa.column("config", sa.JSON),
    sa.column("summary", sa.JSON),
    sa.column("progress", sa.Float),
    sa.column("created_at", sa.DateTime(timezone=True)),
    sa.column("promotion", sa.JSON),
)
metrics_t = sa.table(
    "metric_results",
    sa.column("run_id", sa.String),
    sa.column("subject", sa.String),
    sa.column("name", sa.String),
    sa.column("value", sa.Float),
    sa.column("settings", sa.JSON),
)
items_t = sa.table(
    "item_records",
    sa.column("run_id", sa.String),
    sa.column("subject", sa.String),
    sa.column("item_id", sa.String),
    sa.column("item_hash", sa.String),
    sa.column("output", sa.Text),
    sa.column("values", sa.JSON),
)


def _seed_0002(engine: sa.Engine) -> None:
    now = datetime(2026, 12, 1, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(
            runs_t.insert(),
            [
                {
                    "id": run_id,
                    "status": "succeeded",
                    "candidate": "shop@v2",
                    "config": run["config"],
                    "summary": {},
                    "progress": 1.0,
                    "created_at": now,
                    "promotion": run["promotion"],
                }
                for run_id, run in RUNS.items()
            ],
        )
        conn.execute(
            metrics_t.insert(),
            [
                {"run_id": "run-pending", "subject": "candidate", "name": name, **metric}
                for name, metric in METRICS.items()
            ],
        )
        conn.execute(
            items_t.insert(),
            [
                {
                    "run_id": "run-pending",
                    "subject": "candidate",
                    "item_id": item_id,
                    "item_hash": "0" * 64,
                    "output": "{}",
                    "values": values,
                }
                for item_id, values in ITEMS.items()
            ],
        )


def _json_0002(engine: sa.Engine) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The JSON bags as 0002 keeps them: runs (config, promotion), metric settings, item values."""
    with engine.connect() as conn:
        runs = {
            r.id: {"config": r.config, "promotion": r.promotion}
            for r in conn.execute(sa.select(runs_t.c.id, runs_t.c.config, runs_t.c.promotion))
        }
        metrics = {
            r.name: {"value": r.value, "settings": r.settings}
            for r in conn.execute(
                sa.select(metrics_t.c.name, metrics_t.c.value, metrics_t.c.settings)
            )
        }
        items = {
            r.item_id: r.values
            for r in conn.execute(sa.select(items_t.c.item_id, items_t.c["values"]))
        }
    return runs, metrics, items


@pytest.fixture
def at_0002(registry_settings: SharedSettings) -> Registry:
    command.upgrade(alembic_config(registry_settings.database_url), "0002")
    registry = Registry(registry_settings.database_url)
    _seed_0002(registry.engine)
    return registry


def test_upgrade_back_fills_the_columns_and_downgrade_restores_the_json(
    at_0002: Registry, registry_settings: SharedSettings
) -> None:
    config = alembic_config(registry_settings.database_url)
    try:
        command.upgrade(config, "head")
        with at_0002.read_session() as s:
            runs = {r.id: r for r in s.scalars(sa.select(EvaluationRunRow))}
            metrics = {m.name: m for m in s.scalars(sa.select(MetricResultRow))}
            items = {i.item_id: i for i in s.scalars(sa.select(ItemRecordRow))}
            pending = s.scalars(
                sa.select(EvaluationRunRow.id).where(EvaluationRunRow.promotion_state == "pending")
            ).all()

        # Runs: the moved keys are columns now, and gone from the JSON.
        assert pending == ["run-pending"]  # what the worker's claim asks
        got = {
            run_id: (r.promotion_alias, r.promotion_state, r.stage, r.requested_by)
            for run_id, r in runs.items()
        }
        assert got == {
            "run-pending": ("shop:prod", "pending", "generate (candidate)", "ci-key"),
            "run-refused": ("shop:prod", "refused", None, ""),
            "run-skipped": ("shop:canary", "skipped", None, "k"),
            "run-old": (None, None, None, None),
        }
        for run_id, run in RUNS.items():
            row = runs[run_id]
            left = {k: v for k, v in run["config"].items() if k not in ("stage", "requested_by")}
            assert row.config == left
            if run["promotion"] is None:
                assert row.promotion_detail is None and promotion_record(row) is None
                continue
            assert row.promotion_detail is not None
            assert not {"alias", "state"} & set(row.promotion_detail)
            # Joined again, it is the record the API and CLI showed, keys in the same order.
            record = promotion_record(row)
            assert record == run["promotion"]
            assert list(record or {}) == list(run["promotion"])

        # Metrics: _meta is columns (falsy values included); unknown keys stay.
        exact, f1, chrf, bleu = (metrics[n] for n in ("exact_match", "token_f1", "chrf", "bleu"))
        assert exact.settings == {"normalise": True}
        assert (exact.model, exact.n, exact.ci_low, exact.ci_high) == ("shop@v2", 8, 0.61, 0.83)
        assert (exact.kind, exact.higher_is_better, exact.statistic) == ("binary", True, "mean")
        assert exact.error is None
        assert f1.settings == {} and f1.value is None
        assert (f1.n, f1.ci_low, f1.ci_high, f1.higher_is_better) == (0, None, None, False)
        assert (f1.kind, f1.error) == ("continuous", "value is NaN")
        assert chrf.settings == {"order": 6, "_meta": {"weight": 2}} and chrf.n == 8
        assert bleu.settings == {"order": 4}
        assert (bleu.model, bleu.n, bleu.kind, bleu.higher_is_better) == (None, None, None, None)

        # Items: _extra is a column.
        assert (items["i1"].values, items["i1"].extra) == (
            {"exact_match": 1.0},
            {"judge_pair": [1.0, 0.5]},
        )
        assert (items["i2"].values, items["i2"].extra) == ({"exact_match": 0.0}, None)

        # Down again: exactly 0002's JSON, and the columns are gone.
        command.downgrade(config, "0002")
        runs_json, metrics_json, items_json = _json_0002(at_0002.engine)
        assert runs_json == RUNS
        for run_id, run in RUNS.items():
            assert list(runs_json[run_id]["config"]) == list(run["config"])
            assert list(runs_json[run_id]["promotion"] or {}) == list(run["promotion"] or {})
        assert metrics_json == METRICS
        assert list(metrics_json["exact_match"]["settings"]["_meta"]) == list(META)
        assert items_json == ITEMS
        inspector = sa.inspect(at_0002.engine)
        columns = {c["name"] for c in inspector.get_columns("evaluation_runs")}
        assert "promotion" in columns
        assert not {"promotion_detail", "promotion_state", "stage", "requested_by"} & columns
        assert "extra" not in {c["name"] for c in inspector.get_columns("item_records")}
        assert "n" not in {c["name"] for c in inspector.get_columns("metric_results")}

        # And up once more: the same back-fill.
        command.upgrade(config, "head")
        with at_0002.read_session() as s:
            again = s.get(EvaluationRunRow, "run-pending")
            assert again is not None and promotion_record(again) == PENDING
            assert (again.stage, again.requested_by) == ("generate (candidate)", "ci-key")
    finally:
        at_0002.dispose()


def test_the_promotion_state_is_indexed(registry: Registry) -> None:
    indexes = sa.inspect(registry.engine).get_indexes("evaluation_runs")
    assert any(ix["column_names"] == ["promotion_state"] for ix in indexes)
