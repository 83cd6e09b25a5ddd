"""The Redis hot store (``redis.asyncio``): shared by processes, writes pipelined.

Key scheme (``P`` is the configurable prefix, ``campaignd:`` by default; campaign and cell ids
never contain ``:``)::

    P json:{key}                               string  JSON record (set_json), optional PX TTL
    P seen:{namespace}:{id}                    string  the stream position, or "1" (mark_seen),
                                                       PX ttl
    P seenh:{namespace}:{event_hour}           hash    id -> stream position, or "-1" (mark_seen
                                                       with hours), EXPIRE ttl after the last
                                                       new mark
    P cells:{campaign_id}                      set     cell ids that have running totals
    P tot:{campaign_id}:{cell_id}              hash    metric -> running total (no expiry)
    P s:{campaign_id}:{cell_id}:{epoch_s}      hash    metric -> count in that second,
                                                       EXPIRE min(ttl, 30 min)
    P m:{campaign_id}:{cell_id}:{epoch_min}    hash    metric -> count in that minute
                                                       (epoch_min = epoch_s // 60), EXPIRE ttl

Buckets are one small hash per cell and second/minute that had events, so memory follows the
event rate, not the cell count; the 24 h TTL bounds it.

The batch operations (``mark_seen``, ``add_buckets``, ``set_totals``) are Lua scripts taking
their whole batch as one JSON argument: one round trip and one command to encode, however many
ids or buckets (a pipeline of one command per id costs the client ~5 µs an id). Scripts name
keys they build themselves, so the store needs a standalone Redis (or one with every key in one
cluster slot), not a Redis Cluster.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import numpy as np
from redis.asyncio import Redis
from redis.exceptions import RedisError

from campaignd.errors import StorageError
from campaignd.stores.base import (
    BUCKET_TTL_S,
    SECOND_BUCKET_TTL_S,
    HotStore,
    check_ttl,
    window_buckets,
)

DEFAULT_PREFIX = "campaignd:"

_MARK_SEEN = """
local pre, ttl = ARGV[1], ARGV[2]
local ids = cjson.decode(ARGV[3])
local out = {}
if ARGV[4] == '' then
  for i = 1, #ids do
    if redis.call('SET', pre .. ids[i], '1', 'NX', 'PX', ttl) then out[i] = '1'
    else out[i] = '0' end
  end
else
  local pos = cjson.decode(ARGV[4])
  for i = 1, #ids do
    local p = pos[i]
    local old = redis.call('SET', pre .. ids[i], p, 'NX', 'GET', 'PX', ttl)
    if not old or old == p then out[i] = '1' else out[i] = '0' end
  end
end
return table.concat(out)
"""

_MARK_SEEN_HOURS = """
local pre, ttl, positioned = ARGV[1], tonumber(ARGV[2]), ARGV[3] == '1'
local groups = cjson.decode(ARGV[4])
local out = {}
for g = 1, #groups do
  local key = pre .. groups[g][1]
  local ids, pos, idx = groups[g][2], groups[g][3], groups[g][4]
  local remap = #idx > 0
  local new, now = {}, {}
  local n = #ids
  local i = 1
  while i <= n do
    local j = math.min(i + 3999, n)
    local vals = redis.call('HMGET', key, unpack(ids, i, j))
    for k = i, j do
      local id, p, old = ids[k], pos[k], vals[k - i + 1]
      local mine, r = now[id], '0'
      if mine ~= nil then
        if positioned and mine == p then r = '1' end
      elseif not old then
        r = '1'; now[id] = p; new[#new + 1] = id; new[#new + 1] = p
      elseif positioned and old == p then
        r = '1'; now[id] = p
      else
        now[id] = old
      end
      if remap then out[idx[k]] = r else out[k] = r end
    end
    i = j + 1
  end
  for k = 1, #new, 4000 do
    redis.call('HSET', key, unpack(new, k, math.min(k + 3999, #new)))
  end
  if #new > 0 then redis.call('EXPIRE', key, ttl) end
end
return table.concat(out)
"""

_ADD_BUCKETS = """
local pre = ARGV[1]
local rows = cjson.decode(ARGV[2])
for i = 1, #rows do
  local key, mv = pre .. rows[i][1], rows[i][2]
  for j = 1, #mv, 2 do redis.call('HINCRBY', key, mv[j], mv[j + 1]) end
  redis.call('EXPIRE', key, rows[i][3])
end
return #rows
"""

_SET_TOTALS = """
local pre, set = ARGV[1], ARGV[2]
local rows = cjson.decode(ARGV[3])
for i = 1, #rows do
  redis.call('HSET', pre .. rows[i][1], unpack(rows[i][2]))
  redis.call('SADD', set, rows[i][3])
end
return #rows
"""


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user, colon, _ = creds.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{host}" if creds else url


class RedisHotStore(HotStore):
    remote = True

    def __init__(self, client: Redis, *, prefix: str = DEFAULT_PREFIX,
                 where: str = "Redis", time_scale: float = 1.0) -> None:
        """Wrap ``client``, which must be built with ``decode_responses=True``.

        ``time_scale``: market seconds per real second (the sandbox's speed-up). Redis expires
        keys on its own, real clock, so the TTLs of marks and buckets -- market durations, as
        the daemon's clock runs -- are divided by it (a JSON record's TTL, a heartbeat's, is
        real time already)."""
        if not (math.isfinite(time_scale) and time_scale > 0):
            raise ValueError(f"time_scale must be a positive number, got {time_scale!r}")
        self.time_scale = float(time_scale)
        self._r = client
        self.prefix = prefix
        self._where = where
        self._mark_seen = client.register_script(_MARK_SEEN)
        self._mark_seen_hours = client.register_script(_MARK_SEEN_HOURS)
        self._add_buckets = client.register_script(_ADD_BUCKETS)
        self._set_totals = client.register_script(_SET_TOTALS)

    @classmethod
    def from_url(cls, url: str, *, prefix: str = DEFAULT_PREFIX, password: str | None = None,
                 timeout_s: float = 5.0, time_scale: float = 1.0) -> RedisHotStore:
        """Build a store for ``url`` (``redis://host:port/db``); connects lazily (see ``ping``).

        ``password`` is used when the URL carries none (redis-py lets the URL's win).
        """
        client = Redis.from_url(url, password=password, decode_responses=True,
                                socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        return cls(client, prefix=prefix, where=f"Redis at {mask_url(url)}",
                   time_scale=time_scale)

    def _real_s(self, ttl_s: float) -> int:
        """A market duration as whole real seconds for EXPIRE (at least 1)."""
        return max(1, round(ttl_s / self.time_scale))

    @asynccontextmanager
    async def _mapped(self, doing: str) -> AsyncIterator[None]:
        try:
            yield
        except (RedisError, OSError) as exc:
            raise StorageError(f"{self._where}: {doing} failed: {exc}; check that Redis is "
                               "running and the URL, password and database are right") from exc

    async def ping(self) -> None:
        async with self._mapped("ping"):
            await self._r.ping()

    async def close(self) -> None:
        await self._r.aclose()

    # --- JSON records ---------------------------------------------------------------------

    async def set_json(self, key: str, value: Mapping[str, Any],
                       ttl_s: float | None = None) -> None:
        px = None
        if ttl_s is not None:
            check_ttl(ttl_s)
            px = _ms(ttl_s)
        text = json.dumps(value)
        async with self._mapped("set_json"):
            await self._r.set(f"{self.prefix}json:{key}", text, px=px)

    async def get_json(self, key: str) -> dict[str, Any] | None:
        async with self._mapped("get_json"):
            text = await self._r.get(f"{self.prefix}json:{key}")
        return None if text is None else json.loads(text)

    # --- dedupe ---------------------------------------------------------------------------

    async def mark_seen(self, namespace: str, ids: Sequence[str], ttl_s: float, *,
                        positions: Sequence[int] | None = None,
                        hours: Sequence[int] | None = None) -> list[bool]:
        check_ttl(ttl_s)
        if not ids:
            return []
        # Positions travel as strings: Lua's cjson reads numbers as doubles (53 bits).
        pos = None if positions is None else [str(p) for p in positions]
        if hours is not None:
            return await self._mark_hours(namespace, ids, ttl_s, pos, hours)
        async with self._mapped("mark_seen"):
            reply = await self._mark_seen(args=[
                f"{self.prefix}seen:{namespace}:", _ms(ttl_s / self.time_scale),
                msgspec.json.encode(list(ids)),
                b"" if pos is None else msgspec.json.encode(pos)])
        return [c == "1" for c in reply]

    async def _mark_hours(self, namespace: str, ids: Sequence[str], ttl_s: float,
                          pos: list[str] | None, hours: Sequence[int]) -> list[bool]:
        """One hash per event hour: two commands per hour and batch (HMGET, HSET) instead of
        one per id — the per-call cost of Lua is most of the work otherwise."""
        h = np.asarray(hours, dtype=np.int64)
        ids = list(ids)
        positions = pos if pos is not None else ["-1"] * len(ids)
        groups: list[tuple[int, list[str], list[str], list[int]]] = []
        uniq, inv = np.unique(h, return_inverse=True)
        if uniq.size == 1:
            groups.append((int(uniq[0]), ids, positions, []))
        else:
            for g, hour in enumerate(uniq.tolist()):
                sel = np.flatnonzero(inv == g).tolist()
                groups.append((hour, [ids[i] for i in sel], [positions[i] for i in sel],
                               [i + 1 for i in sel]))
        async with self._mapped("mark_seen"):
            reply = await self._mark_seen_hours(args=[
                f"{self.prefix}seenh:{namespace}:", self._real_s(ttl_s),
                "1" if pos is not None else "0", msgspec.json.encode(groups)])
        return [c == "1" for c in reply]

    # --- per-cell counters and buckets ----------------------------------------------------

    def _cell_key(self, kind: str, campaign_id: str, cell_id: str) -> str:
        return f"{self.prefix}{kind}:{campaign_id}:{cell_id}"

    async def add_counts(self, campaign_id: str, counts: Mapping[str, Mapping[str, int]], *,
                         at_epoch_s: int, ttl_s: int = BUCKET_TTL_S) -> None:
        check_ttl(ttl_s)
        if not counts:
            return
        async with self._mapped("add_counts"), self._r.pipeline(transaction=False) as pipe:
            pipe.sadd(f"{self.prefix}cells:{campaign_id}", *counts.keys())
            for cell_id, metrics in counts.items():
                tot = self._cell_key("tot", campaign_id, cell_id)
                sec = f"{self._cell_key('s', campaign_id, cell_id)}:{at_epoch_s}"
                mnt = f"{self._cell_key('m', campaign_id, cell_id)}:{at_epoch_s // 60}"
                for metric, n in metrics.items():
                    pipe.hincrby(tot, metric, int(n))
                    pipe.hincrby(sec, metric, int(n))
                    pipe.hincrby(mnt, metric, int(n))
                if metrics:
                    pipe.expire(sec, self._real_s(min(ttl_s, SECOND_BUCKET_TTL_S)))
                    pipe.expire(mnt, self._real_s(ttl_s))
            await pipe.execute()

    async def add_buckets(self, campaign_id: str,
                          by_second: Mapping[int, Mapping[str, Mapping[str, int]]], *,
                          ttl_s: int = BUCKET_TTL_S) -> None:
        check_ttl(ttl_s)
        sec_ttl = self._real_s(min(ttl_s, SECOND_BUCKET_TTL_S))
        minutes: dict[tuple[int, str], dict[str, int]] = defaultdict(dict)
        rows: list[tuple[str, list[str], int]] = []
        for at, counts in by_second.items():
            for cell_id, metrics in counts.items():
                if not metrics:
                    continue
                flat: list[str] = []
                m_acc = minutes[(int(at) // 60, cell_id)]
                for metric, n in metrics.items():
                    flat += (metric, str(int(n)))
                    m_acc[metric] = m_acc.get(metric, 0) + int(n)
                rows.append((f"s:{campaign_id}:{cell_id}:{int(at)}", flat, sec_ttl))
        for (minute, cell_id), metrics in minutes.items():
            rows.append((f"m:{campaign_id}:{cell_id}:{minute}",
                         [x for m, n in metrics.items() for x in (m, str(n))],
                         self._real_s(ttl_s)))
        if not rows:
            return
        async with self._mapped("add_buckets"):
            for i in range(0, len(rows), 20_000):
                await self._add_buckets(args=[self.prefix,
                                              msgspec.json.encode(rows[i:i + 20_000])])

    async def set_totals(self, campaign_id: str,
                         totals: Mapping[str, Mapping[str, int]]) -> None:
        rows = [(f"tot:{campaign_id}:{cell}", [x for m, n in metrics.items()
                                               for x in (m, str(int(n)))], cell)
                for cell, metrics in totals.items() if metrics]
        if not rows:
            return
        async with self._mapped("set_totals"):
            for i in range(0, len(rows), 5000):
                await self._set_totals(args=[self.prefix, f"{self.prefix}cells:{campaign_id}",
                                             msgspec.json.encode(rows[i:i + 5000])])

    async def cell_totals(self, campaign_id: str, cell_id: str) -> dict[str, int]:
        async with self._mapped("cell_totals"):
            raw = await self._r.hgetall(self._cell_key("tot", campaign_id, cell_id))
        return _ints(raw)

    async def cell_window(self, campaign_id: str, cell_id: str, *, since_epoch_s: int,
                          until_epoch_s: int, now_epoch_s: int | None = None) -> dict[str, int]:
        kind, slots = window_buckets(since_epoch_s, until_epoch_s, now_epoch_s)
        if not slots:
            return {}
        base = self._cell_key(kind, campaign_id, cell_id)
        async with self._mapped("cell_window"), self._r.pipeline(transaction=False) as pipe:
            for slot in slots:
                pipe.hgetall(f"{base}:{slot}")
            buckets = await pipe.execute()
        out: dict[str, int] = {}
        for bucket in buckets:
            for metric, n in bucket.items():
                out[metric] = out.get(metric, 0) + int(n)
        return out

    async def campaign_totals(self, campaign_id: str) -> dict[str, dict[str, int]]:
        async with self._mapped("campaign_totals"):
            members = await self._r.smembers(f"{self.prefix}cells:{campaign_id}")
            cells = sorted(str(m) for m in members)
            if not cells:
                return {}
            async with self._r.pipeline(transaction=False) as pipe:
                for cell_id in cells:
                    pipe.hgetall(self._cell_key("tot", campaign_id, cell_id))
                rows = await pipe.execute()
        return {cell: _ints(row) for cell, row in zip(cells, rows, strict=True)}


def _ints(raw: Mapping[Any, Any]) -> dict[str, int]:
    return {str(k): int(v) for k, v in raw.items()}


def _ms(ttl_s: float) -> int:
    return max(1, round(ttl_s * 1000))
