"""Stores: the hot store (memory | Redis) and the SQL store (SQLite | PostgreSQL).

The interface is ``campaignd.stores.base.HotStore``; ``campaignd.daemon`` picks the
implementation. The SQL store lives in ``campaignd.stores.sql`` (imported separately so that the
hot path does not load SQLAlchemy).
"""

from __future__ import annotations

from campaignd.stores.base import BUCKET_TTL_S, SECOND_WINDOW_MAX_S, HotStore
from campaignd.stores.memory import InMemoryHotStore
from campaignd.stores.redis import RedisHotStore

__all__ = ["BUCKET_TTL_S", "SECOND_WINDOW_MAX_S", "HotStore", "InMemoryHotStore",
           "RedisHotStore"]
