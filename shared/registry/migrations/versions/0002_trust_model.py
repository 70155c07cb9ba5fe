"""trust model: evaluation evidence and fencing columns; gate policies and protected aliases

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 09:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Append-only tables of this revision. ``alias_events`` is listed too: adding ``forced`` may make
# SQLite's batch mode recreate the table, which drops its 0001 triggers, so they are made again.
IMMUTABLE = ("gate_policies", "protection_events", "alias_events")


def _triggers(tables: Sequence[str], *, create: bool) -> None:
    """0001's trigger pattern: UPDATE and DELETE refused by the database itself."""
    dialect = op.get_bind().dialect.name
    for table in tables:
        for action in ("UPDATE", "DELETE"):
            name = f"trg_{table}_no_{action.lower()}"
            if dialect == "sqlite":
                op.execute(f"DROP TRIGGER IF EXISTS {name}")
                if create:
                    op.execute(
                        f"CREATE TRIGGER {name} BEFORE {action} ON {table} "
                        f"BEGIN SELECT RAISE(ABORT, '{table} rows are immutable'); END"
                    )
            elif dialect == "postgresql":
                op.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
                if create:
                    op.execute(
                        f"CREATE OR REPLACE FUNCTION {name}_fn() RETURNS trigger AS $$ BEGIN "
                        f"RAISE EXCEPTION '{table} rows are immutable'; END; $$ LANGUAGE plpgsql"
                    )
                    op.execute(
                        f"CREATE TRIGGER {name} BEFORE {action} ON {table} "
                        f"FOR EACH ROW EXECUTE FUNCTION {name}_fn()"
                    )
                else:
                    op.execute(f"DROP FUNCTION IF EXISTS {name}_fn()")


def upgrade() -> None:
    with op.batch_alter_table("evaluation_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("candidate_version", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("baseline_version", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("policy_sha256", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("promotion", sa.JSON(), nullable=True))

    with op.batch_alter_table("alias_events", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("forced", sa.Boolean(), nullable=False, server_default=sa.false())
        )

    op.create_table(
        "gate_policies",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name", "version", name="uq_gate_policy_version"),
    )
    with op.batch_alter_table("gate_policies", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_gate_policies_name"), ["name"], unique=False)

    op.create_table(
        "protected_aliases",
        sa.Column("adapter_name", sa.String(length=200), nullable=False),
        sa.Column("alias", sa.String(length=64), nullable=False),
        sa.Column("policy_name", sa.String(length=128), nullable=False),
        sa.Column("policy_version", sa.Integer(), nullable=False),
        sa.Column("policy_sha256", sa.String(length=64), nullable=False),
        sa.Column("first_baseline", sa.String(length=255), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["policy_name", "policy_version"], ["gate_policies.name", "gate_policies.version"]
        ),
        sa.PrimaryKeyConstraint("adapter_name", "alias"),
    )

    op.create_table(
        "protection_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("adapter_name", sa.String(length=200), nullable=False),
        sa.Column("alias", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("policy_name", sa.String(length=128), nullable=False),
        sa.Column("policy_version", sa.Integer(), nullable=False),
        sa.Column("policy_sha256", sa.String(length=64), nullable=False),
        sa.Column("first_baseline", sa.String(length=255), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("protection_events", schema=None) as batch_op:
        batch_op.create_index("ix_protection_events_alias", ["adapter_name", "alias"], unique=False)

    _triggers(IMMUTABLE, create=True)


def downgrade() -> None:
    _triggers(IMMUTABLE, create=False)
    with op.batch_alter_table("protection_events", schema=None) as batch_op:
        batch_op.drop_index("ix_protection_events_alias")
    op.drop_table("protection_events")
    op.drop_table("protected_aliases")
    with op.batch_alter_table("gate_policies", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_gate_policies_name"))
    op.drop_table("gate_policies")

    with op.batch_alter_table("alias_events", schema=None) as batch_op:
        batch_op.drop_column("forced")
    # Back to 0001's state, whose alias_events triggers the column change may have dropped.
    _triggers(("alias_events",), create=True)

    with op.batch_alter_table("evaluation_runs", schema=None) as batch_op:
        for column in (
            "promotion",
            "policy_sha256",
            "baseline_version",
            "candidate_version",
            "attempts",
        ):
            batch_op.drop_column(column)
