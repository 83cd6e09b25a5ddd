"""Opening the configured stores: the SQL database and the hot store.

Light on purpose (no agents, no web app): the CLI's store-backed commands (``campaign list``,
``actions``, ``replay``, ``deadletter``, ``status``) import it without paying for the daemon's
imports (scipy alone is about a second).
"""

from __future__ import annotations

import contextlib

import anyio
from sqlalchemy.engine import make_url

from campaignd.clock import Clock
from campaignd.errors import StartupError
from campaignd.settings import Settings
from campaignd.stores.base import HotStore
from campaignd.stores.sql.repository import SqlStore


def database_url(settings: Settings) -> str:
    """The database URL with the secret password filled in (never log the result)."""
    url = make_url(settings.database.url)
    if settings.database.password is not None:
        url = url.set(password=settings.database.password.get_secret_value())
    return url.render_as_string(hide_password=False)


def masked_database_url(settings: Settings) -> str:
    return make_url(settings.database.url).render_as_string(hide_password=True)


async def open_sql(settings: Settings) -> SqlStore:
    """The configured database, upgraded first unless ``database.upgrade_on_start`` is off
    (for the CLI's store-backed commands)."""
    from campaignd.stores.sql.migrate import upgrade
    url = database_url(settings)
    if settings.database.upgrade_on_start:
        await upgrade(url)
    return await SqlStore.connect(url)


async def open_hot_store(settings: Settings, clock: Clock) -> HotStore:
    """The hot store named by ``redis.url``: Redis when set, in-memory otherwise."""
    if not settings.redis.url:
        from campaignd.stores.memory import InMemoryHotStore
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        return InMemoryHotStore(clock=clock, max_seen=settings.pipeline.max_seen,
                                seen_dir=settings.state_dir / "dedupe-marks")
    from campaignd.stores.redis import RedisHotStore
    password = settings.redis.password.get_secret_value() if settings.redis.password else None
    store = RedisHotStore.from_url(settings.redis.url, prefix=settings.redis.key_prefix,
                                   password=password)
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
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def short_error(exc: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


__all__ = ["database_url", "make_url_safe", "masked_database_url", "open_hot_store", "open_sql",
           "short_error"]
