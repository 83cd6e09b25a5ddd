"""Programmatic Alembic: upgrade a database to the head revision, no alembic.ini needed.

``upgrade(url)`` is what ``campaignd db upgrade`` and the daemon's start-up call; it is safe to
run on every start (a database at head is left as it is).
"""

from __future__ import annotations

from pathlib import Path

import anyio
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError
from sqlalchemy import Connection, pool, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError

from campaignd.errors import StorageError
from campaignd.stores.sql.repository import (
    build_engine,
    check_sqlite_directory,
    error_reason,
    masked,
)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_FIX = ("check the database URL and that the server is running (SQLite: that the file's "
        "directory exists and is writable)")
_LOCK_KEY = 0x63616D706169676E  # "campaign": the advisory lock serializing upgrades


def alembic_config() -> Config:
    """An Alembic config pointing at the packaged migrations (for ``command.*`` calls)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str:
    """The newest revision shipped with this version of campaignd."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "no migrations packaged"
    return head


class _NewerSchema(Exception):
    def __init__(self, revision: str) -> None:
        super().__init__(revision)
        self.revision = revision


def _upgrade(connection: Connection, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    current = _current(connection)
    if current is not None:
        try:
            known = ScriptDirectory.from_config(config).get_revision(current)
        except (CommandError, RevisionError):
            known = None
        if known is None:  # written by a newer campaignd (alembic's own error: a traceback)
            raise _NewerSchema(current)
    command.upgrade(config, revision)


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


UPGRADE_TIMEOUT_S = 120.0


async def upgrade(url: str | URL, *, password: str | None = None, revision: str = "head") -> str:
    """Migrate the database at ``url`` to ``revision`` (default: head); return its revision now.

    Raises ``StorageError`` naming the URL (password masked) if the database cannot be reached
    or a migration fails; a failed migration leaves the database where it was (the whole
    upgrade is one transaction). Upgrades from several processes queue behind each other (an
    advisory lock on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite). Within one process, do not run
    two at once: Alembic's migration context is global.
    """
    engine = build_engine(url, password=password, poolclass=pool.NullPool)
    try:
        check_sqlite_directory(engine.url)
        # Never abandoned half-way (a signal during start-up waits for the migration to
        # commit or roll back); bounded so that a locked database cannot hang start-up.
        with anyio.CancelScope(shield=True), anyio.fail_after(UPGRADE_TIMEOUT_S):
            async with engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    # Two processes upgrading at once (daemon start, `campaignd db upgrade`):
                    # the second waits here, then finds the schema at head and does nothing.
                    await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                                       {"key": _LOCK_KEY})
                await conn.run_sync(_upgrade, revision)
                current = await conn.run_sync(_current)
    except TimeoutError:
        raise StorageError(f"cannot migrate the database at {masked(engine.url)}: it did not "
                           f"finish within {UPGRADE_TIMEOUT_S:g} s (is another process holding "
                           "a lock on it?)") from None
    except _NewerSchema as exc:
        raise StorageError(f"the database at {masked(engine.url)} has schema revision "
                           f"{exc.revision}, newer than this campaignd knows (its newest is "
                           f"{head_revision()}): upgrade campaignd, or point database.url at "
                           "another database") from None
    except (SQLAlchemyError, OSError) as exc:
        raise StorageError(f"cannot migrate the database at {masked(engine.url)}: "
                           f"{error_reason(exc)}; {_FIX}") from exc
    finally:
        await engine.dispose()
    assert current is not None
    return current


async def current_revision(url: str | URL, *, password: str | None = None) -> str | None:
    """The database's revision, or ``None`` if it was never migrated."""
    engine = build_engine(url, password=password, poolclass=pool.NullPool)
    try:
        check_sqlite_directory(engine.url)
        async with engine.connect() as conn:
            return await conn.run_sync(_current)
    except (SQLAlchemyError, OSError) as exc:
        raise StorageError(f"cannot read the schema revision of the database at "
                           f"{masked(engine.url)}: {error_reason(exc)}; {_FIX}") from exc
    finally:
        await engine.dispose()
