"""The receiver for Beeswax's log push over real HTTP on loopback (uvicorn), its durable
spool, and the event feed counting the spool into SQL: every body format, every refusal, and
a crash between commits that neither loses nor double-counts an acknowledged event."""

from __future__ import annotations

import gzip
import json
import random
import resource
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import anyio
import httpx
import pytest

from campaignd.clock import VirtualClock
from campaignd.domain.campaign import CampaignSpec, atomize
from campaignd.errors import ConfigError
from campaignd.metrics import Metrics
from campaignd.pipeline.ingest import Pipeline, restore
from campaignd.pipeline.ingestor import EventIngestor
from campaignd.pipeline.registry import Registry
from campaignd.pipeline.spool import Spool, SpoolFeed
from campaignd.settings import load_settings, secret_values
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
async def receiver(spool: Spool, *, max_body_bytes: int = 1 << 20,
                   previous_token: str | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """The receiver app served by uvicorn on a free loopback port; a client for it."""
    refused: list[str] = []
    app = create_receiver_app(spool, token=TOKEN, path=PATH, max_body_bytes=max_body_bytes,
                              on_refused=refused.append, previous_token=previous_token)
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
    # an array that does not decode (a bad element, several arrays, a cut-off end): its
    # elements, each kept, so that one bad message does not take the good ones with it
    assert split_messages(b"[" + a + b",\n" + b + b",]") == [a, b]
    assert split_messages(b"[" + a + b"]\n[" + b + b"]") == [a, b]
    assert split_messages(b"[" + a + b", NaN, " + b + b"]") == [a, b"NaN", b]
    assert split_messages(b"[" + a + b"," + b + b',{"clicks": [{"auc') == [
        a, b, b'{"clicks": [{"auc']
    tricky = b'{"impression": {"auctionid_str": "a,]}\\"[{"}}'  # brackets inside a string
    assert split_messages(b"[" + tricky + b"," + b + b",1e999x]") == [tricky, b, b"1e999x"]
    assert split_messages(b"[" + a + b"] stray [" + b + b"]") == [a, b"stray", b]
    # nested deeper than the decoder goes: kept whole, not an error
    deep = b"[" * 5000 + b"]" * 5000
    assert split_messages(deep) == [deep[1:-1]]
    assert split_messages(b"[" + a + b"," + deep + b"]") == [a, deep]
    deep_obj = b'{"impression": ' + b'{"x": ' * 5000 + b"1" + b"}" * 5001
    assert split_messages(deep_obj + b"\n" + a) == [deep_obj, a]
    assert split_messages(b'{\n  "clicks": []\n}') == [b'{\n  "clicks": []\n}']
    assert split_messages(b"\xef\xbb\xbf" + a + b"\n" + b) == [a, b]  # a UTF-8 BOM
    assert split_messages(b" \n ") == []


async def test_the_previous_token_is_taken_while_it_is_rotated(tmp_path: Path) -> None:
    msg = impression_message(1, line_item=100, ts_usecs=NOW_US)
    spool = Spool(tmp_path / "spool")
    spool.open()
    async with receiver(spool, previous_token="the-old-one") as client:
        for token, status in ((TOKEN, 200), ("the-old-one", 200), ("the-oldest-one", 403)):
            r = await client.post(PATH, content=msg,
                                  headers={"authorization": f"Bearer {token}"})
            assert r.status_code == status, (token, r.text)
    assert len(held(spool)) == 2
    # the settings: both secrets, never the same, never empty; both scrubbed from logs
    base = {"CAMPAIGND_RECEIVER__TOKEN": "new-token-123"}
    s = load_settings(None, environ={**base, "CAMPAIGND_RECEIVER__PREVIOUS_TOKEN": "old-tok-9"})
    assert {"new-token-123", "old-tok-9"} <= set(secret_values(s))
    for bad, needle in (("new-token-123", "the same as receiver.token"), (" ", "is empty")):
        with pytest.raises(ConfigError, match=needle):
            load_settings(None, environ={**base, "CAMPAIGND_RECEIVER__PREVIOUS_TOKEN": bad})


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
        # a slash too many: a 404 naming the push URL, never a redirect repeating ?token=
        r = await client.post(f"{PATH}/?token=t0k", content=msg, headers=AUTH)
        assert r.status_code == 404 and PATH in r.json()["fix"], r.text
        assert "location" not in r.headers
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


async def test_a_full_spool_is_logged_when_it_starts_and_ends_not_for_every_push(
        tmp_path: Path) -> None:
    """While the feed is behind and the spool full, Beeswax retries its pushes several a
    second: each gets its 503, but the log has one line when the spool fills and one when it
    takes pushes again."""
    from structlog.testing import capture_logs

    msg = impression_message(1, line_item=100, ts_usecs=NOW_US)
    spool = Spool(tmp_path / "spool", max_bytes=len(msg) + 8 + 50)  # room for one message
    spool.open()
    with capture_logs() as logs:
        async with receiver(spool) as client:
            assert (await client.post(PATH, content=msg, headers=AUTH)).status_code == 200
            for _ in range(20):
                r = await client.post(PATH, content=msg, headers=AUTH)
                assert r.status_code == 503
            spool.release(spool.next_seq)  # the feed caught up
            assert (await client.post(PATH, content=msg, headers=AUTH)).status_code == 200
    events = [e["event"] for e in logs if e["event"].startswith("receiver: the spool")]
    assert events == ["receiver: the spool is full; asking the sender to retry",
                      "receiver: the spool takes pushes again"]



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


async def test_hostile_bodies_are_spooled_whole_or_refused_with_json(tmp_path: Path) -> None:
    """What a sender or a misconfigured proxy may send: nothing answers 500 (Beeswax would
    retry a poison body forever), nothing valid is refused with a 4xx (Beeswax drops it), and
    every refusal is JSON naming the field and the fix."""
    spool = Spool(tmp_path / "spool")
    spool.open()
    a, b = (impression_message(i, line_item=100, ts_usecs=NOW_US) for i in range(2))
    deep = b'{"impression": ' + b'{"x": ' * 5000 + b"1" + b"}" * 5001
    async with receiver(spool) as client:
        async def push(content: bytes, **headers: str) -> httpx.Response:
            return await client.post(PATH, content=content, headers={**AUTH, **headers})

        # nested deeper than the decoder goes: spooled for the pipeline to dead-letter
        for body, n in ((deep, 1), (deep + b"\n" + a, 2), (b"[" + a + b"," + deep + b"]", 2)):
            r = await push(body)
            assert r.status_code == 200 and r.json()["accepted"] == n, r.text
        # one bad element of an array keeps the good ones apart from it
        r = await push(b"[" + a + b", NaN, " + b + b"]")
        assert r.json()["accepted"] == 3
        # JSON labelled as generic binary (a proxy's default): taken, not dropped with a 415
        r = await push(a, **{"content-type": "application/octet-stream"})
        assert r.status_code == 200, r.text
        r = await push(gzip.compress(a), **{"content-type": "application/octet-stream"})
        assert r.status_code == 200, r.text
        r = await push(b"\x0a\x03abc", **{"content-type": "application/octet-stream"})
        assert r.status_code == 415 and r.json()["field"] == "Content-Type"
        # gzip whose Content-Encoding a proxy dropped (or that says application/gzip)
        r = await push(gzip.compress(a + b"\n" + b), **{"content-type": "application/gzip"})
        assert r.json()["accepted"] == 2
        r = await push(gzip.compress(b), **{"content-encoding": "identity"})
        assert r.json()["accepted"] == 1
        next_seq = spool.next_seq
        # a wrong path or method: JSON that names the push URL
        r = await client.post("/beeswax/event", content=a, headers=AUTH)
        assert r.status_code == 404 and "/beeswax/events" in r.json()["fix"]
        r = await client.get(PATH, headers=AUTH)
        assert r.status_code == 405 and r.json()["field"] == "method"
    assert spool.next_seq == next_seq
    got = held(spool)
    assert got[:5] == [deep, deep, a, a, deep]
    assert got[5:8] == [a, b"NaN", b]
    assert got[8:] == [a, a, a, b, b]


async def test_concurrent_pushes_are_each_held_once(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", segment_bytes=4096)
    spool.open()
    msgs = [impression_message(i, line_item=100, ts_usecs=NOW_US) for i in range(400)]
    answers: list[dict[str, int]] = []
    async with receiver(spool) as client:
        async def push(i: int) -> None:
            r = await client.post(PATH, content=b"\n".join(msgs[i * 10:i * 10 + 10]),
                                  headers=AUTH)
            assert r.status_code == 200
            answers.append(r.json())

        async with anyio.create_task_group() as tg:
            for i in range(40):
                tg.start_soon(push, i)
    assert sorted(a["first_seq"] for a in answers) == list(range(0, 400, 10))
    got = held(spool)
    assert sorted(got) == sorted(msgs)
    for answer in answers:  # each push's messages together, at the positions it was told
        first = answer["first_seq"]
        block = got[first:first + 10]
        assert block == msgs[msgs.index(block[0]):msgs.index(block[0]) + 10]


async def test_a_full_disk_is_a_503_and_acknowledges_nothing(tmp_path: Path) -> None:
    """The file-size limit (RLIMIT_FSIZE) makes the kernel refuse the spool's writes (EFBIG)
    as a full disk would (ENOSPC): the receiver answers 503 + Retry-After, keeps no part of the
    batch, and takes the retried batch once there is room again."""
    msg = impression_message(1, line_item=100, ts_usecs=NOW_US)
    spool = Spool(tmp_path / "spool")
    spool.open()
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a signal
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    try:
        async with receiver(spool) as client:
            r = await client.post(PATH, content=msg, headers=AUTH)
            assert r.status_code == 200
            size = (tmp_path / "spool" / f"{0:020d}.spool").stat().st_size
            resource.setrlimit(resource.RLIMIT_FSIZE, (size + 2 * len(msg), hard))
            r = await client.post(PATH, content=b"\n".join([msg] * 5), headers=AUTH)
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            assert r.status_code == 503 and r.headers["retry-after"] == "30"
            assert "spool" in r.json()["error"] and r.json()["fix"]
            assert spool.next_seq == 1
            r = await client.post(PATH, content=b"\n".join([msg] * 5), headers=AUTH)
            assert r.json() == {"accepted": 5, "first_seq": 1}
            refused = client.refused  # type: ignore[attr-defined]
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert refused == ["spool_error"]
    assert held(spool) == [msg] * 6
    spool.close()
    reopened = Spool(tmp_path / "spool")
    reopened.open()  # no torn or half-written record left behind
    assert held(reopened) == [msg] * 6


async def test_a_hostile_push_counts_the_good_and_dead_letters_the_rest(
        tmp_path: Path, sql_store: SqlStore, seed_spec: CampaignSpec,
        virtual_clock: VirtualClock) -> None:
    """Bad messages among good ones, pushed as Beeswax or a proxy might, through the receiver,
    the spool and the event feed into SQL: the good ones are counted once (redeliveries
    across requests are duplicates), each bad one is a dead letter with its reason and
    payload, and the feed does not stall on any of them."""
    virtual_clock.set(NOW)
    cells = atomize(seed_spec)
    await sql_store.upsert_campaign(seed_spec, cells, now=NOW)
    line_items = {100 + i: c.cell_id for i, c in enumerate(cells[:5])}
    good = [impression_message(i, line_item=100 + i % 5, ts_usecs=NOW_US - 1000)
            for i in range(20)]
    good.append(conversion_message("cv-ok", line_item=100, ts_usecs=NOW_US - 1000,
                                   value="12.345678"))
    hour_us = 3600 * 1_000_000
    bad = {
        b'{"impression": ' + b'{"x": ' * 5000 + b"1" + b"}" * 5001: "invalid_field",
        conversion_message("cv-overflow", line_item=100, ts_usecs=NOW_US,
                           value="1e999999999"): "bad_money",
        conversion_message("cv-slow", line_item=100, ts_usecs=NOW_US,
                           value="1e999990"): "bad_money",
        conversion_message("cv-nan", line_item=100, ts_usecs=NOW_US, value="NaN"): "bad_money",
        impression_message(900, line_item=100, ts_usecs=NOW_US,
                           price_micros="-1"): "bad_money",
        impression_message(901, line_item=100, ts_usecs=NOW_US,
                           price_micros="1e999"): "bad_money",
        impression_message(902, line_item=100, ts_usecs=NOW_US,
                           price_micros="9" * 40): "bad_money",
        impression_message(903, line_item=100,
                           ts_usecs=NOW_US + 2 * hour_us): "timestamp_in_future",
        impression_message(904, line_item=100,
                           ts_usecs=NOW_US - 100 * hour_us): "timestamp_too_old",
        impression_message(905, line_item=999, ts_usecs=NOW_US): "unknown_line_item",
        b'{"impression": {"win_price_micros_usd": 25000.5}}': "invalid_field",
        b'{"impression": {"auction_adgroup_id": "x.1.7.100", "rx_timestamp_usecs": "\xff"}}':
            "malformed_json",
    }
    bad_list = list(bad)
    spool = Spool(tmp_path / "spool")
    spool.open()
    async with receiver(spool) as client:
        bodies = [
            b"\n".join(good[:7] + bad_list[:6]),  # newline-delimited
            b"[" + b",".join(good[7:14] + bad_list[6:9]) + b", NaN]",  # one line, bad element
            gzip.compress(b"\n".join(good[14:] + bad_list[9:])),
            b"\n".join(good[:10]),  # a redelivery of what was taken
        ]
        for i, body in enumerate(bodies):
            headers = {**AUTH, "content-encoding": "gzip"} if i == 2 else AUTH
            r = await client.post(PATH, content=body, headers=headers)
            assert r.status_code == 200, r.text

    registry = Registry()
    registry.add_campaign(seed_spec, cells)
    registry.register(seed_spec.id, line_items)
    pipe = Pipeline(registry, InMemoryHotStore(virtual_clock), clock=virtual_clock,
                    metrics=Metrics())
    ing = EventIngestor(adapter=SpoolFeed(spool), sql=sql_store, pipeline=pipe,
                        clock=virtual_clock, metrics=Metrics(), batch=8,
                        checkpoint=CHECKPOINT)
    with anyio.fail_after(30):
        while await ing.poll_once():
            pass
    await ing.flush()
    assert ing.committed_cursor == str(spool.next_seq)

    got = counter_totals(await sql_store.read_cell_totals(seed_spec.id))
    assert got["impressions"] == 20 and got["spend_micros"] == 20 * 25_000
    assert got["conversions"] == 1 and got["conversion_value_micros"] == 12_345_678
    assert pipe.stats.duplicates == 10
    expected: dict[str, int] = {}
    for reason in [*bad.values(), "malformed_json"]:  # the array's NaN element
        expected[reason] = expected.get(reason, 0) + 1
    assert await sql_store.dead_letter_counts() == expected
    letters = {le.raw: le.reason for le in await sql_store.list_dead_letters(limit=100)}
    assert letters == {**bad, b"NaN": "malformed_json"}


async def test_a_sender_gone_mid_body_is_no_server_error(tmp_path: Path) -> None:
    """A push cut off mid-body (a sender's timeout, a proxy) keeps nothing and is counted as
    such — not an unhandled exception with a traceback in the log for each one."""
    spool = Spool(tmp_path / "spool")
    spool.open()
    async with receiver(spool) as client:
        stream = await anyio.connect_tcp("127.0.0.1", client.base_url.port or 80)
        await stream.send(f"POST {PATH} HTTP/1.1\r\nHost: campaignd\r\nAuthorization: Bearer "
                          f"{TOKEN}\r\nContent-Length: 1000\r\n\r\n{{\"impression\":".encode())
        await stream.aclose()
        with anyio.fail_after(10):
            while not client.refused:  # type: ignore[attr-defined]
                await anyio.sleep(0.01)
        assert client.refused == ["disconnected"]  # type: ignore[attr-defined]
    assert spool.next_seq == 0
