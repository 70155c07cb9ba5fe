"""structured columns: evaluation run promotion, stage and requester; metric and item details

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 21:45:00

Fields the registry queries or writes one at a time move out of JSON bags into typed columns, and
existing rows are back-filled:

- ``evaluation_runs.promotion`` JSON: ``alias`` and ``state`` become ``promotion_alias`` and
  ``promotion_state`` (indexed: the worker claims pending promotions by it); the rest of the record
  stays, as ``promotion_detail``.
- ``evaluation_runs.config``: ``stage`` and ``requested_by`` become columns.
- ``metric_results.settings["_meta"]`` (model, n, ci, kind, higher_is_better, statistic, error)
  becomes eight columns; ``ci`` is split into ``ci_low`` and ``ci_high``.
- ``item_records.values["_extra"]`` becomes the JSON column ``extra``.

A key that was absent stays NULL, and the downgrade writes back exactly the keys that were there,
so upgrade then downgrade returns the same JSON. The record logic is copied here on purpose: a
migration must keep working when the application code changes.
"""

from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH = 500  # rows read and written per round trip

# The order of a promotion record's keys as the evaluator wrote them (downgrade restores it).
PROMOTION_RANK = {
    key: i
    for i, key in enumerate(
        ("alias", "adapter", "name", "to", "from", "moved", "state", "why", "reason")
    )
}
# The order of a _meta's keys as the evaluator wrote them (downgrade restores it).
META_KEYS = ("model", "n", "ci", "kind", "higher_is_better", "statistic", "error")
# _meta key -> metric_results column; "ci" is handled apart (one list, two columns).
META_COLUMNS = {
    "model": "model",
    "n": "n",
    "kind": "kind",
    "higher_is_better": "higher_is_better",
    "statistic": "statistic",
    "error": "error",
}

runs = sa.table(
    "evaluation_runs",
    sa.column("id", sa.String),
    sa.column("config", sa.JSON),
    sa.column("promotion_detail", sa.JSON(none_as_null=True)),
    sa.column("promotion_alias", sa.String),
    sa.column("promotion_state", sa.String),
    sa.column("stage", sa.String),
    sa.column("requested_by", sa.String),
)
metrics = sa.table(
    "metric_results",
    sa.column("id", sa.Integer),
    sa.column("settings", sa.JSON),
    sa.column("model", sa.String),
    sa.column("n", sa.Integer),
    sa.column("ci_low", sa.Float),
    sa.column("ci_high", sa.Float),
    sa.column("kind", sa.String),
    sa.column("higher_is_better", sa.Boolean),
    sa.column("statistic", sa.String),
    sa.column("error", sa.Text),
)
items = sa.table(
    "item_records",
    sa.column("id", sa.Integer),
    sa.column("values", sa.JSON),
    sa.column("extra", sa.JSON(none_as_null=True)),
)


def _batches(table: sa.TableClause, *columns: str) -> Iterator[list[tuple[Any, ...]]]:
    """All rows of ``table`` by primary key, ``BATCH`` at a time; each batch is read in full before
    it is returned, so the caller may update between batches."""
    bind = op.get_bind()
    key = table.c.id
    last: Any = None
    while True:
        stmt = sa.select(key, *(table.c[c] for c in columns)).order_by(key).limit(BATCH)
        if last is not None:
            stmt = stmt.where(key > last)
        rows = [tuple(row) for row in bind.execute(stmt)]
        if not rows:
            return
        yield rows
        last = rows[-1][0]


def _update(table: sa.TableClause, values: list[dict[str, Any]]) -> None:
    """One executemany of ``values`` (each with ``row_id`` and the columns to set)."""
    if values:
        columns = [k for k in values[0] if k != "row_id"]
        stmt = (
            table.update()
            .where(table.c.id == sa.bindparam("row_id"))
            .values({c: sa.bindparam(c) for c in columns})
        )
        op.get_bind().execute(stmt, values)


# -- upgrade ---------------------------------------------------------------------------------------


def _split_runs() -> None:
    for rows in _batches(runs, "config", "promotion_detail"):
        values = []
        for row_id, config, promotion in rows:
            config = dict(config or {})
            detail = dict(promotion) if isinstance(promotion, dict) else None
            values.append(
                {
                    "row_id": row_id,
                    "stage": config.pop("stage", None),
                    "requested_by": config.pop("requested_by", None),
                    "config": config,
                    "promotion_alias": detail.pop("alias", None) if detail is not None else None,
                    "promotion_state": detail.pop("state", None) if detail is not None else None,
                    "promotion_detail": detail,
                }
            )
        _update(runs, values)


def _split_metrics() -> None:
    for rows in _batches(metrics, "settings"):
        values = []
        for row_id, settings in rows:
            settings = dict(settings or {})
            meta = settings.pop("_meta", None)
            if not isinstance(meta, dict):
                continue
            meta = dict(meta)
            columns = {col: meta.pop(key, None) for key, col in META_COLUMNS.items()}
            ci = meta.pop("ci") if _is_ci(meta.get("ci")) else [None, None]
            if all(v is None for v in [*columns.values(), *ci]):
                continue  # nothing to move: the row keeps its _meta as it is
            if meta:  # keys this revision does not know (or an odd ci) stay where they were
                settings["_meta"] = meta
            values.append(
                {
                    "row_id": row_id,
                    "settings": settings,
                    **columns,
                    "ci_low": ci[0],
                    "ci_high": ci[1],
                }
            )
        _update(metrics, values)


def _is_ci(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2


def _split_items() -> None:
    for rows in _batches(items, "values"):
        values = []
        for row_id, item_values in rows:
            if not isinstance(item_values, dict) or "_extra" not in item_values:
                continue
            rest = dict(item_values)
            extra = rest.pop("_extra")
            values.append({"row_id": row_id, "values": rest, "extra": extra})
        _update(items, values)


def upgrade() -> None:
    with op.batch_alter_table("evaluation_runs", schema=None) as batch_op:
        batch_op.alter_column(
            "promotion",
            new_column_name="promotion_detail",
            existing_type=sa.JSON(),
            existing_nullable=True,
        )
        batch_op.add_column(sa.Column("promotion_state", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("promotion_alias", sa.String(length=265), nullable=True))
        batch_op.add_column(sa.Column("stage", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("requested_by", sa.String(length=128), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_evaluation_runs_promotion_state"), ["promotion_state"], unique=False
        )
    with op.batch_alter_table("metric_results", schema=None) as batch_op:
        batch_op.add_column(sa.Column("model", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("n", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("ci_low", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("ci_high", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("kind", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("higher_is_better", sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column("statistic", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("error", sa.Text(), nullable=True))
    with op.batch_alter_table("item_records", schema=None) as batch_op:
        batch_op.add_column(sa.Column("extra", sa.JSON(), nullable=True))

    _split_runs()
    _split_metrics()
    _split_items()


# -- downgrade -------------------------------------------------------------------------------------


def _promotion_rank(item: tuple[str, Any]) -> int:
    return PROMOTION_RANK.get(item[0], len(PROMOTION_RANK))


def _join_runs() -> None:
    columns = ("config", "promotion_detail", "promotion_alias", "promotion_state", "stage")
    for rows in _batches(runs, *columns, "requested_by"):
        values = []
        for row_id, config, detail, alias, state, stage, requested_by in rows:
            # requested_by was the config's first key, stage its last.
            restored = {} if requested_by is None else {"requested_by": requested_by}
            restored.update(config or {})
            if stage is not None:
                restored["stage"] = stage
            promotion = None
            if detail is not None or state is not None:
                record = dict(detail or {})
                if alias is not None:
                    record["alias"] = alias
                if state is not None:
                    record["state"] = state
                promotion = dict(sorted(record.items(), key=_promotion_rank))
            values.append({"row_id": row_id, "config": restored, "promotion_detail": promotion})
        _update(runs, values)


def _join_metrics() -> None:
    columns = ("model", "n", "ci_low", "ci_high", "kind", "higher_is_better", "statistic", "error")
    for rows in _batches(metrics, "settings", *columns):
        values = []
        for row_id, settings, *stored in rows:
            got = dict(zip(columns, stored, strict=True))
            if all(v is None for v in got.values()):
                continue  # the row had no _meta
            settings = dict(settings or {})
            meta = {key: got[col] for key, col in META_COLUMNS.items()}
            meta["ci"] = [got["ci_low"], got["ci_high"]]
            # The keys in the order the evaluator wrote them, then those the upgrade left.
            settings["_meta"] = {**{k: meta[k] for k in META_KEYS}, **(settings.get("_meta") or {})}
            values.append({"row_id": row_id, "settings": settings})
        _update(metrics, values)


def _join_items() -> None:
    for rows in _batches(items, "values", "extra"):
        values = [
            {"row_id": row_id, "values": {**(item_values or {}), "_extra": extra}}
            for row_id, item_values, extra in rows
            if extra is not None
        ]
        _update(items, values)


def downgrade() -> None:
    _join_runs()
    _join_metrics()
    _join_items()

    with op.batch_alter_table("item_records", schema=None) as batch_op:
        batch_op.drop_column("extra")
    with op.batch_alter_table("metric_results", schema=None) as batch_op:
        for column in (
            "error",
            "statistic",
            "higher_is_better",
            "kind",
            "ci_high",
            "ci_low",
            "n",
            "model",
        ):
            batch_op.drop_column(column)
    with op.batch_alter_table("evaluation_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_evaluation_runs_promotion_state"))
        for column in ("requested_by", "stage", "promotion_alias", "promotion_state"):
            batch_op.drop_column(column)
        batch_op.alter_column(
            "promotion_detail",
            new_column_name="promotion",
            existing_type=sa.JSON(),
            existing_nullable=True,
        )
