"""The daemon's bookkeeping in SQL: the record of every agent and job run, checkpoints (stream
cursors, the database's identity), the DSP ids of what campaignd made, and the daemon's
published status record. Mixed into ``SqlStore``."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table, delete, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from campaignd.stores.sql.models import (
    RUN_OUTCOMES,
    agent_runs,
    checkpoints,
    daemon_status,
    dsp_objects,
)

DATABASE_ID = "database_id"
"""The checkpoint holding the database's identity (``SqlStore.database_id``)."""
_CHUNK = 1000


@dataclass(frozen=True, slots=True)
class AgentRun:
    """One run of one agent, as the supervisor saw it."""

    agent: str
    started_at: datetime
    finished_at: datetime
    duration_s: float
    """Measured on the monotonic clock; not necessarily ``finished_at - started_at``."""
    outcome: str
    """One of ``RUN_OUTCOMES``: ok | error | timeout | skipped."""
    recommendations: int = 0
    error: str | None = None
    id: int | None = field(default=None, compare=False)
    """Assigned by the store; ``None`` on a run not yet recorded."""


@dataclass(frozen=True, slots=True)
class StatusRecord:
    instance: str
    pid: int
    version: str
    started_at: datetime
    heartbeat_at: datetime
    payload: dict[str, Any]


class BookkeepingMethods:
    """Mixed into ``SqlStore`` (which provides ``engine``, ``_tx`` and ``_upsert``)."""

    engine: AsyncEngine

    def _tx(self, doing: str) -> AbstractAsyncContextManager[AsyncConnection]:
        raise NotImplementedError

    def _upsert(self, table: Table, rows: Sequence[Mapping[str, Any]],
                key: Sequence[str]) -> Any:
        raise NotImplementedError

    # --- agent runs -------------------------------------------------------------------------

    async def record_agent_run(self, run: AgentRun) -> int:
        """Store one run; returns its id."""
        _check(run.outcome, RUN_OUTCOMES, "agent run outcome")
        async with self._tx(f"recording a run of {run.agent}") as conn:
            result = await conn.execute(insert(agent_runs).values(
                agent=run.agent, started_at=run.started_at, finished_at=run.finished_at,
                duration_s=float(run.duration_s), outcome=run.outcome, error=run.error,
                recommendations=run.recommendations))
        key = result.inserted_primary_key
        assert key is not None
        return int(key[0])

    async def recent_agent_runs(self, agent: str | None = None,
                                limit: int = 50) -> list[AgentRun]:
        """The latest runs (of ``agent``, or of all agents), newest first."""
        query = select(agent_runs)
        if agent is not None:
            query = query.where(agent_runs.c.agent == agent)
        query = query.order_by(agent_runs.c.started_at.desc(), agent_runs.c.id.desc()).limit(limit)
        async with self._tx("reading agent runs") as conn:
            rows = (await conn.execute(query)).all()
        return [AgentRun(agent=r.agent, started_at=r.started_at, finished_at=r.finished_at,
                         duration_s=r.duration_s, outcome=r.outcome,
                         recommendations=r.recommendations, error=r.error, id=r.id)
                for r in rows]

    async def delete_agent_runs_before(self, cutoff: datetime) -> int:
        """Delete the run records of runs started before ``cutoff``; returns rows deleted.
        (Every job run adds one -- about 4,000 a day at the default cadences -- and nothing
        reads more than the latest few: kept forever they were the one SQL table without a
        bound.)"""
        async with self._tx("deleting old agent runs") as conn:
            result = await conn.execute(delete(agent_runs).where(
                agent_runs.c.started_at < cutoff))
        return int(result.rowcount or 0)

    async def agent_run_counts(self) -> dict[str, dict[str, int]]:
        """``{agent: {outcome: runs}}``, listing only outcomes that occurred."""
        query = (select(agent_runs.c.agent, agent_runs.c.outcome, func.count())
                 .group_by(agent_runs.c.agent, agent_runs.c.outcome))
        async with self._tx("counting agent runs") as conn:
            rows = (await conn.execute(query)).all()
        out: dict[str, dict[str, int]] = {}
        for agent, outcome, n in rows:
            out.setdefault(agent, {})[outcome] = int(n)
        return out

    # --- checkpoints and DSP ids ------------------------------------------------------------

    async def get_checkpoint(self, name: str) -> str | None:
        query = select(checkpoints.c.value).where(checkpoints.c.name == name)
        async with self._tx(f"reading checkpoint {name}") as conn:
            value = (await conn.execute(query)).scalar()
        return None if value is None else str(value)

    async def set_checkpoint(self, name: str, value: str, *, now: datetime | None = None) -> None:
        row = {"name": name, "value": value, "updated_at": _now(now)}
        async with self._tx(f"writing checkpoint {name}") as conn:
            await conn.execute(self._upsert(checkpoints, [row], ["name"]))

    async def database_id(self) -> str:
        """This database's identity: a random id written the first time it is asked for (kept
        with the checkpoints), so that two processes can tell whether they use one database
        however its URL is spelled (a relative SQLite path, a password given apart)."""
        found = await self.get_checkpoint(DATABASE_ID)
        if found:
            return found
        row = {"name": DATABASE_ID, "value": uuid.uuid4().hex, "updated_at": _now(None)}
        insert = (postgresql.insert if self.engine.dialect.name == "postgresql"
                  else sqlite.insert)
        async with self._tx("writing the database's id") as conn:
            # two first askers at once: one id wins, both read it back
            await conn.execute(insert(checkpoints).values(**row).on_conflict_do_nothing(
                index_elements=["name"]))
        found = await self.get_checkpoint(DATABASE_ID)
        assert found is not None
        return found

    async def get_dsp_id(self, kind: str, key: str) -> int | None:
        query = select(dsp_objects.c.dsp_id).where(dsp_objects.c.kind == kind,
                                                   dsp_objects.c.key == key)
        async with self._tx(f"reading the DSP id of {kind} {key}") as conn:
            value = (await conn.execute(query)).scalar()
        return None if value is None else int(value)

    async def put_dsp_ids(self, kind: str, mapping: Mapping[str, int], *,
                          now: datetime | None = None) -> None:
        """Record (or replace) the DSP id of each of our ``kind`` keys."""
        if not mapping:
            return
        at = _now(now)
        rows = [{"kind": kind, "key": k, "dsp_id": int(v), "updated_at": at}
                for k, v in mapping.items()]
        async with self._tx(f"recording DSP ids of {kind}") as conn:
            for i in range(0, len(rows), _CHUNK):
                await conn.execute(self._upsert(dsp_objects, rows[i:i + _CHUNK], ["kind", "key"]))

    # --- daemon status ----------------------------------------------------------------------

    async def write_status(self, instance: str, pid: int, version: str, started_at: datetime,
                           payload: Mapping[str, Any], *, now: datetime | None = None) -> None:
        """Publish the daemon's status record (replacing the previous one); ``heartbeat_at`` is
        ``now``."""
        row = {"instance": instance, "pid": pid, "version": version, "started_at": started_at,
               "heartbeat_at": _now(now), "payload": json.dumps(payload, sort_keys=True)}
        async with self._tx("writing the daemon status") as conn:
            await conn.execute(self._upsert(daemon_status, [row], ["instance"]))

    async def read_status(self, instance: str) -> StatusRecord | None:
        query = select(daemon_status).where(daemon_status.c.instance == instance)
        async with self._tx("reading the daemon status") as conn:
            r = (await conn.execute(query)).first()
        if r is None:
            return None
        return StatusRecord(instance=r.instance, pid=r.pid, version=r.version,
                            started_at=r.started_at, heartbeat_at=r.heartbeat_at,
                            payload=json.loads(r.payload))


def _now(now: datetime | None) -> datetime:
    return datetime.now(UTC) if now is None else now


def _check(value: str, allowed: tuple[str, ...], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"{what} {value!r} is not one of {', '.join(allowed)}")


__all__ = ["DATABASE_ID", "AgentRun", "BookkeepingMethods", "StatusRecord"]
