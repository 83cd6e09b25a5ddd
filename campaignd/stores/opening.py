"""Opening the configured stores: the SQL database and the hot store.

Light on purpose (no agents, no web app): the CLI's store-backed commands (``campaign list``,
``actions``, ``replay``, ``deadletter``, ``status``) import it without paying for the daemon's
imports (scipy alone is about a second).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import anyio
from sqlalchemy.engine import make_url

from campaignd.clock import Clock
from campaignd.errors import ConfigError, StartupError
from campaignd.settings import Settings, mask_url_password
from campaignd.stores.base import HotStore
from campaignd.stores.sql.repository import SqlStore


def database_url(settings: Settings) -> str:
    """The database URL with the secret password filled in (never log the result)."""
    url = make_url(settings.database.url)
    if settings.database.password is not None:
        url = url.set(password=settings.database.password.get_secret_value())
    return url.render_as_string(hide_password=False)


def masked_database_url(settings: Settings) -> str:
    """The database URL for messages and logs: no password, and a SQLite file's path made
    absolute (``./campaignd.db`` names another file from another directory)."""
    # (the password masked first as a URL parser reads it -- up to the last "@" --, then
    # SQLAlchemy's rendering: a password holding an "@" is hidden whole)
    url = make_url(mask_url_password(settings.database.url))
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        url = url.set(database=str(Path(url.database).resolve()))
    return url.render_as_string(hide_password=True)


async def open_sql(settings: Settings) -> SqlStore:
    """The configured database, upgraded first unless ``database.upgrade_on_start`` is off
    (for the CLI's store-backed commands)."""
    from campaignd.stores.sql.migrate import upgrade
    url = database_url(settings)
    if settings.database.upgrade_on_start:
        await upgrade(url)
    return await SqlStore.connect(url)


def ensure_writable_dir(path: Path, key: str) -> None:
    """Create the directory ``path`` (setting ``key``) if needed and check that this process can
    write in it; raise ``ConfigError`` (exit code 2) naming the key when it cannot."""
    env = "CAMPAIGND_" + key.upper().replace(".", "__")
    fix = (f"set {key} (or {env}) to a directory this user can create or write in, "
           f"e.g. /var/lib/campaignd")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".campaignd-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        what = "is not a directory" if isinstance(exc, FileExistsError | NotADirectoryError) \
            else f"cannot be created or written in ({exc.strerror})"
        raise ConfigError(what, field=key, value=str(path), fix=fix) from None


def prepare_directories(settings: Settings) -> None:
    """The directories the daemon writes in — ``state_dir``, and ``pipeline.parquet_dir`` and
    ``receiver.spool_dir`` when set — created and checked before the daemon starts, so that a
    bad one is a message naming its key, not a traceback after the database migration."""
    ensure_writable_dir(settings.state_dir, "state_dir")
    if settings.pipeline.parquet_dir is not None:
        ensure_writable_dir(settings.pipeline.parquet_dir, "pipeline.parquet_dir")
    if settings.receiver_enabled and settings.receiver.spool_dir is not None:
        ensure_writable_dir(settings.receiver.spool_dir, "receiver.spool_dir")


async def open_hot_store(settings: Settings, clock: Clock) -> HotStore:
    """The hot store named by ``redis.url``: Redis when set, in-memory otherwise."""
    if not settings.redis.url:
        from campaignd.stores.memory import InMemoryHotStore
        ensure_writable_dir(settings.state_dir, "state_dir")
        return InMemoryHotStore(clock=clock, max_seen=settings.pipeline.max_seen,
                                seen_dir=settings.state_dir / "dedupe-marks")
    from campaignd.stores.redis import RedisHotStore
    password = settings.redis.password.get_secret_value() if settings.redis.password else None
    # (in sandbox mode the daemon's clock runs at the market's speed; Redis expires in real
    # time)
    scale = settings.dsp.sandbox.time_scale if settings.dsp.adapter == "sandbox" else 1.0
    store = RedisHotStore.from_url(settings.redis.url, prefix=settings.redis.key_prefix,
                                   password=password, time_scale=scale)
    try:
        with anyio.fail_after(5):
            await store.ping()
    except Exception as exc:
        with contextlib.suppress(Exception):
            await store.close()
        raise StartupError(f"cannot reach Redis at {make_url_safe(settings.redis.url)}: "
                           f"{short_error(exc)}; start Redis or set redis.url = \"\" for the "
                           "in-memory hot store") from None
    return store


def make_url_safe(url: str) -> str:
    """``url`` for messages: its password masked whole (even one holding an "@")."""
    return mask_url_password(url)


def short_error(exc: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


__all__ = ["database_url", "ensure_writable_dir", "make_url_safe", "masked_database_url",
           "open_hot_store", "open_sql", "prepare_directories", "short_error"]
