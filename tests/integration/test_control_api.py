"""The control API's actions endpoints over real HTTP on loopback (uvicorn), through the
daemon's own ``DaemonPlane`` over a real SQL store (SQLite): bad input is refused with a JSON
error naming the field, and nothing is stored or changed by it."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx

from campaignd.clock import VirtualClock
from campaignd.control import DaemonPlane
from campaignd.domain.actions import MAX_NOTE_CHARS, Action, action_key
from campaignd.domain.campaign import atomize
from campaignd.stores.sql import SqlStore
from campaignd.stores.sql.migrate import upgrade
from campaignd.testing import SEED_SPEC
from campaignd.web.app import LOOPBACK_HOSTS, MAX_BODY_BYTES, allowed_hosts, create_app
from campaignd.web.server import bind_socket, serve_http

TOKEN = "control-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


class _Daemon:
    """What ``DaemonPlane`` reads of the daemon: its SQL store, its clock, its token."""

    def __init__(self, sql: SqlStore) -> None:
        self.sql = sql
        self.clock = VirtualClock(NOW)
        self.executor = None

    def status(self) -> dict[str, Any]:
        return {"state": "running", "healthy": True, "agents": []}

    def check_token(self, token: str) -> bool:
        return token == TOKEN


def _action(cell: str, decision: str, *, kind: str = "budget") -> Action:
    after: dict[str, Any] = ({"daily_budget_micros": 7_000_000,
                              "lifetime_budget_micros": 70_000_000} if kind == "budget"
                             else {"active": True, "line_item_id": 100})
    return Action(key=action_key(decision, cell, kind, after), decision_id=decision,
                  campaign_id="madhive_12345", cell_id=cell, line_item_id=100, kind=kind,
                  before={} if kind == "create" else {"daily_budget_micros": 5_000_000,
                                                      "lifetime_budget_micros": 70_000_000},
                  after=after, agent="sync" if kind == "create" else "reallocation",
                  reason="test", evidence={}, created_at=NOW, score=1.0, impact=2.0,
                  risk=0.1, priority=1.8)


@asynccontextmanager
async def control_api(tmp_path: Path, *, hosts: frozenset[str] | None = LOOPBACK_HOSTS
                      ) -> AsyncIterator[tuple[httpx.AsyncClient, SqlStore]]:
    """The control API on a free loopback port over a SQLite store holding 12 proposed
    actions (ids 1-12) and the sync's creation of a 13th cell's line item (id 13); ``hosts``:
    the ``Host`` names it answers to."""
    from campaignd.domain.campaign import load_spec

    url = f"sqlite+aiosqlite:///{tmp_path / 'api.db'}"
    await upgrade(url)
    sql = await SqlStore.connect(url)
    spec = load_spec(SEED_SPEC)
    cells = atomize(spec)
    await sql.upsert_campaign(spec, cells, now=NOW)
    await sql.record_actions([_action(cells[i].cell_id, "d1") for i in range(12)],
                             mode="approve", now=NOW)
    await sql.record_actions([_action(cells[12].cell_id, "sync:create", kind="create")],
                             mode="live", now=NOW, applied=True)
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    try:
        async with anyio.create_task_group() as tg:
            app = create_app(DaemonPlane(_Daemon(sql)), hosts=hosts, port=port)  # type: ignore[arg-type]
            await tg.start(serve_http, app, sock)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}",
                                         trust_env=False, timeout=30) as client:
                with anyio.fail_after(10):
                    while True:
                        try:
                            await client.get("/healthz")
                            break
                        except httpx.TransportError:
                            await anyio.sleep(0.02)
                yield client, sql
            tg.cancel_scope.cancel()
    finally:
        sock.close()
        await sql.close()


async def _statuses(sql: SqlStore) -> dict[int, tuple[str, str | None]]:
    return {r.id: (r.status, r.error) for r in await sql.list_actions(limit=100)}


async def test_a_huge_body_or_note_is_refused_and_nothing_is_stored(tmp_path: Path) -> None:
    async with control_api(tmp_path) as (client, sql):
        before = await _statuses(sql)
        # 20 MB of JSON: refused with 413 naming the limit, the action untouched
        huge = json.dumps({"actor": "mallory", "note": "x" * 20_000_000})
        r = await client.post("/api/v1/actions/1/reject", content=huge,
                              headers={**AUTH, "content-type": "application/json"})
        assert r.status_code == 413, r.text
        body = r.json()
        assert body["field"] == "body" and str(MAX_BODY_BYTES) in body["error"], body
        # chunked (no Content-Length): the same
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(40):
                yield b"x" * 50_000
        r = await client.post("/api/v1/actions/1/reject", content=chunks(), headers=AUTH)
        assert r.status_code == 413 and r.json()["field"] == "body"
        # a note within the body limit but above the note's: 400 naming note
        r = await client.post("/api/v1/actions/1/reject", headers=AUTH,
                              json={"actor": "bob", "note": "y" * (MAX_NOTE_CHARS + 1)})
        assert r.status_code == 400 and r.json()["field"] == "note", r.text
        assert str(MAX_NOTE_CHARS) in r.json()["fix"]
        # a key the request does not take is refused, not dropped (the note would be lost)
        r = await client.post("/api/v1/actions/1/reject", headers=AUTH,
                              json={"actor": "bob", "comment": "wrong creative"})
        assert r.status_code == 400 and r.json()["field"] == "comment", r.text
        assert "actor and note" in r.json()["fix"]
        r = await client.post("/api/v1/decisions/d1/approve", headers=AUTH,
                              json={"actor": "bob", "reason": "ok"})
        assert r.status_code == 400 and r.json()["field"] == "reason", r.text
        r = await client.post("/api/v1/actions/1/undo", headers=AUTH,
                              json={"actor": "bob", "note": "why"})
        assert r.status_code == 400 and r.json()["field"] == "note", r.text
        assert "undo takes no note" in r.json()["fix"]
        # JSON nested a thousand deep (2 KB): a 400, not a 500 with a traceback in the log
        r = await client.post("/api/v1/actions/1/approve", headers={
            **AUTH, "content-type": "application/json"},
            content='{"actor": ' + "[" * 1000 + "]" * 1000 + "}")
        assert r.status_code == 400 and r.json()["field"] == "body", r.text
        # a slash too many: a 404 naming the path, not a redirect
        r = await client.get("/api/v1/status/")
        assert r.status_code == 404 and "location" not in r.headers, r.text
        assert await _statuses(sql) == before
        # the connection is still usable, and a note at the limit is taken whole
        r = await client.post("/api/v1/actions/1/reject", headers=AUTH,
                              json={"actor": "bob", "note": "z" * MAX_NOTE_CHARS})
        assert r.status_code == 200 and r.json()["error"] == "z" * MAX_NOTE_CHARS
        listed = (await client.get("/api/v1/actions")).json()
        assert len(json.dumps(listed)) < 100_000


async def test_text_the_database_cannot_hold_a_body_not_json_and_a_note_nobody_keeps_are_refused(
        tmp_path: Path) -> None:
    async with control_api(tmp_path) as (client, sql):
        before = await _statuses(sql)
        json_type = {**AUTH, "content-type": "application/json"}
        # a lone surrogate or a NUL: SQLite could not encode it (a 500), PostgreSQL refused it
        # (a 503 saying the database is down)
        for body, field in (('{"actor": "\\ud800"}', "actor"),
                            ('{"actor": "bob", "note": "x\\udfff"}', "note"),
                            ('{"actor": "a\\u0000b"}', "actor")):
            for path in ("/api/v1/actions/1/reject", "/api/v1/decisions/d1/reject"):
                r = await client.post(path, headers=json_type, content=body)
                assert r.status_code == 400 and r.json()["field"] == field, (path, body, r.text)
                assert "NUL" in r.json()["error"]
        for query, field in (("campaign=%00", "campaign"), ("cell=a%00", "cell"),
                             ("decision=%ED%A0%80", "decision"), ("campaign=", "campaign"),
                             ("status=proposed&status=applied", "status")):
            r = await client.get(f"/api/v1/actions?{query}")
            assert r.status_code == 400 and r.json()["field"] == field, (query, r.text)
        # a body not declared JSON: 415 naming Content-Type (curl -d sends it as a form)
        for ctype in ("text/plain", "application/x-www-form-urlencoded", None):
            headers = {**AUTH, **({"content-type": ctype} if ctype else {})}
            r = await client.post("/api/v1/actions/1/reject", headers=headers,
                                  content='{"actor": "bob"}')
            assert r.status_code == 415 and r.json()["field"] == "Content-Type", r.text
        # an approval's note would be dropped (only a rejection records one): refused
        for path in ("/api/v1/actions/1/approve", "/api/v1/decisions/d1/approve"):
            r = await client.post(path, headers=AUTH,
                                  json={"actor": "alice", "note": "ticket OPS-42"})
            assert r.status_code == 400 and r.json()["field"] == "note", r.text
            assert "approval takes no note" in r.json()["fix"]
        assert await _statuses(sql) == before
        # JSON with a charset is JSON; a filter that is an id is a filter
        r = await client.post("/api/v1/actions/1/reject", content='{"actor": "bob"}', headers={
            **AUTH, "content-type": "application/json; charset=utf-8"})
        assert r.status_code == 200, r.text
        r = await client.get("/api/v1/actions?campaign=madhive_12345&decision=d1")
        assert r.status_code == 200 and r.json()["actions"], r.text
        r = await client.post("/api/v1/decisions/nope/approve", headers=AUTH)
        assert r.status_code == 404 and "status=proposed" in r.json()["fix"], r.text


async def test_a_client_waiting_for_100_continue_gets_the_413_before_sending(
        tmp_path: Path) -> None:
    async with control_api(tmp_path) as (client, sql):
        port = client.base_url.port
        assert port is not None

        def ask() -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(b"POST /api/v1/actions/1/reject HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                          b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
                          b"Content-Type: application/json\r\nExpect: 100-continue\r\n"
                          b"Content-Length: 20000000\r\n\r\n")
                got = b""
                while b"\r\n\r\n" not in got or not got.rstrip().endswith(b"}"):
                    more = s.recv(65536)
                    if not more:
                        break
                    got += more
                return got

        answer = await anyio.to_thread.run_sync(ask)
        head, _, rest = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413"), answer[:200]
        assert b"connection: close" in head.lower()
        assert json.loads(rest)["field"] == "body"
        assert (await sql.get_action(1)).status == "proposed"  # type: ignore[union-attr]


async def test_action_ids_are_ascii_digits_only(tmp_path: Path) -> None:
    async with control_api(tmp_path) as (client, sql):
        assert (await client.get("/api/v1/actions/10")).json()["id"] == 10
        before = await _statuses(sql)
        # int() would read "1_0" as 10 and "１" (full width) as 1: a typo acting on another
        # action
        for raw in ("1_0", "１", "+1", " 1", "1.0", "0x1", "٣", "99999999999999999999999"):
            r = await client.get(f"/api/v1/actions/{raw}")
            assert r.status_code == 400 and r.json()["field"] == "action_id", (raw, r.text)
            for verb in ("approve", "reject", "undo"):
                r = await client.post(f"/api/v1/actions/{raw}/{verb}", headers=AUTH)
                assert r.status_code == 400 and r.json()["field"] == "action_id", (raw, verb)
                assert "digits" in r.json()["fix"]
        r = await client.get("/api/v1/actions", params={"limit": "1_0"})
        assert r.status_code == 400 and r.json()["field"] == "limit"
        # an action that does not exist, or whose state forbids the verdict: the same field
        for url in ("/api/v1/actions/999999", "/api/v1/actions/999999/approve"):
            r = await (client.get(url) if "approve" not in url
                       else client.post(url, headers=AUTH))
            assert r.status_code == 404 and r.json()["field"] == "action_id", r.text
        assert await _statuses(sql) == before


async def test_undoing_a_line_items_creation_says_what_can_be_done(tmp_path: Path) -> None:
    """No command or endpoint pauses one line item: the refusal names what does exist (an
    exclusion rule for exactly this cell, then a restart; or the DSP's own UI)."""
    async with control_api(tmp_path) as (client, sql):
        r = await client.post("/api/v1/actions/13/undo", headers=AUTH)
        assert r.status_code == 409, r.text
        fix = r.json()["fix"]
        assert "pause the cell's line item instead" not in fix
        row = await sql.get_action(13)
        assert row is not None
        (cell,) = [c for c in await sql.list_cells("madhive_12345")
                   if c.cell_id == row.action.cell_id]
        rule = (f'audience = "{cell.audience}", creative = "{cell.creative}", bid_strategy = '
                f'"{cell.bid_strategy}", daypart = "{cell.daypart}", platform = '
                f'"{cell.platform}"')
        assert f"[[exclusions]] rule matching this cell ({rule})" in fix, fix
        assert "restart the daemon" in fix and "line item 100" in fix
        assert "in the DSP's own UI" in fix


async def test_a_whole_decision_is_approved_or_rejected_through_the_api(tmp_path: Path) -> None:
    async with control_api(tmp_path) as (client, sql):
        url = "/api/v1/decisions/d1/approve"
        assert (await client.post(url)).status_code == 401
        r = await client.post("/api/v1/decisions/d%201;drop/approve", headers=AUTH)
        assert r.status_code == 400 and r.json()["field"] == "decision_id"
        r = await client.post("/api/v1/decisions/nope/approve", headers=AUTH)
        assert r.status_code == 404 and "nope" in r.json()["error"]
        assert r.json()["field"] == "decision_id"
        r = await client.post(url, headers=AUTH, json={"actor": "ana"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["decision"] == "d1" and len(body["actions"]) == 12
        assert {(a["status"], a["actor"]) for a in body["actions"]} == {("pending", "ana")}
        r = await client.post("/api/v1/decisions/d1/reject", headers=AUTH)
        assert r.status_code == 409 and r.json()["field"] == "decision_id"
        assert "12 pending" in r.json()["error"]
        assert len(await sql.outbox()) == 12


def _raw_request(port: int, head: bytes) -> tuple[bytes, bytes]:
    """Send one request's head as is (any Host header, or none) and read the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head)
        got = b""
        while more := s.recv(65536):
            got += more
    status, _, body = got.partition(b"\r\n\r\n")
    return status, body


async def test_a_request_naming_another_host_is_refused(tmp_path: Path) -> None:
    """DNS rebinding: a web page whose own name resolves to 127.0.0.1 makes the browser send
    ``Host: <its name>``; nothing is read or changed under that name."""
    async with control_api(tmp_path) as (client, sql):
        before = await _statuses(sql)
        evil = {"Host": "rebind.attacker.example:8470"}
        for path in ("/", "/healthz", "/metrics", "/api/v1/status", "/api/v1/actions",
                     "/api/v1/actions/1", "/api/v1/campaigns", "/nope"):
            r = await client.get(path, headers=evil)
            assert r.status_code == 400, (path, r.status_code, r.text[:200])
            body = r.json()
            assert body["field"] == "Host" and "http.allowed_hosts" in body["fix"], body
            assert "proposed" not in r.text and "madhive" not in r.text
        r = await client.post("/api/v1/actions/1/approve", headers={**evil, **AUTH})
        assert r.status_code == 400 and r.json()["field"] == "Host"
        assert await _statuses(sql) == before
        # the loopback names, with or without a port, in any case
        for host in ("127.0.0.1", "127.0.0.1:8470", "localhost", "LocalHost:1", "[::1]:8470"):
            r = await client.get("/api/v1/actions/1", headers={"Host": host})
            assert r.status_code == 200 and r.json()["id"] == 1, (host, r.text)
        # lookalikes and a request without a Host at all
        for host in ("127.0.0.1.attacker.example", "localhost.attacker.example:8470",
                     "attacker.example:127.0.0.1", "", "[::1].x"):
            r = await client.get("/api/v1/status", headers={"Host": host})
            assert r.status_code == 400, (host, r.text)
        port = client.base_url.port
        assert port is not None
        head, body = await anyio.to_thread.run_sync(
            _raw_request, port, b"GET /api/v1/status HTTP/1.0\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400"), head
        assert json.loads(body)["field"] == "Host"


async def test_allowed_hosts_adds_names_to_the_loopback_ones(tmp_path: Path) -> None:
    hosts = allowed_hosts("0.0.0.0", ["campaignd.internal", "10.0.0.5"])
    assert hosts is not None and "0.0.0.0" not in hosts
    assert allowed_hosts("10.1.2.3") == LOOPBACK_HOSTS | {"10.1.2.3"}
    async with control_api(tmp_path, hosts=hosts) as (client, _):
        for host in ("campaignd.internal:8470", "10.0.0.5", "CAMPAIGND.internal"):
            assert (await client.get("/healthz", headers={"Host": host})).status_code == 200
        assert (await client.get("/healthz", headers={"Host": "other"})).status_code == 400


async def test_allowed_hosts_star_turns_the_check_off(tmp_path: Path) -> None:
    assert allowed_hosts("127.0.0.1", ["*"]) is None
    async with control_api(tmp_path, hosts=None) as (client, _):
        assert (await client.get("/healthz", headers={"Host": "other"})).status_code == 200


async def test_answers_carry_headers_against_sniffing_and_framing(tmp_path: Path) -> None:
    async with control_api(tmp_path) as (client, _):
        for path in ("/", "/api/v1/actions", "/api/v1/actions/x", "/nope"):
            r = await client.get(path)
            assert r.headers["x-content-type-options"] == "nosniff", path
            assert r.headers["x-frame-options"] == "DENY", path
            assert "frame-ancestors 'none'" in r.headers["content-security-policy"], path
            assert r.headers["cache-control"] == "no-store", path
        r = await client.post("/api/v1/actions/1/approve")  # no token: 401
        assert r.status_code == 401 and r.headers["x-content-type-options"] == "nosniff"
        r = await client.get("/", headers={"Host": "evil"})
        assert r.status_code == 400 and r.headers["x-frame-options"] == "DENY"


async def test_a_mutating_call_needs_the_bearer_token_and_no_cookie_will_do(
        tmp_path: Path) -> None:
    """What a cross-site page can send (no header of its choosing but cookies and a form
    body) changes nothing: 401 without a token, 403 with a wrong one, JSON naming the fix."""
    async with control_api(tmp_path) as (client, sql):
        before = await _statuses(sql)
        for headers in ({}, {"Cookie": f"token={TOKEN}; session={TOKEN}"},
                        {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer"},
                        {"Content-Type": "application/x-www-form-urlencoded"}):
            r = await client.post("/api/v1/actions/1/approve", headers=headers,
                                  content=f"token={TOKEN}")
            assert r.status_code == 401, (headers, r.text)
            assert r.headers["www-authenticate"].startswith("Bearer")
            body = r.json()
            assert body["field"] == "Authorization" and "Bearer <token>" in body["fix"]
        r = await client.post("/api/v1/actions/1/approve",
                              headers={"Authorization": f"Bearer {TOKEN}x"})
        assert r.status_code == 403 and r.json()["field"] == "Authorization", r.text
        assert "http.api_token" in r.json()["fix"]
        assert "access-control-allow-origin" not in r.headers
        assert await _statuses(sql) == before
