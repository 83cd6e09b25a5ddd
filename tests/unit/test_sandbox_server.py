"""The sandbox's Beeswax v2 server, through httpx's ASGI transport (no socket), plus the
service on a real loopback socket.

Translation into ``LineItemConfig`` and the feed are checked with ``RecordingMarket``, a small
deterministic ``MarketProtocol`` implementation; the contract suite runs the real market.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from campaignd.dsp.sandbox import (
    FaultConfig,
    SandboxService,
    SandboxState,
    ScriptedFault,
    create_app,
    serve_standalone,
)
from campaignd.dsp.sandbox.feed import LogFeed
from campaignd.dsp.sandbox.model import (
    ActivityEvent,
    ClickEvent,
    ConversionEvent,
    ImpressionEvent,
    LineItemConfig,
    MarketEvent,
)
from campaignd.errors import StartupError
from campaignd.pipeline.schema import decode_message, decode_messages

ROOT = Path(__file__).resolve().parents[2]
EMAIL, PASSWORD = "ops@campaignd.test", "pw"
START = datetime(2026, 11, 2, tzinfo=UTC)
V2 = "/rest/v2"


class RecordingMarket:
    """A deterministic MarketProtocol stand-in: records configs, replays queued events."""

    def __init__(self, start: datetime) -> None:
        self._now = start
        self.configs: dict[int, LineItemConfig] = {}
        self.removed: list[int] = []
        self.queued: list[MarketEvent] = []
        self.totals: dict[int, dict[str, int]] = {}

    @property
    def now(self) -> datetime:
        return self._now

    def configure(self, config: LineItemConfig) -> None:
        self.configs[config.line_item_id] = config

    def remove(self, line_item_id: int) -> None:
        self.removed.append(line_item_id)
        self.configs.pop(line_item_id, None)

    def advance(self, until: datetime, *, emit_events: bool = True
                ) -> tuple[Any, Sequence[MarketEvent]]:
        self._now = until
        events, self.queued = self.queued, []
        return None, events if emit_events else []

    def delivered(self, ids: Any = None) -> dict[int, dict[str, int]]:
        return self.totals if ids is None else {i: self.totals[i] for i in ids
                                                 if i in self.totals}


def make_state(**kw: Any) -> SandboxState:
    kw.setdefault("email", EMAIL)
    kw.setdefault("password", PASSWORD)
    return SandboxState(**kw)


def client_for(state: SandboxState) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(state)),
                             base_url="http://sandbox.test")


async def login(client: httpx.AsyncClient, keep: bool = True) -> httpx.Response:
    r = await client.post(f"{V2}/authenticate",
                          json={"email": EMAIL, "password": PASSWORD, "keep_logged_in": keep})
    assert r.status_code == 200, r.text
    return r


@pytest.fixture
async def api() -> AsyncIterator[tuple[httpx.AsyncClient, SandboxState, RecordingMarket]]:
    market = RecordingMarket(START)
    state = make_state(market=market)
    async with client_for(state) as client:
        await login(client)
        yield client, state, market


async def seed_objects(c: httpx.AsyncClient, *, budget: str = "1000",
                       daily: str | None = "100") -> dict[str, Any]:
    adv = (await c.post(f"{V2}/advertisers", json={"name": "Adv"})).json()
    camp = await c.post(f"{V2}/campaigns", json={
        "advertiser_id": adv["id"], "name": "C", "active": True,
        "spend_budget": {"lifetime": budget, "daily": daily},
        "start_date": "2026-11-01 00:00:00", "end_date": "2027-01-31 23:59:59"})
    assert camp.status_code == 201, camp.text
    video = (await c.post(f"{V2}/creatives", json={"advertiser_id": adv["id"], "name": "V",
                                                   "type": "video",
                                                   "alternative_id": "hero_30s"})).json()
    banner = (await c.post(f"{V2}/creatives", json={"advertiser_id": adv["id"], "name": "B",
                                                    "type": "banner"})).json()
    return {"advertiser": adv, "campaign": camp.json(), "video": video, "banner": banner}


def li_body(campaign_id: int, **kw: Any) -> dict[str, Any]:
    body = {"campaign_id": campaign_id, "name": "li", "type": "video",
            "spend_budget": {"lifetime": "100.00", "daily": "10"},
            "bidding": {"strategy": "CPM", "values": {"cpm_bid": 20.5}, "pacing": "daily"},
            "start_date": "2026-11-02 00:00:00", "end_date": "2026-12-31 00:00:00",
            "creative_weighting_method": "WEIGHTED"}
    body.update(kw)
    return body


# --- authentication ------------------------------------------------------------------------


async def test_authentication_cookies_and_body() -> None:
    state = make_state(buzz_key="stingersbx")
    async with client_for(state) as c:
        r = await c.get(f"{V2}/advertisers")
        assert r.status_code == 401
        assert r.json() == {"detail": "Authentication credentials were not provided."}
        bad = await c.post(f"{V2}/authenticate", json={"email": EMAIL, "password": "no"})
        assert bad.status_code == 401
        r = await login(c, keep=False)
        assert r.json() == {"success": "true", "message": "Cookie set successfully",
                            "payload": "Cookie set successfully"}
        cookies = r.headers.get_list("set-cookie")
        names = {h.split("=", 1)[0] for h in cookies}
        assert names == {"stingersbx_buzz_cookie", "sessionid", "csrftoken"}
        assert all("Max-Age=900" in h for h in cookies)
        assert (await c.get(f"{V2}/advertisers")).status_code == 200
        r = await c.post("/rest/authenticate",
                         json={"email": EMAIL, "password": PASSWORD, "keep_logged_in": True})
        assert r.status_code == 200
        assert all(f"Max-Age={30 * 24 * 3600}" in h for h in r.headers.get_list("set-cookie"))
        logout = await c.delete("/rest/authenticate")
        assert logout.json()["success"] is True
        assert (await c.get(f"{V2}/advertisers")).status_code == 401


async def test_sessions_expire_and_keep_logged_in_rotates_the_cookie() -> None:
    state = make_state(session_ttl_s=0.02)
    async with client_for(state) as c:
        await login(c, keep=False)
        await anyio.sleep(0.04)
        r = await c.get(f"{V2}/advertisers")
        assert r.status_code == 401 and "expired" in r.json()["detail"]
        await login(c, keep=True)
        old = c.cookies.get("sessionid")
        await anyio.sleep(0.04)
        r = await c.get(f"{V2}/advertisers")
        assert r.status_code == 200
        assert "sessionid" in {h.split("=", 1)[0] for h in r.headers.get_list("set-cookie")}
        assert c.cookies.get("sessionid") != old
        assert (await c.get(f"{V2}/advertisers")).status_code == 200
        # the previous cookie stays valid for a grace period (requests in flight)
        async with client_for(state) as other:
            other.cookies.set("sessionid", old or "")
            assert (await other.get(f"{V2}/advertisers")).status_code == 200
            other.cookies.set("sessionid", "never-issued")
            assert (await other.get(f"{V2}/advertisers")).status_code == 401


async def test_authenticate_bursts_are_throttled() -> None:
    state = make_state(auth_burst=(3, 60.0))
    async with client_for(state) as c:
        for _ in range(3):
            await login(c)
        r = await c.post(f"{V2}/authenticate", json={"email": EMAIL, "password": PASSWORD})
        assert r.status_code == 429
        assert r.headers["retry-after"] == "60"


# --- CRUD, DRF semantics ---------------------------------------------------------------------


async def test_crud_round_trip(api: Any) -> None:
    c, _, _ = api
    r = await c.post(f"{V2}/advertisers", json={"name": "Adv", "alternative_id": "adv-1"})
    assert r.status_code == 201
    adv = r.json()
    assert {"id", "create_date", "update_date", "account_id"} <= set(adv)
    assert adv["account_id"] == 1 and adv["active"] is True and adv["currency"] == "USD"
    assert (await c.get(f"{V2}/advertisers/{adv['id']}")).json() == adv
    r = await c.patch(f"{V2}/advertisers/{adv['id']}", json={"notes": "hello"})
    assert r.json()["notes"] == "hello" and r.json()["name"] == "Adv"
    r = await c.put(f"{V2}/advertisers/{adv['id']}", json={"notes": "full update"})
    assert r.status_code == 400 and r.json() == {"name": ["This field is required."]}
    assert (await c.delete(f"{V2}/advertisers/{adv['id']}")).status_code == 204
    r = await c.get(f"{V2}/advertisers/{adv['id']}")
    assert r.status_code == 404 and r.json() == {"detail": "Not found."}
    r = await c.post(f"{V2}/advertisers", content=b"{not json")
    assert r.status_code == 400 and "JSON parse error" in r.json()["detail"]


async def test_pagination_and_filters(api: Any) -> None:
    c, _, _ = api
    for i in range(120):
        await c.post(f"{V2}/advertisers", json={"name": f"a{i}", "alternative_id": f"k{i % 7}",
                                                "active": i % 2 == 0})
    page1 = (await c.get(f"{V2}/advertisers")).json()
    assert page1["count"] == 120 and len(page1["results"]) == 50
    assert page1["previous"] is None and "page=2" in page1["next"]
    page3 = (await c.get(page1["next"].replace("page=2", "page=3"))).json()
    assert len(page3["results"]) == 20 and page3["next"] is None and "page=2" in \
        page3["previous"]
    assert (await c.get(f"{V2}/advertisers", params={"page": 9})).status_code == 404
    big = (await c.get(f"{V2}/advertisers", params={"page_size": 200})).json()
    assert len(big["results"]) == 120

    async def ids(**params: Any) -> list[int]:
        body = (await c.get(f"{V2}/advertisers", params={"page_size": 500, **params})).json()
        return [r["id"] for r in body["results"]]

    assert await ids(id__in="3,5,700") == [3, 5]
    assert await ids(id__gte=118) == [118, 119, 120]
    assert await ids(id__lt=3) == [1, 2]
    assert await ids(id__gt=118, id__lte=119) == [119]
    assert len(await ids(alternative_id="k3")) == 17
    assert len(await ids(active="false")) == 60
    assert 1 not in await ids(name__not="a0")
    assert await ids(notes__isempty="false") == []
    assert len(await ids(unknown_field="x")) == 120  # DRF ignores unknown filters


async def test_field_keyed_validation_errors(api: Any) -> None:
    c, _, _ = api
    objs = await seed_objects(c)
    cid = objs["campaign"]["id"]
    r = await c.post(f"{V2}/line-items", json=li_body(cid, spend_budget={"lifetime": "abc",
                                                                         "daily": None}))
    assert r.status_code == 400
    assert r.json() == {"spend_budget": {"lifetime": ["A valid number is required."]}}
    r = await c.post(f"{V2}/line-items", json={"campaign_id": 999, "type": "radio"})
    body = r.json()
    assert body["campaign_id"] == ['Invalid pk "999" - object does not exist.']
    assert body["type"] == ['"radio" is not a valid choice.']
    assert body["name"] == ["This field is required."]
    r = await c.post(f"{V2}/line-items", json=li_body(cid, start_date="tomorrow"))
    assert "Datetime has wrong format" in r.json()["start_date"][0]
    r = await c.post(f"{V2}/line-items", json=li_body(cid))
    li = r.json()
    assert r.status_code == 201
    assert li["spend_budget"] == {"lifetime": "100.00", "daily": "10.00"}
    assert li["bidding"]["values"]["cpm_bid"] == "20.50"
    assert li["spend"] == "0.00" and li["active"] is False
    assert li["advertiser_id"] == objs["advertiser"]["id"]
    assert li["start_date"] == "2026-11-02 00:00:00"
    r = await c.post(f"{V2}/line-items", json=li_body(cid, start_date="2026-11-02T05:00:00Z"))
    assert r.json()["start_date"] == "2026-11-02 00:00:00"  # account zone: America/New_York


async def test_business_rules(api: Any) -> None:
    c, _, _ = api
    objs = await seed_objects(c, budget="150", daily="20")
    cid = objs["campaign"]["id"]
    li = (await c.post(f"{V2}/line-items", json=li_body(cid))).json()
    r = await c.post(f"{V2}/line-items", json=li_body(cid))
    assert r.status_code == 400 and "campaign budget" in r.json()["spend_budget"]["lifetime"][0]
    r = await c.post(f"{V2}/line-items", json=li_body(cid, spend_budget={"lifetime": "1",
                                                                         "daily": "50"}))
    assert "daily" in r.json()["spend_budget"]
    r = await c.post(f"{V2}/line-items", json=li_body(cid, spend_budget={"lifetime": "1"}))
    assert r.json() == {"spend_budget": {"daily": ["This field is required."]}}
    r = await c.post(f"{V2}/line-items", json=li_body(
        cid, spend_budget={"lifetime": "1", "daily": None}, end_date="2027-03-01 00:00:00"))
    assert "end_date" in r.json()
    r = await c.post(f"{V2}/line-items", json=li_body(cid, active=True))
    assert "active" in r.json()
    r = await c.patch(f"{V2}/campaigns/{cid}", json={"spend_budget": {"lifetime": "50",
                                                                      "daily": "20"}})
    assert r.status_code == 400 and "spend_budget" in r.json()
    # a campaign's daily budget cannot go below a line item's (its one has $10)
    r = await c.patch(f"{V2}/campaigns/{cid}", json={"spend_budget": {"lifetime": "150",
                                                                      "daily": "9"}})
    assert r.status_code == 400 and "daily" in r.json()["spend_budget"]
    r = await c.patch(f"{V2}/campaigns/{cid}", json={"spend_budget": {"lifetime": "150",
                                                                      "daily": "10"}})
    assert r.status_code == 200

    lid = li["id"]
    assert "active" in (await c.patch(f"{V2}/line-items/{lid}", json={"active": True})).json()
    assert (await c.patch(f"{V2}/line-items/{lid}", json={"type": "banner"})).json() == {
        "type": ["This field cannot be changed once set."]}
    r = await c.post(f"{V2}/line-items/{lid}/creatives",
                     json={"creative_id": objs["banner"]["id"], "weighting": 50})
    assert r.status_code == 400 and "does not match" in r.json()["creative_id"][0]
    r = await c.post(f"{V2}/line-items/{lid}/creatives",
                     json={"creative_id": objs["video"]["id"], "weighting": 101})
    assert r.json() == {"weighting": ["Ensure this value is less than or equal to 100."]}
    r = await c.post(f"{V2}/line-items/{lid}/creatives",
                     json={"creative_id": objs["video"]["id"], "weighting": 60})
    assert r.status_code == 201
    assoc = r.json()
    assert assoc["creative"]["id"] == objs["video"]["id"] and assoc["line_item_id"] == lid
    r = await c.post(f"{V2}/line-items/{lid}/creatives",
                     json={"creative_id": objs["video"]["id"], "weighting": 60})
    assert "already associated" in r.json()["creative_id"][0]
    r = await c.patch(f"{V2}/line-items/{lid}", json={"active": True})
    assert r.status_code == 200 and r.json()["active"] is True
    listed = (await c.get(f"{V2}/line-items/{lid}/creatives")).json()
    assert listed["count"] == 1 and listed["results"][0]["weighting"] == 60
    r = await c.patch(f"{V2}/line-items/{lid}/creatives/{assoc['id']}", json={"weighting": 5})
    assert r.json()["weighting"] == 5
    assert (await c.get(f"{V2}/line-items/{lid + 1}/creatives/{assoc['id']}")).status_code \
        == 404


async def test_targeting_expression_validation(api: Any) -> None:
    c, _, _ = api

    def eq(*values: Any) -> dict[str, Any]:
        return {"any": [{"comparator": "equals", "value": v} for v in values]}

    r = await c.post(f"{V2}/targeting-expressions", json={"modules": {
        "geo": {"all": {"zip": eq(10001), "foo": eq("x")}},
        "planet": {"all": {}},
        "time": {"any": {"user_time_of_week": eq(168)}}}})
    assert r.status_code == 400
    assert r.json() == {"modules": {
        "geo": {"all": {"zip": ["Postal code should be passed as a string."],
                        "foo": ['"foo" is not a valid choice.']}},
        "planet": ['"planet" is not a valid choice.'],
        "time": {"any": {"user_time_of_week": ['"168" is not a valid choice.']}}}}
    good = {"geo": {"all": {"zip": eq("10001")}}}
    te = (await c.post(f"{V2}/targeting-expressions", json={"modules": good})).json()
    r = await c.put(f"{V2}/targeting-expressions/{te['id']}", json={"name": "x"})
    assert r.json() == {"modules": ["This field is required."]}
    r = await c.patch(f"{V2}/targeting-expressions/{te['id']}", json={"name": "renamed"})
    assert r.json()["modules"] == good and r.json()["name"] == "renamed"


# --- the market seam -------------------------------------------------------------------------


async def test_changes_reconfigure_the_market(api: Any) -> None:
    c, _, market = api
    objs = await seed_objects(c)
    cid = objs["campaign"]["id"]

    def eq(*values: Any) -> dict[str, Any]:
        return {"any": [{"comparator": "equals", "value": v} for v in values]}

    te = (await c.post(f"{V2}/targeting-expressions", json={"modules": {
        "geo": {"all": {"zip": eq("10001", "60601")}},
        "user": {"all": {"segment": {"any": [
            {"comparator": "boolean_expression", "value": "(a OR b) AND NOT c"}]}}},
        "time": {"all": {"user_time_of_week": eq(0, 167)}},
        "app_site": {"all": {"app_bundle": eq("com.hulu.plus")}}}})).json()
    li = (await c.post(f"{V2}/line-items", json=li_body(
        cid, targeting_expression_id=te["id"], alternative_id="cell-1"))).json()
    cfg = market.configs[li["id"]]
    assert cfg.active is False and cfg.creatives == {}
    assert cfg.lifetime_budget_micros == 100_000_000 and cfg.daily_budget_micros == 10_000_000
    assert cfg.cpm_bid_micros == 20_500_000
    assert cfg.zips == frozenset({"10001", "60601"})
    assert cfg.segments == frozenset({"a", "b"})
    assert cfg.hours_of_week == frozenset({0, 167})
    assert cfg.app_bundles == frozenset({"com.hulu.plus"})
    assert cfg.start == datetime(2026, 11, 2, 5, tzinfo=UTC)
    assert cfg.alternative_id == "cell-1" and cfg.campaign_id == cid

    await c.post(f"{V2}/line-items/{li['id']}/creatives",
                 json={"creative_id": objs["video"]["id"], "weighting": 40})
    await c.patch(f"{V2}/line-items/{li['id']}", json={"active": True})
    cfg = market.configs[li["id"]]
    assert cfg.active and cfg.creatives == {"hero_30s": 40}

    await c.patch(f"{V2}/targeting-expressions/{te['id']}",
                  json={"modules": {"geo": {"all": {"zip": eq("02116")}}}})
    cfg = market.configs[li["id"]]
    assert cfg.zips == frozenset({"02116"}) and cfg.hours_of_week is None

    await c.patch(f"{V2}/campaigns/{cid}", json={"active": False})
    assert market.configs[li["id"]].active is False
    await c.patch(f"{V2}/campaigns/{cid}", json={"active": True})
    await c.patch(f"{V2}/creatives/{objs['video']['id']}", json={"active": False})
    assert market.configs[li["id"]].creatives == {}
    await c.delete(f"{V2}/line-items/{li['id']}")
    assert market.removed == [li["id"]]


def sample_events(li_id: int, campaign_id: int) -> list[MarketEvent]:
    t = 1_793_000_000_000_000
    auction = f"{t}.3054.1.sandbox"
    return [
        ImpressionEvent(t, auction, campaign_id, li_id, "hero_30s", "10001", "com.hulu.plus",
                        3, "u1", 25_000_000, 21_000, 600),
        ActivityEvent(t + 1, auction, campaign_id, li_id, "hero_30s", "COMPLETE"),
        ClickEvent(t + 2, auction, campaign_id, li_id, "hero_30s"),
        ConversionEvent(t + 3, "conv-1", auction, campaign_id, li_id, "hero_30s", 45_500_000,
                        "u1"),
    ]


async def test_log_stream_serves_market_events_as_beeswax_messages(api: Any) -> None:
    c, state, market = api
    objs = await seed_objects(c)
    li = (await c.post(f"{V2}/line-items", json=li_body(objs["campaign"]["id"]))).json()
    await c.post(f"{V2}/line-items/{li['id']}/creatives",
                 json={"creative_id": objs["video"]["id"], "weighting": 40})
    market.queued = sample_events(li["id"], li["campaign_id"])
    assert state.advance_market(START + timedelta(hours=1)) == 4
    r = await c.get(f"{V2}/sandbox/log-stream", params={"limit": 3})
    body = r.json()
    assert len(body["messages"]) == 3 and body["skipped"] == 0 and body["first_seq"] == 0
    rest = (await c.get(f"{V2}/sandbox/log-stream",
                        params={"cursor": body["next_cursor"]})).json()
    assert len(rest["messages"]) == 1 and rest["first_seq"] == 3
    again = (await c.get(f"{V2}/sandbox/log-stream",
                         params={"cursor": rest["next_cursor"]})).json()
    assert again == {"messages": [], "next_cursor": rest["next_cursor"], "skipped": 0,
                     "first_seq": 4}

    msgs = [decode_message(m) for m in body["messages"] + rest["messages"]]
    assert [m.kind for m in msgs] == ["impression", "activity", "click", "conversion"]
    imp = msgs[0].impression
    assert imp is not None and msgs[0].request is not None
    aag = f"{imp.auctionid_str}.1.{li['campaign_id']}.{li['id']}"
    assert imp.auction_adgroup_id == aag == imp.adgroup_key()
    assert imp.creative_id == str(objs["video"]["id"])
    assert imp.advertiser_id == str(objs["advertiser"]["id"])
    # per impression both: the CPM bid $25.00 is 25,000 micros an impression
    assert imp.win_price_micros_usd == "21000" and imp.bid_price_micros_usd == "25000"
    assert imp.auctionid is not None and imp.auctionid.hostid == 3054
    req = msgs[0].request
    assert req.user_time_of_week == 600
    assert req.bidrequest is not None and req.bidrequest.device is not None
    assert req.bidrequest.device.devicetype == 3
    assert req.bidrequest.device.geo is not None and req.bidrequest.device.geo.zip == "10001"
    assert req.bidrequest.app is not None and req.bidrequest.app.bundle == "com.hulu.plus"
    assert msgs[1].activity[0].type == "COMPLETE" and msgs[1].activity[0].adgroup_key() == aag
    assert msgs[2].clicks[0].adgroup_key() == aag
    conv = msgs[3].conversion
    assert conv is not None and conv.conversion_id == "conv-1" and conv.auctionid == \
        imp.auctionid_str
    assert conv.value_in_micros() == 45_500_000 and conv.auction_adgroup_id == aag
    assert conv.value == "45.500000" and conv.value_micros == "45500000"
    assert [m.timestamp_usecs() for m in msgs] == sorted(m.timestamp_usecs() or 0 for m in msgs)
    assert msgs[3].dedupe_key() == "conv:conv-1" and msgs[0].dedupe_key() == f"imp:{aag}"

    r = await c.get(f"{V2}/sandbox/log-stream", params={"cursor": "garbage"})
    assert r.status_code == 400 and "cursor" in r.json()
    for bad in (0, "1_0", " 5", "-1", "٣"):
        r = await c.get(f"{V2}/sandbox/log-stream", params={"limit": bad})
        assert r.status_code == 400 and "limit" in r.json(), bad


def test_feed_is_bounded_and_reports_evicted_messages() -> None:
    feed = LogFeed(capacity=5)
    feed.extend(str(i).encode() for i in range(12))
    assert feed.first_seq == 7 and feed.next_seq == 12
    got, cursor, skipped = feed.read("seq-2", 3)
    assert got == [b"7", b"8", b"9"] and skipped == 5 and cursor == "seq-10"
    got, cursor, skipped = feed.read(cursor, 100)
    assert got == [b"10", b"11"] and skipped == 0 and cursor == "seq-12"


def test_feed_faults_are_seeded_and_at_least_once() -> None:
    faults = FaultConfig(seed=9, rate_duplicate=0.1, rate_reorder=0.1, rate_malformed=0.05)
    originals = [f'{{"n":{i}}}'.encode() for i in range(2000)]

    def run() -> list[bytes]:
        feed = LogFeed(faults=faults)
        feed.extend(originals)
        return feed.read(None, 10_000)[0]

    first = run()
    assert first == run()  # deterministic for a seed
    assert set(originals) <= set(first)  # nothing lost
    assert len(first) > len(originals)
    _, bad = decode_messages(first)
    assert len(bad) > 0
    positions = [originals.index(m) for m in first if m in originals]
    assert positions != sorted(positions)  # out of order


def test_a_reader_at_the_end_of_the_feed_loses_nothing_to_reordering() -> None:
    # A message already read can never be swapped back behind the reader's cursor.
    feed = LogFeed(faults=FaultConfig(seed=3, rate_reorder=1.0))
    cursor, seen = None, []
    for k in range(50):
        feed.extend(f"m{k}.{i}".encode() for i in range(3))
        got, cursor, _ = feed.read(cursor, 1000)
        seen.extend(got)
    assert sorted(seen) == sorted(f"m{k}.{i}".encode() for k in range(50) for i in range(3))


async def test_reporting_polls_then_csv(api: Any) -> None:
    c, state, market = api
    state.report_polls = 2
    objs = await seed_objects(c)
    li = (await c.post(f"{V2}/line-items", json=li_body(objs["campaign"]["id"],
                                                        alternative_id="cell-7"))).json()
    market.totals = {li["id"]: {"impressions": 1234, "spend_micros": 30_850_000, "clicks": 3,
                                "conversions": 1, "conversion_value_micros": 45_000_000,
                                "completes": 1100, "viewable": 1000, "measurable": 1200}}
    r = await c.post(f"{V2}/reporting/run-query", json={"view": "nope", "fields": []})
    assert r.status_code == 400 and set(r.json()) == {"view", "fields"}
    r = await c.post(f"{V2}/reporting/run-query", json={
        "view": "performance_agg", "filters": {"line_item_id": str(li["id"])},
        "fields": ["campaign_id", "line_item_id", "line_item_alt_id", "spend", "impression",
                   "clicks", "conversions", "conversion_value"]})
    task = r.json()["task_id"]
    for _ in range(2):
        assert (await c.get(f"{V2}/reporting/async-results/{task}")).status_code == 204
    r = await c.get(f"{V2}/reporting/async-results/{task}")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert r.text.splitlines() == [
        "campaign_id,line_item_id,line_item_alt_id,spend,impression,clicks,conversions,"
        "conversion_value",
        f"{li['campaign_id']},{li['id']},cell-7,30.85,1234,3,1,45.00"]
    assert (await c.get(f"{V2}/reporting/async-results/unknown")).status_code == 404
    got = (await c.get(f"{V2}/line-items/{li['id']}")).json()
    assert got["spend"] == "30.85" and got["impressions"] == 1234


# --- faults ----------------------------------------------------------------------------------


async def test_http_faults() -> None:
    state = make_state(faults=FaultConfig(seed=1, retry_after_s=2.5))
    async with client_for(state) as c:
        await login(c)
        state.injector.script(ScriptedFault("429", method="GET"),
                              ScriptedFault("5xx", method="GET", status=502),
                              ScriptedFault("session_expiry", method="GET"))
        r = await c.get(f"{V2}/advertisers")
        assert r.status_code == 429 and r.headers["retry-after"] == "2.5"
        assert (await c.get(f"{V2}/advertisers")).status_code == 502
        assert (await c.get(f"{V2}/advertisers")).status_code == 401
        assert state.injector.stats.injected == {"429": 1, "5xx": 1, "session_expiry": 1}


async def test_request_rate_above_max_rps_is_throttled() -> None:
    state = make_state(faults=FaultConfig(max_rps=5))
    async with client_for(state) as c:
        await login(c)
        codes = [(await c.get(f"{V2}/advertisers")).status_code for _ in range(10)]
        assert codes.count(429) >= 4 and codes[0] == 200


def test_random_faults_are_reproducible() -> None:
    from campaignd.dsp.sandbox.faults import FaultInjector

    cfg = FaultConfig.moderate(seed=4)

    def kinds() -> list[str | None]:
        inj = FaultInjector(cfg, lambda: 0.0)
        return [getattr(inj.choose("GET", "/rest/v2/x"), "kind", None) for _ in range(500)]

    first = kinds()
    assert first == kinds()
    assert {"429", "5xx", "drop_before", "drop_after", "slow", "session_expiry"} <= set(first)
    assert FaultInjector(cfg, lambda: 0.0).choose("GET", "/healthz") is None


# --- the service -----------------------------------------------------------------------------


async def test_service_binds_an_ephemeral_port_and_stops_on_cancel() -> None:
    service = SandboxService(email=EMAIL, password=PASSWORD, log_level="critical")
    async with anyio.create_task_group() as tg:
        url = await tg.start(service.run)
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")
        async with httpx.AsyncClient(base_url=url) as c:
            assert (await c.get(f"{V2}/advertisers")).status_code == 401
        tg.cancel_scope.cancel()
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(base_url=url) as c:
            await c.get(f"{V2}/advertisers")


async def test_a_taken_port_is_a_startup_error() -> None:
    first = SandboxService(email=EMAIL, password=PASSWORD, log_level="critical")
    async with anyio.create_task_group() as tg:
        url = await tg.start(first.run)
        port = int(url.rsplit(":", 1)[1])
        second = SandboxService(email=EMAIL, password=PASSWORD, port=port)
        with pytest.raises(StartupError, match="another port"):
            await second.run()
        tg.cancel_scope.cancel()


async def test_serve_standalone_runs_the_scenario_market_on_a_ticker() -> None:
    async with anyio.create_task_group() as tg:
        url = await tg.start(lambda task_status: serve_standalone(
            ROOT / "config" / "scenarios" / "seed.toml", port=0, time_scale=3600.0,
            tick_interval_s=0.05, email=EMAIL, password=PASSWORD, log_level="critical",
            task_status=task_status))
        async with httpx.AsyncClient(base_url=url) as c:
            await login(c)
            first = (await c.get(f"{V2}/sandbox/status")).json()["market_now"]
            with anyio.fail_after(10):
                while (await c.get(f"{V2}/sandbox/status")).json()["market_now"] == first:
                    await anyio.sleep(0.05)
        tg.cancel_scope.cancel()
