"""The daemon's lock on a real PostgreSQL: a lost connection (a server restart) is noticed and
the lock taken again, unless another daemon took it meanwhile — then the first one stops."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from campaignd.errors import StartupError
from campaignd.stores.daemon_lock import ADVISORY_KEY, DaemonLock, LockLost

pytestmark = pytest.mark.postgres


def _dsn(url: str) -> str:
    from sqlalchemy.engine import make_url
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _drop_lock_connections(url: str) -> int:
    """What a server restart does to the lock: its connection is terminated."""
    conn = await asyncpg.connect(_dsn(url))
    try:
        return int(await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_locks WHERE locktype = 'advisory' "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND classid::bigint = $1 AND objid::bigint = $2",
            (ADVISORY_KEY >> 32) & 0xFFFFFFFF, ADVISORY_KEY & 0xFFFFFFFF))
    finally:
        await conn.close()


async def test_a_lost_lock_is_taken_again_unless_another_daemon_has_it(
        postgres_url: str, tmp_path: Path) -> None:
    first = DaemonLock(state_dir=tmp_path / "a", database_url=postgres_url)
    second = DaemonLock(state_dir=tmp_path / "b", database_url=postgres_url)
    await first.acquire()
    try:
        assert await first.check() == "held"
        with pytest.raises(StartupError, match="another campaignd is running on this database"):
            await second.acquire()
        # the server drops the lock's connection: the next check takes it again
        assert await _drop_lock_connections(postgres_url) == 1
        assert await first.check() == "retaken"
        assert await first.check() == "held"
        with pytest.raises(StartupError):
            await second.acquire()
        # dropped again, and another daemon starts before the check: the first one must stop
        assert await _drop_lock_connections(postgres_url) == 1
        await second.acquire()
        with pytest.raises(LockLost, match="another campaignd took this database's lock"):
            await first.check()
    finally:
        await first.release()
        await second.release()


async def test_an_unreachable_server_is_tried_again(tmp_path: Path, postgres_url: str) -> None:
    lock = DaemonLock(state_dir=tmp_path / "a", database_url=postgres_url)
    await lock.acquire()
    try:
        await _drop_lock_connections(postgres_url)
        # the server "is down": point the lock at a port nothing listens on
        from sqlalchemy.engine import make_url
        from sqlalchemy.ext.asyncio import create_async_engine
        from sqlalchemy.pool import NullPool

        from campaignd.testing import free_port
        dead = make_url(postgres_url).set(host="127.0.0.1", port=free_port())
        good = lock._engine
        lock._engine = create_async_engine(dead, poolclass=NullPool)
        from structlog.testing import capture_logs
        with capture_logs() as logs:
            for _ in range(3):  # checked every 30 s: one line for the outage, not each check
                assert await lock.check() == "unreachable"
            await lock._engine.dispose()
            lock._engine = good
            assert await lock.check() == "retaken"
        events = [e["event"] for e in logs]
        assert events.count("cannot reach the database to take the daemon's lock again; "
                            "will retry") == 1
        assert "the database answers again" in events
    finally:
        await lock.release()
