"""The receiver for Beeswax's log push over real HTTP on loopback (uvicorn), its durable
spool, and the event feed counting the spool into SQL: every body format, every refusal, and
a crash between commits that neither loses nor double-counts an acknowledged event."""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import anyio
import httpx

from campaignd.clock import VirtualClock
from campaignd.domain.campaign import CampaignSpec, atomize
from campaignd.metrics import Metrics
from campaignd.pipeline.ingest import Pipeline, restore
from campaignd.pipeline.ingestor import EventIngestor
from campaignd.pipeline.registry import Registry
from campaignd.pipeline.spool import Spool, SpoolFeed
from campaignd.stores.memory import InMemoryHotStore
from campaignd.stores.sql import SqlStore
from campaignd.testing import conversion_message, counter_totals, impression_message
from campaignd.web.receiver import create_receiver_app, split_messages
from campaignd.web.server import bind_socket, serve_http

TOKEN = "receiver-token-for-tests"
PATH = "/beeswax/events"
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
NOW_US = int(NOW.timestamp() * 1_000_000)
CHECKPOINT = "events:receiver:test"


@asynccontextmanager
async def receiver(spool: Spool, *, max_body_bytes: int = 1 << 20
                   ) -> AsyncIterator[httpx.AsyncClient]:
    """The receiver app served by uvicorn on a free loopback port; a client for it."""
    refused: list[str] = []
    app = create_receiver_app(spool, token=TOKEN, path=PATH, max_body_bytes=max_body_bytes,
                              on_refused=refused.append)
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    async with anyio.create_task_group() as tg:
        await tg.start(serve_http, app, sock)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False,
                                     timeout=10) as client:
            # wait until uvicorn answers
            with anyio.fail_after(10):
                while True:
                    try:
                        await client.get("/healthz")
                        break
                    except httpx.TransportError:
                        await anyio.sleep(0.02)
            client.refused = refused  # type: ignore[attr-defined]
            yield client
        tg.cancel_scope.cancel()
    sock.close()


AUTH = {"authorization": f"Bearer {TOKEN}"}


def held(spool: Spool) -> list[bytes]:
    return spool.read(None, 10_000).messages


async def test_every_body_format_is_spooled_message_by_message(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.open()
    a, b, c = (impression_message(i, line_item=100, ts_usecs=NOW_US) for i in range(3))
    async with receiver(spool) as client:
        # newline-delimited, with a blank line and a malformed one (spooled as it is)
        r = await client.post(PATH, content=a + b"\n\n" + b"{not json\n" + b, headers=AUTH)
        assert r.status_code == 200, r.text
        assert r.json() == {"accepted": 3, "first_seq": 0}
        # a JSON array
        r = await client.post(PATH, content=b"[" + a + b"," + c + b"]", headers={
            **AUTH, "content-type": "application/json"})
        assert r.json() == {"accepted": 2, "first_seq": 3}
        # one pretty-printed message
        pretty = json.dumps(json.loads(c), indent=2).encode()
        r = await client.post(PATH, content=pretty, headers=AUTH)
        assert r.json() == {"accepted": 1, "first_seq": 5}
        # gzip, token in the query string
        r = await client.post(f"{PATH}?token={TOKEN}", content=gzip.compress(a + b"\n" + b),
                              headers={"content-encoding": "gzip",
                                       "content-type": "application/x-ndjson"})
        assert r.json() == {"accepted": 2, "first_seq": 6}
        # gzip of several members (as `cat a.gz b.gz` or a chunked compressor makes)
        r = await client.post(PATH, content=gzip.compress(a + b"\n") + gzip.compress(c),
                              headers={**AUTH, "content-encoding": "gzip"})
        assert r.json() == {"accepted": 2, "first_seq": 8}
        health = (await client.get("/healthz")).json()
    assert health["spool"]["next_seq"] == 10
    got = held(spool)
    assert got[:3] == [a, b"{not json", b]
    assert got[3:5] == [a, c]
    assert json.loads(got[5]) == json.loads(c)
    assert got[6:8] == [a, b]
    assert got[8:] == [a, c]


def test_bodies_split_into_messages() -> None:
    a, b = b'{"impression": {}}', b'{"clicks": []}'
    assert split_messages(b"[" + a + b"," + b + b"]") == [a, b]
    assert split_messages(a) == [a]
    assert split_messages(a + b"\r\n" + b + b"\n") == [a, b]
    # an array that does not decode (a bad element, several arrays): its lines, each kept
    assert split_messages(b"[" + a + b",\n" + b + b",]") == [b"[" + a + b",", b + b",]"]
    assert split_messages(b"[" + a + b"]\n[" + b + b"]") == [b"[" + a + b"]", b"[" + b + b"]"]
    assert split_messages(b'{\n  "clicks": []\n}') == [b'{\n  "clicks": []\n}']
    assert split_messages(b" \n ") == []


async def test_refusals_name_the_field_and_keep_nothing(tmp_path: Path) -> None:
    msg = impression_message(1, line_item=100, ts_usecs=NOW_US)
    spool = Spool(tmp_path / "spool", max_bytes=len(msg) + 8 + 50)  # room for one message
    spool.open()
    async with receiver(spool, max_body_bytes=2048) as client:
        r = await client.post(PATH, content=msg)
        assert r.status_code == 401 and r.json()["field"] == "Authorization"
        r = await client.post(PATH, content=msg, headers={"authorization": "Bearer nope"})
        assert r.status_code == 403 and r.json()["field"] == "Authorization"
        r = await client.post(f"{PATH}?token=nope", content=msg)
        assert r.status_code == 403
        r = await client.post(PATH, content=b"\x0a\x03abc", headers={
            **AUTH, "content-type": "application/x-protobuf"})
        assert r.status_code == 415 and "JSON" in r.json()["fix"]
        r = await client.post(PATH, content=b"x" * 5000, headers=AUTH)
        assert r.status_code == 413 and r.json()["field"] == "body"
        bomb = gzip.compress(b" " * 1_000_000)  # small on the wire, 1 MB inflated
        r = await client.post(PATH, content=bomb, headers={**AUTH, "content-encoding": "gzip"})
        assert r.status_code == 413
        r = await client.post(PATH, content=b"not gzip", headers={**AUTH,
                                                                  "content-encoding": "gzip"})
        assert r.status_code == 400 and r.json()["field"] == "Content-Encoding"
        cut = gzip.compress(msg * 3)[:-12]  # truncated: not acknowledged as if whole
        r = await client.post(PATH, content=cut, headers={**AUTH, "content-encoding": "gzip"})
        assert r.status_code == 400 and "truncated" in r.json()["error"]
        r = await client.post(PATH, content=b" \n \n", headers=AUTH)
        assert r.status_code == 400 and r.json()["field"] == "body"
        assert spool.next_seq == 0
        # full: 503 with Retry-After, nothing written; what fits is still taken
        r = await client.post(PATH, content=msg, headers=AUTH)
        assert r.status_code == 200
        r = await client.post(PATH, content=msg, headers=AUTH)
        assert r.status_code == 503 and r.headers["retry-after"] == "30"
        assert spool.next_seq == 1
        refused = client.refused  # type: ignore[attr-defined]
    assert refused == ["unauthenticated", "bad_token", "bad_token", "unsupported_format",
                       "too_large", "too_large", "bad_encoding", "bad_encoding", "empty",
                       "spool_full"]



async def test_a_crash_between_commits_loses_and_doubles_nothing_pushed(
        tmp_path: Path, sql_store: SqlStore, seed_spec: CampaignSpec,
        virtual_clock: VirtualClock) -> None:
    """Pushes (with redeliveries, as Beeswax retries), a commit, more counted but not
    committed, then the process dies; a new one opens the same spool from the committed
    cursor, more pushes arrive, and the totals are exactly the unique events."""
    virtual_clock.set(NOW)
    cells = atomize(seed_spec)
    await sql_store.upsert_campaign(seed_spec, cells, now=NOW)
    line_items = {100 + i: c.cell_id for i, c in enumerate(cells[:20])}
    rng = random.Random(3)
    msgs = []
    for i in range(150):
        li = rng.choice(list(line_items))
        msgs.append(impression_message(i, line_item=li, ts_usecs=NOW_US - 600_000_000 + i))
        if i % 10 == 0:
            msgs.append(conversion_message(f"cv-{i}", line_item=li, ts_usecs=NOW_US - 1000))
    part1 = msgs[:100] + rng.sample(msgs[:100], 20)
    part2 = msgs[100:] + rng.sample(msgs[:100], 10) + [b'{"impression": {"oops"']

    def run(spool: Spool) -> tuple[Pipeline, EventIngestor, Registry]:
        registry = Registry()
        registry.add_campaign(seed_spec, cells)
        registry.register(seed_spec.id, line_items)
        pipe = Pipeline(registry, InMemoryHotStore(virtual_clock, seen_dir=tmp_path / "marks"),
                        clock=virtual_clock, metrics=Metrics())
        return pipe, EventIngestor(adapter=SpoolFeed(spool), sql=sql_store, pipeline=pipe,
                                   clock=virtual_clock, metrics=Metrics(), batch=40,
                                   checkpoint=CHECKPOINT), registry

    directory = tmp_path / "spool"
    spool = Spool(directory, segment_bytes=4096)
    spool.open()
    async with receiver(spool) as client:
        for i in range(0, len(part1), 30):
            r = await client.post(PATH, content=b"\n".join(part1[i:i + 30]), headers=AUTH)
            assert r.status_code == 200
    _pipe, ing, _ = run(spool)
    ing.cursor = await sql_store.get_checkpoint(CHECKPOINT)
    await ing.poll_once()
    await ing.poll_once()
    await ing.flush()  # 80 messages committed
    assert ing.committed_cursor == "80"
    spool.release(80)
    while await ing.poll_once():
        pass  # the rest is counted in memory only: then the process dies (no flush)
    spool.close()

    spool = Spool(directory, segment_bytes=4096)
    committed = await sql_store.get_checkpoint(CHECKPOINT)
    spool.open(min_next_seq=int(committed or 0))
    assert spool.next_seq == len(part1)
    async with receiver(spool) as client:
        r = await client.post(PATH, content=b"\n".join(part2), headers=AUTH)
        assert r.json()["first_seq"] == len(part1)
    pipe, ing, registry = run(spool)
    await restore(pipe, sql_store, now=NOW)
    ing.cursor = committed
    while await ing.poll_once():
        pass
    await ing.flush()

    got = counter_totals(await sql_store.read_cell_totals(seed_spec.id))
    assert got["impressions"] == 150
    assert got["conversions"] == 15
    assert got["spend_micros"] == 150 * 25_000
    assert int(registry.tables[0].counts["impressions"].sum()) == 150
    assert pipe.stats.duplicates >= 10
    assert await sql_store.dead_letter_counts() == {"malformed_json": 1}
    [letter] = await sql_store.list_dead_letters()
    assert letter.raw == b'{"impression": {"oops"'
