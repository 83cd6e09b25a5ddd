"""``SqlStore``: the async repository over the SQL schema (SQLite via aiosqlite, PostgreSQL via
asyncpg — the same code and the same contract tests on both).

Everything goes in and out as frozen dataclasses; ORM objects never leave this module. Money is
integer micros, times are aware UTC. Methods that stamp a time take ``now`` (pass the clock's
time); without it they read the wall clock here, at the edge. Database failures raise
``StorageError``; a bad argument (unknown status, naive datetime) raises ``ValueError``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
from sqlalchemy import (
    Table,
    bindparam,
    case,
    event,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError, StatementError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from campaignd.domain.campaign import CampaignSpec, Cell
from campaignd.errors import StorageError
from campaignd.stores.sql.actions import ActionMethods
from campaignd.stores.sql.aggregates import AggregateMethods
from campaignd.stores.sql.bookkeeping import (  # noqa: F401  (re-exported)
    DATABASE_ID,
    AgentRun,
    BookkeepingMethods,
    StatusRecord,
    _check,
    _now,
)
from campaignd.stores.sql.deadletters import DeadLetterMethods
from campaignd.stores.sql.models import (
    CAMPAIGN_STATUSES,
    CELL_STATUSES,
    campaigns,
    cell_totals,
    cells,
)

DEFAULT_URL = "sqlite+aiosqlite:///./campaignd.db"
_CHUNK = 1000  # ids per IN (...) list: far below SQLite's and asyncpg's parameter limits


# --- values ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UpsertResult:
    created: bool
    """The campaign row was new."""
    cells_added: int
    cells_unchanged: int
    """Cells of the spec that were already stored (whatever their status)."""
    cells_removed: int
    """Stored cells no longer in the spec, now marked ``killed``."""


@dataclass(frozen=True, slots=True)
class CampaignSummary:
    id: str
    name: str
    advertiser: str
    currency: str
    objective: str
    status: str
    lifetime_budget_micros: int
    daily_budget_micros: int
    flight_start: datetime
    flight_end: datetime
    cells_total: int
    """Every stored cell, killed ones included (cells are history, never deleted)."""
    cells_active: int
    spend_micros: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class CampaignDetail(CampaignSummary):
    """A campaign summary plus its stored spec and cell counts by status."""

    spec: dict[str, Any]
    """The spec as stored (``spec_to_dict``): money as decimal strings, times as ISO 8601."""
    spec_hash: str
    cells_by_status: dict[str, int]
    """Every cell status, with 0 for statuses no cell has."""


@dataclass(frozen=True, slots=True)
class CellRow:
    cell_id: str
    campaign_id: str
    index: int
    audience: str
    creative: str
    bid_strategy: str
    daypart: str
    platform: str
    status: str
    budget_micros: int | None
    daily_budget_micros: int | None
    spend_micros: int
    dsp_line_item_id: int | None
    created_at: datetime
    updated_at: datetime


# --- spec serialization --------------------------------------------------------------------


def spec_to_dict(spec: CampaignSpec) -> dict[str, Any]:
    """The spec as JSON-ready data: Decimals as strings (exact), datetimes as ISO 8601 UTC."""
    text_ = json.dumps(dataclasses.asdict(spec), default=_json_default, sort_keys=True)
    return json.loads(text_)


def spec_from_dict(data: Mapping[str, Any]) -> CampaignSpec:
    """The inverse of ``spec_to_dict``: the stored spec back as a ``CampaignSpec`` (it was
    validated when it was stored)."""
    from decimal import Decimal

    from campaignd.domain.campaign import (
        Audience,
        BidStrategy,
        Creative,
        Daypart,
        Exclusion,
        Platform,
    )

    def tup(v: Any) -> tuple[Any, ...]:
        return tuple(tuple(x) if isinstance(x, list) else x for x in v)

    d = dict(data)
    return CampaignSpec(
        id=d["id"], name=d["name"], currency=d["currency"], objective=d["objective"],
        lifetime_budget=Decimal(d["lifetime_budget"]), daily_budget=Decimal(d["daily_budget"]),
        flight_start=datetime.fromisoformat(d["flight_start"]),
        flight_end=datetime.fromisoformat(d["flight_end"]),
        audiences=tuple(Audience(a["id"], tuple(a["zips"]), tuple(a["signals"]), a["name"])
                        for a in d["audiences"]),
        creatives=tuple(Creative(c["id"], c["name"], c["type"], c["duration_s"],
                                 c["click_url"]) for c in d["creatives"]),
        bid_strategies=tuple(BidStrategy(b["id"], b["strategy"], Decimal(b["cpm_bid"]),
                                         tup(b["params"])) for b in d["bid_strategies"]),
        dayparts=tuple(Daypart(p["id"], tuple(p["hours"]), tuple(p["days"]))
                       for p in d["dayparts"]),
        platforms=tuple(Platform(p["id"], tuple(p["app_bundles"]), p["name"],
                                 tuple(p["device_types"])) for p in d["platforms"]),
        exclusions=tuple(Exclusion(tup(e["match"])) for e in d["exclusions"]),
        max_cells=d["max_cells"], advertiser=d["advertiser"],
        conversion_value=(None if d.get("conversion_value") is None
                          else Decimal(d["conversion_value"])))


def _json_default(obj: Any) -> str:
    if isinstance(obj, datetime):
        return obj.astimezone(UTC).isoformat()
    return str(obj)  # Decimal: str() is exact


def _spec_json(spec: CampaignSpec) -> tuple[str, str]:
    text_ = json.dumps(spec_to_dict(spec), sort_keys=True, separators=(",", ":"))
    return text_, hashlib.sha256(text_.encode()).hexdigest()


# --- engine ------------------------------------------------------------------------------------


def resolve_url(url: str | URL, password: str | None = None) -> URL:
    u = make_url(url)
    return u.set(password=password) if password is not None else u


def masked(url: str | URL) -> str:
    """The URL for messages: the password, if any, shown as ``***``."""
    return make_url(url).render_as_string(hide_password=True)


def build_engine(url: str | URL, *, password: str | None = None, **kwargs: Any) -> AsyncEngine:
    """An ``AsyncEngine`` for ``url``.

    On SQLite: foreign keys on, WAL, a 15 s busy timeout, and real transactions that take the
    write lock when they begin (``BEGIN IMMEDIATE``). sqlite3's own transaction handling would
    run reads and DDL outside any transaction, and a read that later writes could fail at once
    with "database is locked" instead of waiting; taking the lock up front makes concurrent
    writers (the daemon, a CLI command, two migrations) queue behind each other.
    """
    u = resolve_url(url, password)
    engine = create_async_engine(u, **kwargs)
    if u.get_backend_name() == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_connect)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
    return engine


def _sqlite_begin(conn: Any) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # we emit BEGIN ourselves (_sqlite_begin)
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=15000")  # first: switching to WAL may need to wait
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


def check_sqlite_directory(url: URL) -> None:
    """Fail early, and plainly, when a SQLite file's directory does not exist (other URLs pass).

    Also spares aiosqlite's failed-connection path, which can outlive the event loop.
    """
    if url.get_backend_name() != "sqlite":
        return
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return
    directory = Path(database).expanduser().parent
    if not directory.is_dir():
        raise FileNotFoundError(f"directory {directory} does not exist")


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i:i + _CHUNK]


# --- the store ---------------------------------------------------------------------------------


class SqlStore(DeadLetterMethods, AggregateMethods, ActionMethods, BookkeepingMethods):
    def __init__(self, engine: AsyncEngine) -> None:
        """Wrap an engine built by ``build_engine``; prefer ``SqlStore.connect``."""
        self.engine = engine
        self._where = masked(engine.url)

    @classmethod
    async def connect(cls, url: str = DEFAULT_URL, *, password: str | None = None,
                      timeout_s: float = 10.0) -> SqlStore:
        """Open the database at ``url`` (``password`` replaces the URL's) and check it answers.

        Raises ``StorageError`` naming the URL (password masked) when it cannot be reached
        within ``timeout_s``. Does not create tables: run ``migrate.upgrade(url)`` first.
        """
        engine = build_engine(url, password=password, pool_pre_ping=True)
        sqlite_ = engine.dialect.name == "sqlite"
        fix = ("check that its directory exists and is writable" if sqlite_ else
               "check that the server is running and the URL, user and password are right")
        try:
            check_sqlite_directory(engine.url)
            # Shielded: a connection abandoned half-open (a signal during start-up) would leave
            # a driver task behind that the event loop then waits for forever.
            with anyio.CancelScope(shield=True), anyio.fail_after(timeout_s):
                async with engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            await engine.dispose()
            if sqlite_:
                # aiosqlite stops a failed connection's thread without waiting for it; let it
                # finish before the caller's event loop closes.
                await anyio.sleep(0.05)
            raise StorageError(f"cannot open the database at {masked(engine.url)}: "
                               f"{error_reason(exc)}; {fix}") from exc
        return cls(engine)

    async def close(self) -> None:
        await self.engine.dispose()

    tx_timeout_s: float = 30.0
    """Longest a transaction may take before it fails with ``StorageError``."""

    @asynccontextmanager
    async def _tx(self, doing: str) -> AsyncIterator[AsyncConnection]:
        """One transaction; database errors become ``StorageError``, bad arguments stay.

        The transaction is shielded from cancellation: a shutdown waits for it to commit or roll
        back (a safe point, at most ``tx_timeout_s``) instead of abandoning it half-way, which
        would leave a connection — and on SQLite the write lock — held until the process dies.
        """
        try:
            with anyio.CancelScope(shield=True), anyio.fail_after(self.tx_timeout_s):
                async with self.engine.begin() as conn:
                    yield conn
        except TimeoutError:
            raise StorageError(f"{self._where}: {doing} took longer than "
                               f"{self.tx_timeout_s:g} s") from None
        except StatementError as exc:
            if not isinstance(exc, DBAPIError) and isinstance(exc.orig, ValueError | TypeError):
                raise exc.orig from None
            raise StorageError(f"{self._where}: {doing} failed: {error_reason(exc)}") from exc
        except (SQLAlchemyError, OSError) as exc:
            raise StorageError(f"{self._where}: {doing} failed: {error_reason(exc)}") from exc

    def _upsert(self, table: Table, rows: Sequence[Mapping[str, Any]],
                key: Sequence[str]) -> Any:
        """INSERT … ON CONFLICT (key) DO UPDATE SET every other column, for either backend."""
        dialect_insert = (postgresql.insert if self.engine.dialect.name == "postgresql"
                          else sqlite.insert)
        stmt = dialect_insert(table).values(list(rows))
        others = {c.name: stmt.excluded[c.name] for c in table.columns if c.name not in key}
        return stmt.on_conflict_do_update(index_elements=list(key), set_=others)

    # --- campaigns and cells ---------------------------------------------------------------

    async def upsert_campaign(self, spec: CampaignSpec, cells_: Sequence[Cell], *,
                              now: datetime | None = None) -> UpsertResult:
        """Store the campaign and its cells (from ``atomize(spec)``); idempotent.

        New cells are added as ``planned``; cells already stored keep their status, budgets and
        line item (only their ``index`` follows the spec order) — a ``killed`` cell is not
        revived; stored
        cells missing from ``cells_`` are marked ``killed``, never deleted. A changed spec
        updates the campaign's fields; the campaign's own status is not touched.
        """
        now = _now(now)
        spec_json, spec_hash = _spec_json(spec)
        fields = {
            "name": spec.name, "advertiser": spec.advertiser, "currency": spec.currency,
            "objective": spec.objective, "lifetime_budget_micros": spec.lifetime_budget_micros,
            "daily_budget_micros": spec.daily_budget_micros, "flight_start": spec.flight_start,
            "flight_end": spec.flight_end, "spec_json": spec_json, "spec_hash": spec_hash,
        }
        for cell in cells_:
            if cell.campaign_id != spec.id:
                raise ValueError(f"cell {cell.cell_id} belongs to campaign {cell.campaign_id!r}, "
                                 f"not {spec.id!r}")
        async with self._tx(f"storing campaign {spec.id}") as conn:
            old_hash = (await conn.execute(
                select(campaigns.c.spec_hash).where(campaigns.c.id == spec.id))).scalar()
            created = old_hash is None
            if created:
                await conn.execute(insert(campaigns).values(
                    id=spec.id, status="active", created_at=now, updated_at=now, **fields))
            elif old_hash != spec_hash:
                await conn.execute(update(campaigns).where(campaigns.c.id == spec.id)
                                   .values(updated_at=now, **fields))

            stored = {cell_id: (status, idx) for cell_id, status, idx in (await conn.execute(
                select(cells.c.cell_id, cells.c.status, cells.c.idx)
                .where(cells.c.campaign_id == spec.id))).all()}
            wanted = {c.cell_id for c in cells_}
            new = [c for c in cells_ if c.cell_id not in stored]
            removed = [cid for cid, (status, _) in stored.items()
                       if cid not in wanted and status != "killed"]
            # A changed spec can move a kept cell in the spec order: keep ``index`` current.
            moved = [{"b_cell_id": c.cell_id, "b_idx": c.index} for c in cells_
                     if c.cell_id in stored and stored[c.cell_id][1] != c.index]
            if new:
                await conn.execute(insert(cells), [_cell_values(c, now) for c in new])
            if moved:
                await conn.execute(update(cells).where(cells.c.cell_id == bindparam("b_cell_id"))
                                   .values(idx=bindparam("b_idx")), moved)
            for chunk in _chunks(removed):
                await conn.execute(update(cells).where(cells.c.cell_id.in_(chunk))
                                   .values(status="killed", updated_at=now))
        return UpsertResult(created=created, cells_added=len(new),
                            cells_unchanged=len(cells_) - len(new), cells_removed=len(removed))

    async def list_campaigns(self) -> list[CampaignSummary]:
        """Every campaign, by id."""
        async with self._tx("listing campaigns") as conn:
            rows = (await conn.execute(_summary_query().order_by(campaigns.c.id))).all()
        return [_summary(r) for r in rows]

    async def get_campaign(self, campaign_id: str) -> CampaignDetail | None:
        async with self._tx(f"reading campaign {campaign_id}") as conn:
            row = (await conn.execute(
                _summary_query().where(campaigns.c.id == campaign_id))).first()
            if row is None:
                return None
            counts: dict[str, int] = dict((await conn.execute(
                select(cells.c.status, func.count()).where(cells.c.campaign_id == campaign_id)
                .group_by(cells.c.status))).all())
        return CampaignDetail(
            **_summary_fields(row), spec=json.loads(row.spec_json), spec_hash=row.spec_hash,
            cells_by_status={s: int(counts.get(s, 0)) for s in CELL_STATUSES})

    async def list_cells(self, campaign_id: str, status: str | None = None) -> list[CellRow]:
        """The campaign's cells in spec order (``index``), optionally only those in ``status``."""
        query = (select(cells, func.coalesce(cell_totals.c.spend_micros, 0).label("spend_micros"))
                 .outerjoin(cell_totals, (cell_totals.c.campaign_id == cells.c.campaign_id)
                            & (cell_totals.c.cell_id == cells.c.cell_id))
                 .where(cells.c.campaign_id == campaign_id))
        if status is not None:
            _check(status, CELL_STATUSES, "cell status")
            query = query.where(cells.c.status == status)
        async with self._tx(f"listing cells of {campaign_id}") as conn:
            rows = (await conn.execute(query.order_by(cells.c.idx, cells.c.cell_id))).all()
        return [_cell_row(r) for r in rows]

    async def known_line_item_ids(self) -> set[int]:
        """Every DSP line item campaignd has made, of any campaign stored (loaded or not) and
        any cell (removed ones too)."""
        query = select(cells.c.dsp_line_item_id).where(
            cells.c.dsp_line_item_id.is_not(None)).distinct()
        async with self._tx("listing the line items campaignd made") as conn:
            return {int(r[0]) for r in (await conn.execute(query)).all()}

    async def set_campaign_status(self, campaign_id: str, status: str, *,
                                  now: datetime | None = None) -> bool:
        """Set a campaign's status; ``False`` if there is no such campaign."""
        _check(status, CAMPAIGN_STATUSES, "campaign status")
        async with self._tx(f"setting status of {campaign_id}") as conn:
            result = await conn.execute(update(campaigns).where(campaigns.c.id == campaign_id)
                                        .values(status=status, updated_at=_now(now)))
        return bool(result.rowcount)

    async def _update_cells(self, doing: str, values: Mapping[str, Any],
                            rows: Sequence[Mapping[str, Any]]) -> None:
        """One UPDATE per row, by cell id (``b_cell_id`` in each row), executed as a batch."""
        if not rows:
            return
        stmt = update(cells).where(cells.c.cell_id == bindparam("b_cell_id")).values(**values)
        async with self._tx(doing) as conn:
            await conn.execute(stmt, list(rows))

    async def set_cell_line_items(self, mapping: Mapping[str, int], status: str | None = None, *,
                                  now: datetime | None = None) -> None:
        """Record each cell's DSP line item id (and, if given, set its status). Unknown cell ids
        are ignored."""
        values: dict[str, Any] = {"dsp_line_item_id": bindparam("b_dsp"), "updated_at": _now(now)}
        if status is not None:
            _check(status, CELL_STATUSES, "cell status")
            values["status"] = status
        await self._update_cells("recording line items", values,
                                 [{"b_cell_id": c, "b_dsp": int(d)} for c, d in mapping.items()])

    async def update_cell_budgets(self, mapping: Mapping[str, tuple[int, int | None]], *,
                                  now: datetime | None = None) -> None:
        """Set each cell's (lifetime, daily) budget allocation, in micros. Unknown ids are
        ignored."""
        values = {"budget_micros": bindparam("b_budget"), "daily_budget_micros":
                  bindparam("b_daily"), "updated_at": _now(now)}
        await self._update_cells("updating cell budgets", values, [
            {"b_cell_id": c, "b_budget": int(b), "b_daily": None if d is None else int(d)}
            for c, (b, d) in mapping.items()])

    async def set_cell_status(self, cell_ids: Iterable[str], status: str, *,
                              now: datetime | None = None) -> None:
        """Set the status of every cell in ``cell_ids``. Unknown ids are ignored."""
        _check(status, CELL_STATUSES, "cell status")
        ids, at = list(dict.fromkeys(cell_ids)), _now(now)
        async with self._tx(f"setting cells {status}") as conn:
            for chunk in _chunks(ids):
                await conn.execute(update(cells).where(cells.c.cell_id.in_(chunk))
                                   .values(status=status, updated_at=at))


# --- row mapping ---------------------------------------------------------------------------


def error_reason(exc: BaseException) -> str:
    """The driver's message, first line only (SQLAlchemy appends SQL and a link)."""
    message = str(getattr(exc, "orig", None) or exc).strip()
    return message.splitlines()[0] if message else type(exc).__name__


def _cell_values(cell: Cell, now: datetime) -> dict[str, Any]:
    return {"cell_id": cell.cell_id, "campaign_id": cell.campaign_id, "idx": cell.index,
            "audience": cell.audience, "creative": cell.creative,
            "bid_strategy": cell.bid_strategy, "daypart": cell.daypart,
            "platform": cell.platform, "status": "planned", "budget_micros": None,
            "daily_budget_micros": None, "dsp_line_item_id": None,
            "created_at": now, "updated_at": now}


def _summary_query() -> Any:
    per_campaign = (
        select(cells.c.campaign_id.label("campaign_id"),
               func.count().label("cells_total"),
               func.sum(case((cells.c.status == "active", 1), else_=0)).label("cells_active"))
        .group_by(cells.c.campaign_id).subquery())
    spend = (select(cell_totals.c.campaign_id.label("campaign_id"),
                    func.sum(cell_totals.c.spend_micros).label("spend_micros"))
             .group_by(cell_totals.c.campaign_id).subquery())
    return (select(campaigns, per_campaign.c.cells_total, per_campaign.c.cells_active,
                   spend.c.spend_micros)
            .outerjoin(per_campaign, per_campaign.c.campaign_id == campaigns.c.id)
            .outerjoin(spend, spend.c.campaign_id == campaigns.c.id))


def _summary(r: Any) -> CampaignSummary:
    return CampaignSummary(**_summary_fields(r))


def _summary_fields(r: Any) -> dict[str, Any]:
    # SUM over BIGINT is NUMERIC on PostgreSQL: int() keeps it exact.
    return dict(
        id=r.id, name=r.name, advertiser=r.advertiser, currency=r.currency,
        objective=r.objective, status=r.status, lifetime_budget_micros=r.lifetime_budget_micros,
        daily_budget_micros=r.daily_budget_micros, flight_start=r.flight_start,
        flight_end=r.flight_end, cells_total=int(r.cells_total or 0),
        cells_active=int(r.cells_active or 0), spend_micros=int(r.spend_micros or 0),
        created_at=r.created_at, updated_at=r.updated_at)


def _cell_row(r: Any) -> CellRow:
    return CellRow(
        cell_id=r.cell_id, campaign_id=r.campaign_id, index=r.idx, audience=r.audience,
        creative=r.creative, bid_strategy=r.bid_strategy, daypart=r.daypart,
        platform=r.platform, status=r.status, budget_micros=r.budget_micros,
        daily_budget_micros=r.daily_budget_micros, spend_micros=r.spend_micros,
        dsp_line_item_id=r.dsp_line_item_id, created_at=r.created_at, updated_at=r.updated_at)
