"""SQLAlchemy models: the schema of the SQL store (SQLite and PostgreSQL alike).

Money is integer micros in ``BigInteger`` columns; times are aware UTC (``UTCDateTime``).
The migrations in ``migrations/versions`` create exactly this schema; a contract test compares
the two, so change both together.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

CAMPAIGN_STATUSES = ("active", "paused", "archived")
CELL_STATUSES = ("planned", "active", "paused", "killed", "graduated")
RUN_OUTCOMES = ("ok", "error", "timeout", "skipped")
ACTION_STATUSES = ("proposed", "pending", "applying", "applied", "failed", "refused", "rejected",
                   "superseded", "shadow")
"""``campaignd.domain.actions.ACTION_STATUSES`` (a test checks that they agree)."""
DECISION_MODES = ("live", "shadow", "approve", "user")

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime on every backend.

    SQLite keeps no offset, so values are stored as UTC and read back with ``tzinfo=UTC``.
    Naive datetimes are refused: the caller must say which zone it means.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()} given to the SQL store; "
                             "pass an aware UTC datetime (e.g. clock.now())")
        # SQLite's DATETIME keeps the wall time and drops the offset: store it as UTC.
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: dict[Any, Any] = {datetime: UTCDateTime, int: Integer, str: String}


class CampaignModel(Base):
    __tablename__ = "campaigns"
    __table_args__ = (CheckConstraint(_in("status", CAMPAIGN_STATUSES), name="status"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    advertiser: Mapped[str] = mapped_column(Text)
    currency: Mapped[str] = mapped_column(String(3))
    objective: Mapped[str] = mapped_column(String(32))
    lifetime_budget_micros: Mapped[int] = mapped_column(BigInteger)
    daily_budget_micros: Mapped[int] = mapped_column(BigInteger)
    flight_start: Mapped[datetime]
    flight_end: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(16))
    spec_json: Mapped[str] = mapped_column(Text)
    spec_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class CellModel(Base):
    __tablename__ = "cells"
    __table_args__ = (CheckConstraint(_in("status", CELL_STATUSES), name="status"),)

    cell_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    campaign_id: Mapped[str] = mapped_column(String(64), ForeignKey("campaigns.id"), index=True)
    idx: Mapped[int]
    audience: Mapped[str] = mapped_column(String(64))
    creative: Mapped[str] = mapped_column(String(64))
    bid_strategy: Mapped[str] = mapped_column(String(64))
    daypart: Mapped[str] = mapped_column(String(64))
    platform: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    budget_micros: Mapped[int | None] = mapped_column(BigInteger)
    """Current lifetime allocation; ``None`` until the allocator has run."""
    daily_budget_micros: Mapped[int | None] = mapped_column(BigInteger)
    dsp_line_item_id: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class AgentRunModel(Base):
    __tablename__ = "agent_runs"
    __table_args__ = (
        CheckConstraint(_in("outcome", RUN_OUTCOMES), name="outcome"),
        Index("ix_agent_runs_agent_started_at", "agent", "started_at"),
    )

    # SQLite autoincrements only an INTEGER PRIMARY KEY.
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"),
                                    primary_key=True, autoincrement=True)
    agent: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime]
    duration_s: Mapped[float] = mapped_column(Float)
    outcome: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)
    recommendations: Mapped[int] = mapped_column(Integer, default=0)


class DspObjectModel(Base):
    """Our key of an object (e.g. a cell id) → its DSP id, per kind of object."""

    __tablename__ = "dsp_objects"

    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    dsp_id: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime]


class CheckpointModel(Base):
    __tablename__ = "checkpoints"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime]


class DaemonStatusModel(Base):
    __tablename__ = "daemon_status"

    instance: Mapped[str] = mapped_column(String(128), primary_key=True)
    pid: Mapped[int]
    version: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime]
    heartbeat_at: Mapped[datetime]
    payload: Mapped[str] = mapped_column(Text)


class DeadLetterModel(Base):
    """An event the pipeline could not accept: why, the raw payload, when, how often."""

    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    reason: Mapped[str] = mapped_column(String(64), index=True)
    source: Mapped[str] = mapped_column(String(255))
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    first_seen: Mapped[datetime]
    last_seen: Mapped[datetime] = mapped_column(index=True)
    count: Mapped[int] = mapped_column(Integer)


class ActionModel(Base):
    """One change to one line item: the outbox (``pending``) and, once applied or not, the
    audit log — what, why (reason and evidence), before, after, who (agent, actor), when."""

    __tablename__ = "actions"
    __table_args__ = (
        CheckConstraint(_in("status", ACTION_STATUSES), name="status"),
        CheckConstraint(_in("mode", DECISION_MODES), name="mode"),
        Index("ix_actions_status_id", "status", "id"),
        Index("ix_actions_campaign_id_cell_id", "campaign_id", "cell_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    """Idempotency key: the same decision about the same line item is recorded once."""
    decision_id: Mapped[str] = mapped_column(String(32), index=True)
    campaign_id: Mapped[str] = mapped_column(String(64), ForeignKey("campaigns.id"))
    cell_id: Mapped[str] = mapped_column(String(32))
    line_item_id: Mapped[int | None] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    mode: Mapped[str] = mapped_column(String(8))
    agent: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str | None] = mapped_column(String(128))
    """Who approved, rejected or asked for it (a person), when not only an agent."""
    reason: Mapped[str] = mapped_column(Text)
    before_json: Mapped[str] = mapped_column(Text)
    after_json: Mapped[str] = mapped_column(Text)
    evidence_json: Mapped[str] = mapped_column(Text)
    result_json: Mapped[str | None] = mapped_column(Text)
    """The line item as the DSP acknowledged it."""
    score: Mapped[float] = mapped_column(Float)
    impact: Mapped[float] = mapped_column(Float)
    risk: Mapped[float] = mapped_column(Float)
    priority: Mapped[float] = mapped_column(Float)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    undo_of: Mapped[int | None] = mapped_column(Integer, ForeignKey("actions.id"), index=True)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    decided_at: Mapped[datetime | None]
    """When a person approved or rejected it."""
    applied_at: Mapped[datetime | None]


COUNTER_COLUMNS: tuple[str, ...] = (
    "impressions", "measurable", "viewable", "starts", "q1", "mid", "q3", "completes",
    "clicks", "conversions", "conversion_value_micros", "spend_micros",
)
"""The per-cell counters (``domain.cells.METRICS``), one BIGINT column each, money in micros."""


def _counters() -> list[Column[int]]:
    return [Column(name, BigInteger, nullable=False, default=0, server_default="0")
            for name in COUNTER_COLUMNS]


# The aggregate tables are Core tables: they are written in bulk, never as ORM objects.
# Running totals per cell: the registry's durable state, committed with the event cursor (so a
# restart neither loses nor double-counts).
cell_totals = Table(
    "cell_totals", Base.metadata,
    Column("campaign_id", String(64), ForeignKey("campaigns.id"), primary_key=True),
    Column("cell_id", String(32), primary_key=True),
    *_counters(),
    Column("updated_at", UTCDateTime, nullable=False),
)
# Warm store: per-cell counts per minute of event time, kept 7 days.
cell_minutes = Table(
    "cell_minutes", Base.metadata,
    Column("campaign_id", String(64), ForeignKey("campaigns.id"), primary_key=True),
    Column("cell_id", String(32), primary_key=True),
    Column("minute", UTCDateTime, primary_key=True),
    *_counters(),
    Index("ix_cell_minutes_minute", "minute"),
)
# Cold store: per-cell counts per UTC day, kept forever.
cell_days = Table(
    "cell_days", Base.metadata,
    Column("campaign_id", String(64), ForeignKey("campaigns.id"), primary_key=True),
    Column("cell_id", String(32), primary_key=True),
    Column("day", Date, primary_key=True),
    *_counters(),
    Column("updated_at", UTCDateTime, nullable=False),
)

# Core tables, for the repository's queries.
metadata = Base.metadata
campaigns = cast(Table, CampaignModel.__table__)
cells = cast(Table, CellModel.__table__)
agent_runs = cast(Table, AgentRunModel.__table__)
dsp_objects = cast(Table, DspObjectModel.__table__)
checkpoints = cast(Table, CheckpointModel.__table__)
daemon_status = cast(Table, DaemonStatusModel.__table__)
dead_letters = cast(Table, DeadLetterModel.__table__)
actions = cast(Table, ActionModel.__table__)
