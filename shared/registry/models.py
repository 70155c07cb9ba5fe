"""Registry tables (SQLAlchemy 2, typed declarative). Schema changes go through Alembic migrations.

Adapter versions are immutable: the ORM refuses updates (see ``_refuse_version_update``), and the
migration adds database triggers that refuse them too, so a stray SQL client cannot rewrite history.
Aliases point at versions; every move is appended to ``alias_events``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    event,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


class BaseModelRow(Base):
    """A base model known by name and content hash of its weights."""

    __tablename__ = "base_models"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    weights_sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(200))
    architecture: Mapped[str] = mapped_column(String(100), default="")
    info: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DatasetRow(Base):
    """An uploaded or generated data file, stored by content hash (OpenAI's "file" object)."""

    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    filename: Mapped[str] = mapped_column(String(255))
    purpose: Mapped[str] = mapped_column(String(32))
    format: Mapped[str] = mapped_column(String(32))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    row_count: Mapped[int] = mapped_column(Integer)
    bytes: Mapped[int] = mapped_column(BigInteger)
    split: Mapped[str] = mapped_column(String(32), default="train")
    report: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class TrainingJobRow(Base):
    __tablename__ = "training_jobs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(32), index=True)
    base_model: Mapped[str] = mapped_column(String(200))
    adapter_name: Mapped[str] = mapped_column(String(200))
    training_file: Mapped[str] = mapped_column(String(64))
    validation_file: Mapped[str | None] = mapped_column(String(64), nullable=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    job_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    result_version_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    worker_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class JobEventRow(Base):
    """Append-only event log of a training job."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("training_jobs.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    level: Mapped[str] = mapped_column(String(16), default="info")
    type: Mapped[str] = mapped_column(String(32), default="message")
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class AdapterRow(Base):
    __tablename__ = "adapters"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AdapterVersionRow(Base):
    """One immutable, content-addressed version of an adapter. Its id reads ``name@vN``."""

    __tablename__ = "adapter_versions"
    __table_args__ = (
        UniqueConstraint("adapter_name", "version", name="uq_adapter_version_number"),
        UniqueConstraint("adapter_name", "sha256", name="uq_adapter_version_content"),
    )

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    adapter_name: Mapped[str] = mapped_column(ForeignKey("adapters.name"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    base_model: Mapped[str] = mapped_column(ForeignKey("base_models.name"))
    base_model_sha256: Mapped[str] = mapped_column(String(64))
    rank: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    job_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AliasRow(Base):
    """``adapter:alias -> version``. ``revision`` grows by one on every move."""

    __tablename__ = "aliases"

    adapter_name: Mapped[str] = mapped_column(ForeignKey("adapters.name"), primary_key=True)
    alias: Mapped[str] = mapped_column(String(64), primary_key=True)
    version_id: Mapped[str] = mapped_column(ForeignKey("adapter_versions.id"))
    revision: Mapped[int] = mapped_column(Integer, default=1)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AliasEventRow(Base):
    """Append-only history of alias moves; a rollback reads ``from_version`` of the last move."""

    __tablename__ = "alias_events"
    __table_args__ = (Index("ix_alias_events_alias", "adapter_name", "alias"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    adapter_name: Mapped[str] = mapped_column(String(200))
    alias: Mapped[str] = mapped_column(String(64))
    from_version: Mapped[str | None] = mapped_column(String(255), nullable=True)
    to_version: Mapped[str] = mapped_column(String(255))
    evaluation_run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    actor: Mapped[str] = mapped_column(String(128), default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # True when an admin overrode a protected alias's evidence rule (``force`` or a rollback).
    forced: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class GatePolicyRow(Base):
    """One immutable version of a named gate policy. ``sha256`` is the evaluator's canonical hash
    of ``body``; the registry stores it and never recomputes or interprets it."""

    __tablename__ = "gate_policies"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_gate_policy_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    body: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    actor: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ProtectedAliasRow(Base):
    """An alias that moves only on passing evidence under one exact policy version (its hash).

    No foreign key to ``aliases``/``adapters``: an alias may be protected before its first release.
    ``first_baseline`` is what a first release must have been compared with (``"base"``: the bare
    base model)."""

    __tablename__ = "protected_aliases"
    __table_args__ = (
        ForeignKeyConstraint(
            ["policy_name", "policy_version"], ["gate_policies.name", "gate_policies.version"]
        ),
    )

    adapter_name: Mapped[str] = mapped_column(String(200), primary_key=True)
    alias: Mapped[str] = mapped_column(String(64), primary_key=True)
    policy_name: Mapped[str] = mapped_column(String(128))
    policy_version: Mapped[int] = mapped_column(Integer)
    policy_sha256: Mapped[str] = mapped_column(String(64))
    first_baseline: Mapped[str] = mapped_column(String(255), default="base")
    actor: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ProtectionEventRow(Base):
    """Append-only record of protecting and unprotecting aliases, with who and why."""

    __tablename__ = "protection_events"
    __table_args__ = (Index("ix_protection_events_alias", "adapter_name", "alias"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    adapter_name: Mapped[str] = mapped_column(String(200))
    alias: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(16))  # "protect" | "unprotect"
    policy_name: Mapped[str] = mapped_column(String(128))
    policy_version: Mapped[int] = mapped_column(Integer)
    policy_sha256: Mapped[str] = mapped_column(String(64))
    first_baseline: Mapped[str] = mapped_column(String(255), default="base")
    actor: Mapped[str] = mapped_column(String(128), default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class PinRow(Base):
    """A version the servers must keep loaded even when no alias points at it."""

    __tablename__ = "pins"

    version_id: Mapped[str] = mapped_column(ForeignKey("adapter_versions.id"), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class EvaluationRunRow(Base):
    __tablename__ = "evaluation_runs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(32), index=True)
    candidate: Mapped[str] = mapped_column(String(255))
    baseline: Mapped[str | None] = mapped_column(String(255), nullable=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    decision: Mapped[str | None] = mapped_column(String(32), nullable=True)
    report_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    worker_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Fencing: each claim increments ``attempts``; a worker's writes name the attempt they belong to.
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # The evidence a protected alias checks: exactly which versions were compared under which policy.
    candidate_version: Mapped[str | None] = mapped_column(String(255), nullable=True)
    baseline_version: Mapped[str | None] = mapped_column(String(255), nullable=True)
    policy_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The promotion a passing run asked for and what happened to it, so a crash between storing
    # the pass and moving the alias is finished by the next claimant (which finds it by the indexed
    # state). Alias and state are columns; the rest of the record (target, expected version,
    # reason, error) stays in ``promotion_detail``. ``evaluation_runs.promotion_record`` joins them.
    promotion_state: Mapped[str | None] = mapped_column(String(16), nullable=True, index=True)
    promotion_alias: Mapped[str | None] = mapped_column(String(265), nullable=True)
    promotion_detail: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # The step a running run is at (the worker's heartbeat writes it; the API shows it).
    stage: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The API key that queued the run ("" for a CLI run; None for rows from before it was kept).
    requested_by: Mapped[str | None] = mapped_column(String(128), nullable=True)


class MetricResultRow(Base):
    """One metric for one subject (``candidate`` or ``baseline``) of a run, with its settings."""

    __tablename__ = "metric_results"
    __table_args__ = (UniqueConstraint("run_id", "subject", "name", name="uq_metric_result"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("evaluation_runs.id"), index=True)
    subject: Mapped[str] = mapped_column(String(255))
    name: Mapped[str] = mapped_column(String(128))
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # How the value came about (None on rows stored before revision 0003 without them): the model
    # that was scored, the item count, the confidence interval, the metric's kind, direction and
    # statistic, and why it could not be computed.
    model: Mapped[str | None] = mapped_column(String(255), nullable=True)
    n: Mapped[int | None] = mapped_column(Integer, nullable=True)
    ci_low: Mapped[float | None] = mapped_column(Float, nullable=True)
    ci_high: Mapped[float | None] = mapped_column(Float, nullable=True)
    kind: Mapped[str | None] = mapped_column(String(32), nullable=True)
    higher_is_better: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    statistic: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class ItemRecordRow(Base):
    """Per-item output and metric values, so two runs compare item by item without re-running."""

    __tablename__ = "item_records"
    __table_args__ = (Index("ix_item_records_run_subject", "run_id", "subject"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("evaluation_runs.id"))
    subject: Mapped[str] = mapped_column(String(255))
    item_id: Mapped[str] = mapped_column(String(255))
    item_hash: Mapped[str] = mapped_column(String(64))
    output: Mapped[str] = mapped_column(Text, default="")
    values: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # What an item carries besides metric values (e.g. the judge's verdicts in both orders).
    extra: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


@event.listens_for(Session, "before_flush")
def _refuse_version_update(session: Session, _ctx: object, _instances: object) -> None:
    for obj in session.dirty:
        if isinstance(obj, AdapterVersionRow) and session.is_modified(obj):
            raise PermissionError(f"adapter version {obj.id} is immutable")
        if isinstance(obj, GatePolicyRow) and session.is_modified(obj):
            raise PermissionError(f"gate policy {obj.name}@{obj.version} is immutable")
    for obj in session.deleted:
        if isinstance(
            obj,
            AdapterVersionRow | AliasEventRow | JobEventRow | GatePolicyRow | ProtectionEventRow,
        ):
            raise PermissionError(f"{type(obj).__tablename__} rows are append-only")
