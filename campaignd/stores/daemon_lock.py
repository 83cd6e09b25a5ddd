"""One daemon per state directory and database.

Two daemons on one database would both decide and both send changes to the DSP: each refuses the
other's actions as stale, each checks the caps against its own view (together they can exceed
them) and each owns the dedupe marks. ``DaemonLock`` makes a second ``campaignd run`` fail at
start, before it touches anything, with the first one's pid:

- an exclusive ``flock`` on ``<state_dir>/campaignd.lock`` (its own data: dedupe marks, spool,
  API token);
- with SQLite, one on a lock file beside the database file (another state directory, same
  database);
- with PostgreSQL, a session advisory lock (advisory locks belong to one database), held on a
  connection of its own for the daemon's life (another host, same database).

Whatever their ``instance`` names: two daemons on one database would share its outbox.

The kernel releases the file locks when the process dies, and PostgreSQL the advisory lock when
its connection closes, so a crashed daemon never blocks its restart (systemd's
``Restart=on-failure``).

The advisory lock also goes when the server restarts or drops the connection, so the daemon
watches it (``watch``): every ``interval_s`` its connection is checked, and a lost lock is taken
again on a new connection as soon as the server answers. If another campaignd took it in
between, this one stops (``LockLost``, exit 1) rather than run beside it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from pathlib import Path
from typing import IO, Any

import anyio
from anyio.abc import TaskStatus
from sqlalchemy import text
from sqlalchemy.engine import make_url

from campaignd.errors import CampaigndError, StartupError
from campaignd.logs import Outage, get_logger
from campaignd.settings import mask_url_password

log = get_logger("campaignd.lock")

LOCK_FILE = "campaignd.lock"


ADVISORY_KEY = int.from_bytes(hashlib.blake2b(b"campaignd:daemon", digest_size=8).digest(),
                              "big", signed=True)
"""The daemon's PostgreSQL advisory lock key (a signed 64-bit integer)."""


class LockHeld(StartupError):
    """Another campaignd process holds one of the locks (``holder``: its pid, when known)."""

    def __init__(self, message: str, *, holder: str = "unknown", what: str = "") -> None:
        super().__init__(message)
        self.holder = holder
        self.what = what


class LockLost(CampaigndError):
    """Another campaignd took the database's lock after this one's connection was lost."""


class DaemonLock:
    """Held from start to stop (see the module docstring): ``await acquire()``, then
    ``await release()``."""

    def __init__(self, *, state_dir: Path, database_url: str, shown_url: str = "") -> None:
        self.state_dir = Path(state_dir)
        self.database_url = database_url
        self.shown_url = shown_url or make_url(mask_url_password(database_url)).render_as_string(
            hide_password=True)
        """The URL for messages (no password)."""
        self._files: list[IO[str]] = []
        self._engine: Any = None
        self._conn: Any = None
        # (checked every 30 s: a night-long database outage is one line a minute at most)
        self._unreachable = Outage(log, "cannot reach the database to take the daemon's lock "
                                        "again; will retry")

    async def acquire(self) -> None:
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StartupError(f"cannot create the state directory {self.state_dir} "
                               f"({exc.strerror}); set state_dir to a writable directory"
                               ) from None
        try:
            self._lock_file(self.state_dir / LOCK_FILE, f"the state directory {self.state_dir}")
            url = make_url(self.database_url)
            if url.get_backend_name() == "sqlite":
                db = url.database or ""
                if db and db != ":memory:" and not db.startswith("file:"):
                    path = Path(db).resolve()
                    self._lock_file(path.with_name(path.name + ".campaignd-lock"),
                                    f"the database {path}")
            elif url.get_backend_name() == "postgresql":
                await self._lock_postgres()
        except BaseException:
            await self.release()
            raise

    def _lock_file(self, path: Path, what: str) -> None:
        try:
            f = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (held open while running)
        except OSError as exc:
            raise StartupError(f"cannot open the lock file {path} ({exc.strerror}); check the "
                               "permissions of state_dir / the database's directory") from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise LockHeld(
                f"another campaignd (pid {holder}) is running on {what}; stop it first "
                "(`systemctl stop campaignd`), or give this one a state_dir and a database of "
                "its own", holder=holder, what=what) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._files.append(f)

    async def _take_postgres(self) -> bool:
        """A new connection, and the advisory lock on it; whether it was free (the connection
        is kept either way, for the next try)."""
        from sqlalchemy.ext.asyncio import create_async_engine
        from sqlalchemy.pool import NullPool

        if self._engine is None:
            self._engine = create_async_engine(self.database_url, poolclass=NullPool)
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None
        with anyio.fail_after(10):
            self._conn = await self._engine.connect()
            got = (await self._conn.execute(text("SELECT pg_try_advisory_lock(:k)"),
                                            {"k": ADVISORY_KEY})).scalar()
            await self._conn.commit()
        return bool(got)

    async def check(self) -> str:
        """Whether the PostgreSQL advisory lock is still held: ``"held"`` (or no PostgreSQL),
        ``"retaken"`` (its connection was lost and the lock is taken again) or
        ``"unreachable"`` (the server does not answer: tried again at the next check). Raises
        ``LockLost`` when another campaignd holds it now."""
        if self._engine is None:
            return "held"
        if self._conn is not None:
            try:
                with anyio.fail_after(10):
                    held = (await self._conn.execute(text(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                        "AND pid = pg_backend_pid() AND granted "
                        "AND classid::bigint = :hi AND objid::bigint = :lo AND objsubid = 1"),
                        {"hi": (ADVISORY_KEY >> 32) & 0xFFFFFFFF,
                         "lo": ADVISORY_KEY & 0xFFFFFFFF})).scalar()
                    await self._conn.commit()
                if held:
                    return "held"
            except Exception as exc:
                from campaignd.stores.opening import short_error
                log.warning("the database connection holding the daemon's lock was lost; "
                            "taking the lock again", error=short_error(exc))
        try:
            got = await self._take_postgres()
        except Exception as exc:
            from campaignd.stores.opening import short_error
            self._conn = None
            self._unreachable.failed(short_error(exc), database=self.shown_url)
            return "unreachable"
        self._unreachable.ok("the database answers again", database=self.shown_url)
        if not got:
            raise LockLost(
                "another campaignd took this database's lock while this one's connection to it "
                "was lost; this one stops so that only one decides and writes to the DSP "
                "(stop the other one first to run this one)")
        log.warning("the daemon's database lock was lost (the server restarted or dropped the "
                    "connection) and is held again", database=self.shown_url)
        return "retaken"

    async def watch(self, interval_s: float = 30.0, *,
                    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Check the lock every ``interval_s`` (see ``check``); raises ``LockLost``."""
        task_status.started()
        if self._engine is None:
            return
        while True:
            await anyio.sleep(interval_s)
            await self.check()

    async def _lock_postgres(self) -> None:
        try:
            got = await self._take_postgres()
        except Exception as exc:
            from campaignd.stores.opening import short_error
            raise StartupError(f"cannot reach the database at {self.shown_url} to take the "
                               f"daemon's lock: {short_error(exc)}; check database.url and that "
                               "the server is running") from None
        if not got:
            raise LockHeld(
                "another campaignd is running on this database (maybe on another host); stop "
                "it first (`systemctl stop campaignd`), or give this one a database of its own",
                what=f"the database {self.shown_url} (maybe on another host)")

    async def release(self) -> None:
        for f in self._files:
            with contextlib.suppress(OSError):
                f.close()  # (closing drops the flock)
        self._files.clear()
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None
        if self._engine is not None:
            with contextlib.suppress(Exception):
                await self._engine.dispose()
            self._engine = None


__all__ = ["ADVISORY_KEY", "LOCK_FILE", "DaemonLock", "LockHeld", "LockLost"]
