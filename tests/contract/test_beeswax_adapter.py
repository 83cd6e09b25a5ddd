"""BeeswaxAdapter against the sandbox's Beeswax-compatible server, over a real loopback socket.

Every test runs with faults on (429s, 5xx, slow responses, dropped connections, early session
expiry, duplicated/reordered/malformed log messages) at moderate rates and a fixed seed; tests
that need one exact fault script it on top. Backoff sleeps are injected and recorded, so the
suite does not wait out Retry-After or backoff delays.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic import SecretStr

from campaignd.clock import VirtualClock
from campaignd.domain.campaign import CampaignSpec, atomize
from campaignd.dsp.base import CreativeSpec, LineItemSpec, Targeting
from campaignd.dsp.beeswax import BeeswaxAdapter
from campaignd.dsp.sandbox import FaultConfig, SandboxService, SandboxState, ScriptedFault
from campaignd.errors import (
    DSPAuthError,
    DSPCircuitOpen,
    DSPNotFound,
    DSPRateLimited,
    DSPRejected,
)
from campaignd.pipeline.schema import decode_messages

ROOT = Path(__file__).resolve().parents[2]
EMAIL, PASSWORD = "ops@campaignd.test", "s3cret-pw"
FLIGHT_START = datetime(2026, 11, 1, tzinfo=UTC)
FLIGHT_END = datetime(2027, 2, 28, 23, 59, 59, tzinfo=UTC)
MODERATE = FaultConfig.moderate(seed=20261129)


@dataclass
class Env:
    service: SandboxService
    state: SandboxState
    adapter: BeeswaxAdapter
    delays: list[float]
    url: str

    def new_adapter(self, **kwargs: Any) -> BeeswaxAdapter:
        return make_adapter(self.url, self.delays, **kwargs)


def make_adapter(url: str, delays: list[float], **kwargs: Any) -> BeeswaxAdapter:
    async def sleep(seconds: float) -> None:
        delays.append(seconds)
        await anyio.sleep(0)

    options: dict[str, Any] = {"email": EMAIL, "password": SecretStr(PASSWORD),
                               "sleep": sleep, "rate_limit_per_s": None, "max_attempts": 8,
                               "rng": random.Random(5), "report_poll_interval_s": 0.25,
                               "timeout_s": 10.0}
    options.update(kwargs)
    return BeeswaxAdapter(base_url=url, **options)


@asynccontextmanager
async def sandbox(*, faults: FaultConfig = MODERATE, market: Any = None,
                  adapter_options: dict[str, Any] | None = None,
                  **state_options: Any) -> AsyncIterator[Env]:
    service = SandboxService(market, email=EMAIL, password=PASSWORD, faults=faults,
                             log_level="critical", **state_options)
    delays: list[float] = []
    async with anyio.create_task_group() as tg:
        url = await tg.start(service.run)
        adapter = make_adapter(url, delays, **(adapter_options or {}))
        try:
            with anyio.fail_after(120):
                yield Env(service, service.state, adapter, delays, url)
        finally:
            await adapter.aclose()
            tg.cancel_scope.cancel()


async def setup_campaign(adapter: BeeswaxAdapter, *, lifetime_micros: int = 150_000 * 10**6,
                         daily_micros: int = 2_500 * 10**6,
                         creatives: tuple[str, ...] = ("hero_30s", "product_15s", "offer_15s"),
                         ) -> tuple[int, dict[str, int]]:
    advertiser = await adapter.ensure_advertiser(alternative_id="madhive", name="MadHive")
    campaign = await adapter.ensure_campaign(
        advertiser_id=advertiser.id, alternative_id="campaignd:madhive_12345",
        name="MadHive Q4 CTV prospecting", lifetime_budget_micros=lifetime_micros,
        daily_budget_micros=daily_micros, start=FLIGHT_START, end=FLIGHT_END)
    made = await adapter.ensure_creatives(
        [CreativeSpec(alternative_id=c, advertiser_id=advertiser.id, name=c) for c in creatives])
    return campaign.id, {c.alternative_id or "": c.id for c in made}


def cell_specs(spec: CampaignSpec, campaign_id: int, creative_ids: dict[str, int],
               n: int | None = None) -> list[LineItemSpec]:
    cells = atomize(spec)[:n]
    lifetime = spec.lifetime_budget_micros // len(cells)
    daily = spec.daily_budget_micros // len(cells)
    out = []
    for cell in cells:
        audience = spec.level("audience", cell.audience)
        daypart = spec.level("daypart", cell.daypart)
        platform = spec.level("platform", cell.platform)
        bid = spec.level("bid_strategy", cell.bid_strategy)
        out.append(LineItemSpec(
            alternative_id=cell.alternative_id, campaign_id=campaign_id, name=cell.name(),
            lifetime_budget_micros=lifetime, daily_budget_micros=daily,
            cpm_bid_micros=int(bid.cpm_bid * 10**6), start=spec.flight_start,  # type: ignore[union-attr]
            end=spec.flight_end, bid_strategy=bid.strategy,  # type: ignore[union-attr]
            targeting=Targeting(zips=audience.zips, segments=audience.signals,  # type: ignore[union-attr]
                                hours_of_week=daypart.hours_of_week(),  # type: ignore[union-attr]
                                app_bundles=platform.app_bundles,  # type: ignore[union-attr]
                                device_types=platform.device_types),  # type: ignore[union-attr]
            creative_weights={creative_ids[cell.creative]: 100}))
    return out


def line_items_with(state: SandboxState, alternative_id: str) -> list[dict[str, Any]]:
    return [li for li in state.store.table("line-items").values()
            if li["alternative_id"] == alternative_id]


# --- authentication --------------------------------------------------------------------------


async def test_authenticates_and_reauthenticates_after_forced_session_expiry() -> None:
    async with sandbox() as env:
        first = await env.adapter.ensure_advertiser(alternative_id="adv-1", name="A")
        assert env.adapter.health().authenticated
        assert env.state.expire_sessions() >= 1
        again = await env.adapter.ensure_advertiser(alternative_id="adv-1", name="A")
        assert again.id == first.id
        assert env.adapter.reauthentications >= 1
        assert env.adapter.health().circuit == "closed"


async def test_wrong_password_is_an_auth_error_that_names_the_fix() -> None:
    async with sandbox(adapter_options={"password": "wrong"}) as env:
        with pytest.raises(DSPAuthError, match="email and password"):
            await env.adapter.ensure_advertiser(alternative_id="x", name="x")
        # the daemon's status shows why the adapter cannot work, never the password
        health = env.adapter.health()
        assert not health.authenticated
        assert health.last_error and "email and password" in health.last_error
        assert "wrong" not in health.last_error


async def test_session_rejected_again_after_reauthentication_is_an_auth_error() -> None:
    async with sandbox(faults=FaultConfig()) as env:
        await env.adapter.ensure_advertiser(alternative_id="adv", name="A")
        env.state.injector.script(
            ScriptedFault("session_expiry", method="GET", path_prefix="/rest/v2/advertisers"),
            ScriptedFault("session_expiry", method="GET", path_prefix="/rest/v2/advertisers"))
        with pytest.raises(DSPAuthError, match="again"):
            await env.adapter.ensure_advertiser(alternative_id="adv", name="A")


async def test_csrf_token_is_echoed_on_unsafe_methods() -> None:
    async with sandbox(require_csrf=True) as env:
        adv = await env.adapter.ensure_advertiser(alternative_id="adv", name="A")
        assert adv.id == 1 and env.adapter.reauthentications == 0


async def test_keep_logged_in_session_rotation_is_followed_by_the_cookie_jar() -> None:
    async with sandbox(faults=FaultConfig(), session_ttl_s=0.05) as env:
        await env.adapter.ensure_advertiser(alternative_id="adv", name="A")
        for _ in range(4):
            await anyio.sleep(0.08)  # older than the session TTL: the next call rotates it
            await env.adapter.ensure_advertiser(alternative_id="adv", name="A")
        assert env.adapter.reauthentications == 0


# --- idempotent bulk creation ----------------------------------------------------------------


async def test_creates_432_line_items_idempotently_under_faults(seed_spec: CampaignSpec) -> None:
    async with sandbox() as env:
        campaign_id, creatives = await setup_campaign(env.adapter)
        specs = cell_specs(seed_spec, campaign_id, creatives)
        assert len(specs) == 432
        first = await env.adapter.create_line_items(specs)
        assert [li.alternative_id for li in first] == [s.alternative_id for s in specs]
        assert all(li.active for li in first)
        second = await env.adapter.create_line_items(specs)
        assert [li.id for li in second] == [li.id for li in first]
        table = env.state.store.table("line-items")
        assert len(table) == 432
        assert len({li["alternative_id"] for li in table.values()}) == 432
        # Every line item has exactly one association; targeting expressions are shared.
        assocs = env.state.store.table("line-item-creatives").values()
        assert sorted(a["line_item_id"] for a in assocs) == sorted(table)
        assert len(env.state.store.table("targeting-expressions")) == 48
        stats = env.state.injector.stats.injected
        assert stats.get("drop_after", 0) > 0 and stats.get("5xx", 0) > 0
        assert stats.get("429", 0) > 0 and stats.get("session_expiry", 0) > 0
        # Reconciliation: pagination over > 50 objects and id__in batches of 40.
        listed = await env.adapter.get_line_items(campaign_id=campaign_id)
        assert sorted(li.id for li in listed) == sorted(table)
        some = [li.id for li in first[::3]]
        by_ids = await env.adapter.get_line_items(some)
        assert [li.id for li in by_ids] == sorted(some)
        li = by_ids[0]
        assert li.lifetime_budget_micros == seed_spec.lifetime_budget_micros // 432
        assert li.start == FLIGHT_START and li.end == FLIGHT_END


async def test_lost_create_response_does_not_duplicate() -> None:
    async with sandbox() as env:
        campaign_id, creatives = await setup_campaign(env.adapter)
        spec = LineItemSpec(alternative_id="cell-lost", campaign_id=campaign_id, name="lost",
                            lifetime_budget_micros=100 * 10**6, daily_budget_micros=10 * 10**6,
                            cpm_bid_micros=25 * 10**6, start=FLIGHT_START, end=FLIGHT_END,
                            creative_weights={creatives["hero_30s"]: 100})
        env.state.injector.script(
            ScriptedFault("drop_after", method="POST", path_prefix="/rest/v2/line-items"),
            ScriptedFault("drop_after", method="POST", path_prefix="/rest/v2/line-items/"))
        (li,) = await env.adapter.create_line_items([spec])
        assert env.state.injector.stats.injected.get("drop_after", 0) >= 2
        assert len(line_items_with(env.state, "cell-lost")) == 1
        assert await env.adapter.get_creative_weights(li.id) == {creatives["hero_30s"]: 100}
        assert li.active


# --- updates ---------------------------------------------------------------------------------


async def test_updates_are_reflected_by_reads() -> None:
    async with sandbox() as env:
        campaign_id, creatives = await setup_campaign(env.adapter)
        spec = LineItemSpec(alternative_id="cell-upd", campaign_id=campaign_id, name="upd",
                            lifetime_budget_micros=1_000 * 10**6, daily_budget_micros=50 * 10**6,
                            cpm_bid_micros=25_500_000, start=FLIGHT_START, end=FLIGHT_END,
                            targeting=Targeting(zips=("10001",)),
                            creative_weights={creatives["hero_30s"]: 100})
        (li,) = await env.adapter.create_line_items([spec])
        assert li.cpm_bid_micros == 25_500_000

        updated = await env.adapter.update_budget(li.id, lifetime_micros=1_234_567_891,
                                                  daily_micros=None)
        assert updated.lifetime_budget_micros == 1_234_567_891
        assert updated.daily_budget_micros is None

        targeting = Targeting(zips=("10002", "60601"), segments=("cord_cutter",),
                              hours_of_week=(0, 1, 167), app_bundles=("com.hulu.plus",),
                              device_types=(3, 7))
        await env.adapter.update_targeting(li.id, targeting)
        assert await env.adapter.get_targeting(li.id) == targeting.normalized()
        await env.adapter.update_targeting(li.id, Targeting())
        assert (await env.adapter.get_targeting(li.id)).is_empty()

        assert not (await env.adapter.set_active(li.id, False)).active
        assert (await env.adapter.set_active(li.id, True)).active

        weights = {creatives["hero_30s"]: 20, creatives["product_15s"]: 80}
        await env.adapter.set_creative_weights(li.id, weights)
        assert await env.adapter.get_creative_weights(li.id) == weights
        await env.adapter.set_creative_weights(li.id, {creatives["offer_15s"]: 100})
        assert await env.adapter.get_creative_weights(li.id) == {creatives["offer_15s"]: 100}

        assert (await env.adapter.update_bid(li.id, cpm_bid_micros=31_000_000)).cpm_bid_micros \
            == 31_000_000
        (again,) = await env.adapter.get_line_items([li.id])
        assert again.lifetime_budget_micros == 1_234_567_891
        assert again.cpm_bid_micros == 31_000_000
        assert again.active and again.creative_weighting_method == "WEIGHTED"


async def test_a_targeting_expression_deleted_in_the_ui_is_made_again() -> None:
    async with sandbox(faults=FaultConfig()) as env:
        campaign_id, creatives = await setup_campaign(env.adapter)
        targeting = Targeting(zips=("10001", "10002"), segments=("cord_cutter",))

        def spec(alt: str) -> LineItemSpec:
            return LineItemSpec(alternative_id=alt, campaign_id=campaign_id, name=alt,
                                lifetime_budget_micros=10**8, daily_budget_micros=10**7,
                                cpm_bid_micros=2 * 10**7, start=FLIGHT_START, end=FLIGHT_END,
                                targeting=targeting,
                                creative_weights={creatives["hero_30s"]: 100})

        (first,) = await env.adapter.create_line_items([spec("te-1")])
        gone = env.state.store.get("line-items", first.id)["targeting_expression_id"]
        # someone deletes the expression in Beeswax's UI (the adapter still has its id cached)
        other = env.new_adapter()
        try:
            await other._request("PATCH", f"/line-items/{first.id}",
                                 json_body={"targeting_expression_id": None})
            await other._request("DELETE", f"/targeting-expressions/{gone}")
        finally:
            await other.aclose()
        assert gone not in env.state.store.table("targeting-expressions")

        (second,) = await env.adapter.create_line_items([spec("te-2")])
        made = env.state.store.get("line-items", second.id)["targeting_expression_id"]
        assert made is not None and made != gone
        assert await env.adapter.get_targeting(second.id) == targeting.normalized()
        await env.adapter.update_targeting(first.id, targeting)
        assert env.state.store.get("line-items", first.id)["targeting_expression_id"] == made

        # any other error is still the caller's to see
        with pytest.raises(DSPNotFound):
            await env.adapter.update_targeting(999_999, targeting)
        with pytest.raises(DSPRejected):
            await env.adapter.create_line_items([replace(spec("te-3"), cpm_bid_micros=-1)])


async def test_creative_weights_above_100_keep_their_ratio() -> None:
    from campaignd.dsp.beeswax import scale_weights
    assert scale_weights({1: 300, 2: 100, 3: 0}) == {1: 100, 2: 33, 3: 0}
    assert scale_weights({1: 10_000, 2: 1}) == {1: 100, 2: 1}  # never rounded to off
    assert scale_weights({1: 80, 2: 20}) == {1: 80, 2: 20}
    async with sandbox(faults=FaultConfig()) as env:
        campaign_id, creatives = await setup_campaign(env.adapter)
        (li,) = await env.adapter.create_line_items([LineItemSpec(
            alternative_id="w", campaign_id=campaign_id, name="w", lifetime_budget_micros=10**8,
            daily_budget_micros=10**7, cpm_bid_micros=2 * 10**7, start=FLIGHT_START,
            end=FLIGHT_END, creative_weights={creatives["hero_30s"]: 600,
                                              creatives["product_15s"]: 200})])
        assert await env.adapter.get_creative_weights(li.id) == {
            creatives["hero_30s"]: 100, creatives["product_15s"]: 33}


# --- errors ----------------------------------------------------------------------------------


async def test_a_list_page_without_results_is_a_dsp_error_not_an_empty_list() -> None:
    from campaignd.errors import DSPTransientError
    async with sandbox(faults=FaultConfig()) as env:
        await setup_campaign(env.adapter)
        # a 200 whose body is not a page: before, read as "no line items at all"
        env.state.injector.script(ScriptedFault("status", method="GET", status=200,
                                                path_prefix="/rest/v2/line-items"))
        with pytest.raises(DSPTransientError, match="not a list of objects"):
            await env.adapter.get_line_items()
        assert await env.adapter.get_line_items() == []


async def test_business_rule_violations_are_rejected_with_field_errors() -> None:
    async with sandbox() as env:
        campaign_id, creatives = await setup_campaign(env.adapter, lifetime_micros=1_000 * 10**6,
                                                      daily_micros=100 * 10**6)

        def spec(alt: str, **kw: Any) -> LineItemSpec:
            base: dict[str, Any] = {
                "alternative_id": alt, "campaign_id": campaign_id, "name": alt,
                "lifetime_budget_micros": 600 * 10**6, "daily_budget_micros": 50 * 10**6,
                "cpm_bid_micros": 20 * 10**6, "start": FLIGHT_START, "end": FLIGHT_END,
                "creative_weights": {creatives["hero_30s"]: 100}}
            return LineItemSpec(**{**base, **kw})

        await env.adapter.create_line_items([spec("ok")])
        with pytest.raises(DSPRejected) as budget:
            await env.adapter.create_line_items([spec("over-budget")])
        assert "spend_budget.lifetime" in budget.value.field_errors
        assert "campaign budget" in str(budget.value)

        with pytest.raises(DSPRejected) as daily:
            await env.adapter.create_line_items([spec("over-daily", lifetime_budget_micros=10**6,
                                                      daily_budget_micros=500 * 10**6)])
        assert "spend_budget.daily" in daily.value.field_errors

        with pytest.raises(DSPRejected) as dates:
            await env.adapter.create_line_items([spec(
                "early", lifetime_budget_micros=10**6, start=FLIGHT_START - timedelta(days=2))])
        assert "start_date" in dates.value.field_errors

        (bare,) = await env.adapter.create_line_items([spec(
            "no-creative", lifetime_budget_micros=10**6, creative_weights={}, active=False)])
        with pytest.raises(DSPRejected) as active:
            await env.adapter.set_active(bare.id, True)
        assert "active" in active.value.field_errors

        with pytest.raises(DSPRejected) as zips:
            await env.adapter.update_targeting(bare.id, Targeting(zips=("ABCDE",)))
        assert "modules.geo.all.zip" in zips.value.field_errors

        with pytest.raises(DSPRejected) as weight:
            await env.adapter.set_creative_weights(bare.id, {creatives["hero_30s"]: 100,
                                                             999_999: 50})
        assert "creative_id" in weight.value.field_errors


async def test_missing_objects_are_not_found() -> None:
    async with sandbox() as env:
        with pytest.raises(DSPNotFound):
            await env.adapter.update_budget(999_999, lifetime_micros=1, daily_micros=None)
        with pytest.raises(DSPNotFound):
            await env.adapter.get_targeting(999_999)
        with pytest.raises(DSPNotFound):
            await env.adapter.set_creative_weights(999_999, {1: 100})


# --- retries, rate limits, circuit breaker ---------------------------------------------------


async def test_429_retry_after_is_honoured() -> None:
    async with sandbox() as env:
        await env.adapter.ensure_advertiser(alternative_id="adv", name="A")
        env.delays.clear()
        env.state.injector.script(
            ScriptedFault("429", method="GET", path_prefix="/rest/v2/advertisers",
                          retry_after_s=7))
        await env.adapter.ensure_advertiser(alternative_id="adv", name="A")
        assert 7.0 in env.delays
        assert env.adapter.rate_limited >= 1


async def test_persistent_429_surfaces_as_rate_limited() -> None:
    async with sandbox(faults=FaultConfig(), adapter_options={"max_attempts": 3}) as env:
        await env.adapter.ensure_advertiser(alternative_id="adv", name="A")
        env.state.injector.script(*[
            ScriptedFault("429", method="GET", retry_after_s=2) for _ in range(3)])
        with pytest.raises(DSPRateLimited) as exc:
            await env.adapter.get_line_items()
        assert exc.value.retry_after == 2.0
        assert exc.value.retryable


async def test_5xx_and_dropped_connections_are_retried_with_backoff() -> None:
    async with sandbox() as env:
        await env.adapter.ensure_advertiser(alternative_id="adv", name="A")
        retries = env.adapter.retries
        env.delays.clear()
        env.state.injector.script(
            ScriptedFault("5xx", method="GET", status=502),
            ScriptedFault("drop_before", method="GET"),
            ScriptedFault("drop_after", method="GET"),
            ScriptedFault("5xx", method="GET", status=503))
        assert await env.adapter.get_line_items() == []
        assert env.adapter.retries >= retries + 4
        # full jitter: each delay is within [0, base * 2**attempt]
        assert all(0 <= d <= 0.5 * 2 ** (i + 1) for i, d in enumerate(env.delays[:4]))


async def test_timeouts_are_retried() -> None:
    slow = FaultConfig(seed=3, slow_seconds=1.0)
    async with sandbox(faults=slow, adapter_options={"timeout_s": 0.2}) as env:
        await env.adapter.ensure_advertiser(alternative_id="adv", name="A")
        env.state.injector.script(ScriptedFault("slow", method="GET"))
        assert await env.adapter.get_line_items() == []
        assert "timed out" in (env.adapter.health().last_error or "")


async def test_circuit_breaker_opens_and_half_opens() -> None:
    clock = VirtualClock(datetime(2026, 11, 29, tzinfo=UTC))
    options = {"clock": clock, "breaker_threshold": 3, "breaker_cooldown_s": 30.0,
               "max_attempts": 6}
    async with sandbox(faults=FaultConfig(), adapter_options=options) as env:
        await env.adapter.ensure_advertiser(alternative_id="adv", name="A")
        env.state.injector.script(*[ScriptedFault("5xx", method="GET") for _ in range(3)])
        with pytest.raises(DSPCircuitOpen):
            await env.adapter.get_line_items()
        assert env.adapter.health().circuit == "open"
        sent = env.adapter.requests
        with pytest.raises(DSPCircuitOpen, match="next probe"):
            await env.adapter.get_line_items()
        assert env.adapter.requests == sent  # failing fast: nothing sent

        clock.advance(31)  # half-open: one probe; it fails and re-opens the breaker
        env.state.injector.script(ScriptedFault("5xx", method="GET"))
        with pytest.raises(DSPCircuitOpen):
            await env.adapter.get_line_items()
        assert env.adapter.health().circuit == "open"

        clock.advance(31)  # half-open again; the probe succeeds and closes it
        assert await env.adapter.get_line_items() == []
        health = env.adapter.health()
        assert health.circuit == "closed" and health.healthy
        assert health.consecutive_failures == 0


async def test_client_side_rate_limit_spaces_requests() -> None:
    async with sandbox(faults=FaultConfig(), adapter_options={
            "rate_limit_per_s": 50.0, "rate_burst": 1}) as env:
        await env.adapter.ensure_advertiser(alternative_id="adv", name="A")
        start = anyio.current_time()
        for _ in range(10):
            await env.adapter.get_line_items()
        assert anyio.current_time() - start >= 9 / 50 * 0.9


# --- reporting -------------------------------------------------------------------------------


async def test_report_polls_204_until_the_csv_is_ready() -> None:
    async with sandbox(report_polls=3) as env:
        campaign_id, creatives = await setup_campaign(env.adapter)
        specs = [LineItemSpec(alternative_id=f"r{i}", campaign_id=campaign_id, name=f"r{i}",
                              lifetime_budget_micros=10**8, daily_budget_micros=10**7,
                              cpm_bid_micros=2 * 10**7, start=FLIGHT_START, end=FLIGHT_END,
                              creative_weights={creatives["hero_30s"]: 100}) for i in range(3)]
        made = await env.adapter.create_line_items(specs)
        env.delays.clear()
        rows = await env.adapter.run_report(
            fields=("campaign_id", "line_item_id", "spend", "impression", "clicks"),
            filters={"line_item_id": ",".join(str(li.id) for li in made[:2])})
        assert sorted(int(r["line_item_id"]) for r in rows) == sorted(li.id for li in made[:2])
        assert all(r["spend"] == "0.00" and r["impression"] == "0" for r in rows)
        assert env.delays.count(0.25) >= 3  # three 204s, each followed by a poll interval

        with pytest.raises(DSPRejected) as bad:
            await env.adapter.run_report(fields=("line_item_id", "no_such_field"))
        assert "fields" in bad.value.field_errors


# --- the log feed (real ground-truth market) -------------------------------------------------


def seed_market(start: datetime) -> Any:
    from campaignd.dsp.sandbox.market import Market
    from campaignd.dsp.sandbox.scenarios import load_scenario

    scenario = load_scenario(ROOT / "config" / "scenarios" / "seed.toml")
    return Market(scenario, seed=11, start=start, account_timezone="America/New_York")


async def drain(read: Callable[[str | None], Awaitable[Any]], cursor: str | None,
                max_batches: int = 10_000) -> tuple[list[bytes], str | None]:
    out: list[bytes] = []
    for _ in range(max_batches):
        batch = await read(cursor)
        out.extend(batch.messages)
        if not batch.messages and batch.next_cursor == cursor:
            break
        cursor = batch.next_cursor
    return out, cursor


async def test_event_feed_resumes_without_loss_and_surfaces_raw_faults(
        seed_spec: CampaignSpec) -> None:
    start = datetime(2026, 11, 3, 12, tzinfo=UTC)
    market = seed_market(start)
    async with sandbox(market=market, time_scale=0.001) as env:
        campaign_id, creatives = await setup_campaign(env.adapter)
        specs = cell_specs(seed_spec, campaign_id, creatives, n=48)
        made = await env.adapter.create_line_items(specs)
        assert len(made) == 48
        configured = env.state.line_item_config(env.state.store.get("line-items", made[0].id))
        assert configured.active and configured.creatives == {"hero_30s": 100}
        assert configured.zips == frozenset(seed_spec.audiences[0].zips)

        appended = env.state.advance_market(start + timedelta(hours=2))
        assert 300 < appended < 200_000, appended

        adapter = env.adapter
        first, cursor = await drain(lambda c: adapter.read_events(c, limit=97), None,
                                    max_batches=4)
        # A restarted consumer resumes from the saved cursor with a fresh adapter.
        other = env.new_adapter()
        try:
            rest, cursor = await drain(lambda c: other.read_events(c, limit=5000), cursor)
        finally:
            await other.aclose()
        got = first + rest
        feed = env.state.feed
        assert got == feed.read(None, feed.next_seq + 1)[0]  # nothing lost, order kept
        assert cursor is not None and cursor.endswith(str(feed.next_seq))

        messages, failures = decode_messages(got)
        stats = env.state.injector.stats.injected
        assert len(failures) >= stats.get("feed_malformed", 0) > 0
        impressions = [m.impression for m in messages if m.impression is not None]
        keys = [imp.adgroup_key() for imp in impressions]
        assert len(set(keys)) < len(keys)  # duplicates reach the consumer
        stamps = [int(m.impression.rx_timestamp_usecs or 0) for m in messages
                  if m.impression is not None]
        assert any(b < a for a, b in itertools.pairwise(stamps))  # out of order
        imp = impressions[0]
        assert imp.adgroupid is not None and imp.adgroupid.buzz_key == "sandbox"
        assert int(imp.adgroupid.lineitemid) in {li.id for li in made}
        assert imp.creative_id in {str(c) for c in creatives.values()}
        assert int(imp.win_price_micros_usd or 0) > 0
        assert {m.kind for m in messages} >= {"impression", "activity"}

        # Reporting agrees with the market's lifetime totals.
        rows = await adapter.run_report(fields=("line_item_id", "spend", "impression"))
        delivered = market.delivered()
        assert sum(int(r["impression"]) for r in rows) == sum(
            d["impressions"] for d in delivered.values()) > 0
        (li,) = await adapter.get_line_items([made[0].id])
        assert li.spend_micros == delivered[made[0].id]["spend_micros"]


# --- the boundary conversions (pure) ---------------------------------------------------------


def test_money_converts_exactly_between_micros_and_decimal_strings() -> None:
    from campaignd.dsp.beeswax_codec import decimal_to_micros, micros_to_decimal

    for micros in (0, 1, 999_999, 1_000_000, 347_222_222, 150_000 * 10**6, 2**53 + 1):
        assert decimal_to_micros(micros_to_decimal(micros)) == micros
    assert micros_to_decimal(12_500_000) == "12.5"
    assert decimal_to_micros("0.1") == 100_000 and decimal_to_micros(2.5) == 2_500_000


def test_error_bodies_flatten_to_field_paths() -> None:
    from campaignd.dsp.beeswax_codec import flatten_errors

    body = {"modules": {"geo": {"all": {"zip": ["bad"]}}}, "alternative_id": ["Not a valid "
                                                                              "string."],
            "detail": "Not found."}
    assert flatten_errors(body) == {"modules.geo.all.zip": ["bad"],
                                    "alternative_id": ["Not a valid string."],
                                    "detail": ["Not found."]}


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    from campaignd.dsp.resilience import parse_retry_after

    now = datetime(2026, 11, 29, 12, tzinfo=UTC)
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after("0.5", now) == 0.5
    assert parse_retry_after("Sun, 29 Nov 2026 12:00:30 GMT", now) == 30.0
    assert parse_retry_after("soon", now) is None and parse_retry_after(None) is None


@pytest.mark.parametrize("targeting", [
    Targeting(),
    Targeting(zips=("10001", "02116"), device_types=(3,)),
    Targeting(segments=("a", "b"), hours_of_week=tuple(range(0, 168, 7)),
              app_bundles=("com.hulu.plus", "com.peacocktv.peacock")),
])
def test_targeting_round_trips_through_v2_modules(targeting: Targeting) -> None:
    from campaignd.dsp.beeswax_codec import targeting_from_modules, targeting_key, targeting_modules

    modules = targeting_modules(targeting)
    assert targeting_from_modules(modules) == targeting.normalized()
    assert targeting_key(targeting) == targeting_key(Targeting(
        zips=tuple(reversed(targeting.zips)), segments=targeting.segments,
        hours_of_week=targeting.hours_of_week, app_bundles=targeting.app_bundles,
        device_types=targeting.device_types))
    if targeting.hours_of_week:
        assert set(modules["time"]["all"]) == {"user_time_of_week"}


async def test_authentication_falls_back_to_the_v05_endpoint() -> None:
    async with sandbox(faults=FaultConfig()) as env:
        env.state.injector.script(ScriptedFault("status", method="POST", status=404,
                                                path_prefix="/rest/v2/authenticate"))
        await env.adapter.ensure_advertiser(alternative_id="adv", name="A")
        assert env.adapter.health().authenticated
        assert env.state.injector.stats.injected == {"status": 1}


def test_impossible_values_are_dsp_errors_not_crashes() -> None:
    from campaignd.dsp.beeswax_codec import decimal_to_micros
    from campaignd.dsp.resilience import MAX_RETRY_AFTER_S, parse_retry_after
    from campaignd.errors import DSPTransientError
    for bad in ("NaN", "Infinity", "-Infinity", "1e40"):
        with pytest.raises(DSPTransientError):
            decimal_to_micros(bad)
    assert parse_retry_after("inf") == MAX_RETRY_AFTER_S
    assert parse_retry_after("99999999") == MAX_RETRY_AFTER_S
    assert parse_retry_after("nan") is None
