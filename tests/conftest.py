"""Root fixtures: real services (Redis, PostgreSQL) isolated per test, backends, the seed campaign.

Services come from ``CAMPAIGND_TEST_REDIS_URL`` and ``CAMPAIGND_TEST_DATABASE_URL`` (defaults:
the standard local ports). A missing service fails the run under ``CI=true`` and skips the tests
that need it elsewhere, saying how to provide it.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import pytest

from campaignd.clock import VirtualClock
from campaignd.domain.campaign import CampaignSpec, load_spec
from campaignd.stores.base import HotStore

if TYPE_CHECKING:
    from campaignd.stores.sql import SqlStore

ROOT = Path(__file__).resolve().parent.parent
SEED_SPEC_PATH = ROOT / "config" / "campaigns" / "madhive_12345.toml"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/15"
DEFAULT_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
VIRTUAL_START = datetime(2026, 11, 15, 12, 0, tzinfo=UTC)

T = TypeVar("T")


def _unavailable(message: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def run_in_thread(make: Callable[[], Coroutine[Any, Any, T]], timeout_s: float = 30) -> T:
    """Run a coroutine on a private event loop in a worker thread and return its result.

    Lets synchronous fixtures do async set-up whatever event loop (if any) the test runs on.
    """
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result(timeout_s)


# --- Redis ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of a reachable Redis (checked once per session)."""
    import redis

    url = os.environ.get("CAMPAIGND_TEST_REDIS_URL", DEFAULT_REDIS_URL)
    client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        _unavailable(f"Redis not reachable at {url} ({exc}); start one with "
                     "`redis-server --port 6379` or set CAMPAIGND_TEST_REDIS_URL")
    finally:
        client.close()
    return url


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own; every key under it is deleted afterwards."""
    import redis

    prefix = f"campaignd:test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = redis.Redis.from_url(redis_url, socket_timeout=10)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i:i + 1000])
    finally:
        client.close()


# --- SQL -----------------------------------------------------------------------------------


def _asyncpg_dsn(url: str, database: str | None = None) -> str:
    from sqlalchemy.engine import make_url

    u = make_url(url).set(drivername="postgresql")
    if database is not None:
        u = u.set(database=database)
    return u.render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def _postgres_server() -> str:
    """URL of a reachable PostgreSQL server (checked once per session)."""
    import asyncpg

    url = os.environ.get("CAMPAIGND_TEST_DATABASE_URL", DEFAULT_DATABASE_URL)

    async def check() -> None:
        conn = await asyncpg.connect(_asyncpg_dsn(url), timeout=5)
        await conn.close()

    try:
        run_in_thread(check)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        _unavailable(f"PostgreSQL not reachable at {url} ({exc}); start one (e.g. "
                     "`docker run -p 5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust postgres`) "
                     "or set CAMPAIGND_TEST_DATABASE_URL")
    return url


@pytest.fixture
def postgres_url(_postgres_server: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test (created here, dropped afterwards)."""
    import asyncpg
    from sqlalchemy.engine import make_url

    name = f"campaignd_test_{uuid.uuid4().hex[:12]}"
    admin = _asyncpg_dsn(_postgres_server)

    async def execute(sql: str) -> None:
        conn = await asyncpg.connect(admin, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    run_in_thread(lambda: execute(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(_postgres_server).set(database=name).render_as_string(hide_password=False)
    finally:
        run_in_thread(lambda: execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite database file (not yet created) in the test's temporary directory."""
    return f"sqlite+aiosqlite:///{tmp_path / 'campaignd.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def sql_url(request: pytest.FixtureRequest) -> str:
    """An empty database on each SQL backend, in turn."""
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture
async def sql_store(sql_url: str) -> AsyncIterator[SqlStore]:
    """A ``SqlStore`` on a database migrated to head, on each SQL backend."""
    from campaignd.stores.sql import SqlStore, upgrade

    await upgrade(sql_url)
    store = await SqlStore.connect(sql_url)
    try:
        yield store
    finally:
        await store.close()


# --- hot store -----------------------------------------------------------------------------


@pytest.fixture
def virtual_clock() -> VirtualClock:
    """A virtual clock at 2026-11-15 12:00 UTC; moves only with ``advance``/``set``."""
    return VirtualClock(VIRTUAL_START)


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def hot_store(request: pytest.FixtureRequest,
                    virtual_clock: VirtualClock) -> AsyncIterator[HotStore]:
    """Each hot store in turn: in-memory on ``virtual_clock``, and Redis under a test prefix."""
    from campaignd.stores.memory import InMemoryHotStore
    from campaignd.stores.redis import RedisHotStore

    store: HotStore
    if request.param == "memory":
        store = InMemoryHotStore(virtual_clock)
    else:
        store = RedisHotStore.from_url(request.getfixturevalue("redis_url"),
                                       prefix=request.getfixturevalue("redis_prefix"))
    await store.ping()
    try:
        yield store
    finally:
        await store.close()


# --- campaigns -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def seed_spec() -> CampaignSpec:
    """The seed campaign, ``config/campaigns/madhive_12345.toml`` (432 cells)."""
    return load_spec(SEED_SPEC_PATH)
