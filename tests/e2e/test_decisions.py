"""End to end: the daemon in sandbox mode decides and (in live mode) moves budget toward the
truly better cells; shadow mode changes nothing on the DSP; approve mode waits for a person
(CLI and API), and an applied change can be undone.

The DSP's budgets are read back from the sandbox's Beeswax API with the real adapter; the
ground truth (each cell's true conversions per dollar) comes from the same scenario's market."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np
import pytest
from pydantic import SecretStr

from campaignd.domain.campaign import atomize, load_spec
from campaignd.dsp.beeswax import BeeswaxAdapter
from campaignd.dsp.sandbox.market import Market
from campaignd.dsp.sandbox.scenarios import load_scenario
from campaignd.sim.driver import line_item_configs
from campaignd.testing import SEED_SCENARIO, SEED_SPEC, DaemonProcess, cli, wait_for

pytestmark = pytest.mark.e2e


def dsp_line_items(base_url: str) -> dict[str, tuple[int, int]]:
    """cell alternative id → (daily budget, spend so far) in micros, as the sandbox DSP holds
    them (read with the real Beeswax adapter)."""
    async def read() -> dict[str, tuple[int, int]]:
        adapter = BeeswaxAdapter(base_url=base_url, email="sandbox@campaignd.local",
                                 password=SecretStr("sandbox"), rate_limit_per_s=None)
        try:
            items = await adapter.get_line_items()
        finally:
            await adapter.aclose()
        return {li.alternative_id or "": (int(li.daily_budget_micros or 0),
                                          int(li.spend_micros)) for li in items}
    return anyio.run(read)


def dsp_daily_budgets(base_url: str) -> dict[str, int]:
    return {k: v[0] for k, v in dsp_line_items(base_url).items()}


def true_value_per_dollar() -> dict[str, float]:
    """The scenario's truth: each cell's expected conversions per dollar over a day."""
    scenario = load_scenario(SEED_SCENARIO)
    spec = scenario.campaign
    cells = atomize(spec)
    start = scenario.default_start
    market = Market(scenario, seed=0, start=start)
    for cfg in line_item_configs(spec, cells, spec.daily_budget_micros // len(cells)):
        market.configure(cfg)
    v = market.expected_value_per_dollar("conversions", start, start + timedelta(days=1))
    return {c.alternative_id: float(v[i]) for i, c in enumerate(cells)}


def test_live_mode_moves_budget_toward_the_truly_better_cells(tmp_path: Path) -> None:
    # 15 market minutes per second and a reallocation every 3 s: about a market day and a half
    with DaemonProcess(tmp_path, time_scale=900, reallocation_s=3.0, monitor_s=5.0) as d:
        st = d.wait_running()
        base = st["dsp"]["base_url"]

        def cycles(n: int) -> dict[str, Any] | None:
            _, st = d.status()
            return st if st["decision"]["cycles"] >= n else None

        wait_for(lambda: cycles(15), 120, "15 decision cycles", interval=1)
        early = dsp_line_items(base)
        wait_for(lambda: cycles(35), 150, "35 decision cycles", interval=1)
        late = dsp_line_items(base)
        _, st = d.status()
        assert st["decision"]["executor"]["applied"] > 500
        r = httpx.get(f"{d.base_url}/api/v1/actions", params={"status": "applied",
                                                               "limit": 5})
        assert r.status_code == 200
        sample = r.json()["actions"][0]
        assert sample["agent"] == "reallocation" and sample["reason"].startswith(
            "reallocation: budget_rebalance — daily budget")
        assert {"rate_mean", "rate_low", "rate_high", "trials"} <= set(
            sample["evidence"]["cell"])
    assert d.returncode == 0
    truth = true_value_per_dollar()
    spec = load_spec(SEED_SPEC)
    ids = [c.alternative_id for c in atomize(spec)]
    v = np.array([truth[i] for i in ids])
    budgets = np.array([late[i][0] for i in ids], dtype=float)
    assert budgets.sum() <= spec.daily_budget_micros  # never above the cap
    # where the money went once the agents had learned: the spend of the second part of the
    # run, weighted by each cell's true conversions per dollar, against an equal split's
    spent = np.array([late[i][1] - early[i][1] for i in ids], dtype=float)
    assert spent.sum() > 0
    weighted, equal = float((spent * v).sum() / spent.sum()), float(v.mean())
    print(f"true conversions per dollar of the spend: {weighted:.4f} vs {equal:.4f} equal split")
    # measured 1.27x, 1.18x, 1.24x and 1.095x in four runs: a day and a half of a real-time
    # daemon is noisy (which dayparts the second part covers moves it too); 1.05x still asks
    # for money visibly moved toward the truly better cells
    assert weighted > 1.05 * equal, (weighted, equal)


def test_shadow_mode_decides_and_records_but_changes_nothing(tmp_path: Path) -> None:
    with DaemonProcess(tmp_path, time_scale=600, reallocation_s=3.0, monitor_s=5.0,
                       mode="shadow") as d:
        st = d.wait_running()
        before = dsp_daily_budgets(st["dsp"]["base_url"])

        def recorded() -> int | None:
            r = cli("actions", "list", "--config", str(d.config), "--json", "--limit", "1")
            assert r.returncode == 0, r.stderr
            return int(json.loads(r.stdout)["counts"]["shadow"]) or None

        # thompson records what its posterior backs: measured 45 s after start, more on a busy
        # machine (the first backed plan can take a few dozen cycles)
        n = wait_for(recorded, 240, "shadow actions to be recorded", interval=2)
        assert n > 0
        _, st = d.status()
        assert st["decision"]["mode"] == "shadow"
        assert st["decision"]["executor"]["applied"] == 0
        # what the engine refused before (thompson's early plans) is counted by reason
        assert st["decision"]["last_recorded_at"] is not None
        assert all(isinstance(v, int) and v > 0
                   for v in st["decision"]["skipped_since_start"].values())
        assert dsp_daily_budgets(st["dsp"]["base_url"]) == before
    assert d.returncode == 0


def test_approve_mode_waits_for_a_person_then_undo(tmp_path: Path) -> None:
    # A proposal stands until the next cycle supersedes it: give the person 30 s. The seed
    # rule proposes at every cycle; thompson proposes only what its posterior backs, which
    # early in a run can be nothing for several cycles (the live and shadow tests cover it).
    with DaemonProcess(tmp_path, time_scale=600, reallocation_s=30.0, monitor_s=5.0,
                       mode="approve", policy="seed") as d:
        st = d.wait_running()
        base = st["dsp"]["base_url"]
        before = dsp_daily_budgets(base)

        def proposed() -> list[dict[str, Any]] | None:
            r = httpx.get(f"{d.base_url}/api/v1/actions",
                          params={"status": "proposed", "limit": 500})
            return r.json()["actions"] or None

        queue = wait_for(proposed, 120, "proposed actions", interval=2)
        cut = next(a for a in queue if a["after"]["daily_budget_micros"]
                   < a["before"]["daily_budget_micros"])
        other = next(a for a in queue if a["id"] != cut["id"])
        assert dsp_daily_budgets(base) == before  # nothing applied before a person decides

        # approve through the CLI
        r = cli("actions", "approve", str(cut["id"]), "--config", str(d.config), "--actor",
                "alice", "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["status"] == "pending"

        def applied(action_id: int) -> dict[str, Any] | None:
            a = httpx.get(f"{d.base_url}/api/v1/actions/{action_id}").json()
            return a if a["status"] == "applied" else None

        done = wait_for(lambda: applied(cut["id"]), 30, "the approved action to be applied")
        assert done["actor"] == "alice"
        alt = _alt(done)
        assert dsp_daily_budgets(base)[alt] == cut["after"]["daily_budget_micros"]

        # reject through the API: a mutating call needs the bearer token
        url = f"{d.base_url}/api/v1/actions/{other['id']}/reject"
        assert httpx.post(url, json={"actor": "bob"}).status_code == 401
        r = httpx.post(url, json={"actor": "bob", "note": "not now"},
                       headers={"Authorization": f"Bearer {d.token}"})
        assert r.status_code == 200 and r.json()["status"] == "rejected"
        again = httpx.post(url, headers={"Authorization": f"Bearer {d.token}"})
        assert again.status_code == 409 and again.json()["field"] == "action_id"
        bad = httpx.post(f"{d.base_url}/api/v1/actions/abc/approve",
                         headers={"Authorization": f"Bearer {d.token}"})
        assert bad.status_code == 400 and bad.json()["field"] == "action_id"

        # undo the applied cut through the API
        r = httpx.post(f"{d.base_url}/api/v1/actions/{cut['id']}/undo",
                       headers={"Authorization": f"Bearer {d.token}"}, json={"actor": "carol"})
        assert r.status_code == 202, r.text
        undone = wait_for(lambda: applied(r.json()["id"]), 30, "the undo to be applied")
        assert undone["undo_of"] == cut["id"]
        # asked again: the same undo, and the answer says nothing new was queued
        again = httpx.post(f"{d.base_url}/api/v1/actions/{cut['id']}/undo",
                           headers={"Authorization": f"Bearer {d.token}"},
                           json={"actor": "carol"})
        assert again.status_code == 200 and again.json()["repeat"] is True, again.text
        assert again.json()["id"] == r.json()["id"]
        assert dsp_daily_budgets(base)[alt] == cut["before"]["daily_budget_micros"]
        # and the CLI shows the audit trail
        r = cli("actions", "show", str(cut["id"]), "--config", str(d.config))
        assert r.returncode == 0 and "alice" in r.stdout and "evidence" in r.stdout
        r = cli("actions", "approve", "999999", "--config", str(d.config))
        assert r.returncode == 2 and "no action 999999" in r.stderr
        # a config naming another database: the daemon on its port is not that database's
        other = f"sqlite+aiosqlite:///{tmp_path / 'other.db'}"
        r = cli("actions", "undo", str(cut["id"]), "--config", str(d.config),
                env={"CAMPAIGND_DATABASE__URL": other})
        assert r.returncode == 2 and "another campaignd" in r.stderr, r.stderr
        assert "database.url" in r.stderr and "nothing was sent" in r.stderr
    assert d.returncode == 0


def _alt(action: dict[str, Any]) -> str:
    return f"campaignd:{action['campaign_id']}:{action['cell_id']}"


def test_the_cli_changes_actions_on_the_daemons_clock(tmp_path: Path) -> None:
    """In sandbox mode the daemon lives in the market's sped-up time. An undo from the CLI goes
    through the running daemon, so it is stamped with that clock (as the API's are), not this
    machine's wall clock: a manual hold (decision.manual_hold_s, compared in market time) then
    lasts as long as it should, and the audit log stays in order. `campaignd status` says
    which clock each of its times is on."""
    from datetime import UTC, datetime

    with DaemonProcess(tmp_path, time_scale=900, reallocation_s=3.0, monitor_s=5.0,
                       policy="seed") as d:
        d.wait_running()

        def applied_change() -> dict[str, Any] | None:
            # the daemon is busy (a re-plan every 3 s): a generous timeout, a short page
            r = httpx.get(f"{d.base_url}/api/v1/actions",
                          params={"status": "applied", "limit": 50}, timeout=30)
            return next((a for a in r.json()["actions"]
                         if a["agent"] == "reallocation" and a["kind"] == "budget"), None)

        done = wait_for(applied_change, 120, "an applied budget change", interval=1)
        _, st = d.status()
        market_before = datetime.fromisoformat(st["market_time"])
        assert market_before - datetime.now(UTC) > timedelta(hours=1)  # the clocks differ
        # (the database's URL spelt another way: still this daemon's database, by its id)
        same_db = f"sqlite+aiosqlite:///{tmp_path}/./campaignd.db"
        r = cli("actions", "undo", str(done["id"]), "--config", str(d.config), "--actor",
                "dave", "--json", env={"CAMPAIGND_DATABASE__URL": same_db})
        assert r.returncode == 0, r.stderr
        undo = json.loads(r.stdout)
        wall = datetime.now(UTC)
        created = datetime.fromisoformat(undo["created_at"])
        assert undo["undo_of"] == done["id"] and undo["actor"] == "dave"
        assert created >= market_before, (created, market_before)
        assert created - wall > timedelta(hours=1), (created, wall)  # not the wall clock
        assert datetime.fromisoformat(undo["updated_at"]) >= market_before
        # a token the daemon refuses: in sandbox mode the CLI will not stamp the change with
        # its own clock instead
        r = cli("actions", "undo", str(done["id"]), "--config", str(d.config),
                env={"CAMPAIGND_HTTP__API_TOKEN": "not-the-token"})
        assert r.returncode == 2 and "http.api_token" in r.stderr, r.stderr
        r = cli("status", "--config", str(d.config))
        text = " ".join(r.stdout.split())
        assert "clocks: market time" in text and "last run (wall)" in text, text
    assert d.returncode == 0


def test_a_restarted_sandbox_drops_the_earlier_markets_proposals(tmp_path: Path) -> None:
    """Each start is a new sandbox market, at the wall clock — behind an earlier run's sped-up
    market time. That run's proposals (about another DSP's line items) were left open, stamped
    ahead of the new clock: they "awaited review" for as long as that run was ahead, and no
    re-plan of the new market could be proposed meanwhile. They are superseded at start."""
    kw: dict[str, Any] = {"time_scale": 600, "reallocation_s": 5.0, "monitor_s": 5.0,
                          "mode": "approve", "policy": "seed"}

    def proposed(d: DaemonProcess) -> list[dict[str, Any]] | None:
        r = httpx.get(f"{d.base_url}/api/v1/actions", params={"status": "proposed",
                                                               "limit": 500})
        return r.json()["actions"] or None

    with DaemonProcess(tmp_path, **kw) as first:
        first.wait_running()
        earlier = wait_for(lambda: proposed(first), 120, "proposed actions", interval=2)
    assert first.returncode == 0
    with DaemonProcess(tmp_path, **kw) as second:
        second.wait_running()
        for a in earlier:
            now = httpx.get(f"{second.base_url}/api/v1/actions/{a['id']}").json()
            assert now["status"] == "superseded", now
            assert "earlier sandbox market" in now["error"]
        ids = {a["id"] for a in earlier}
        fresh = wait_for(lambda: [a for a in proposed(second) or [] if a["id"] not in ids],
                         120, "a proposal of the new market", interval=2)
        assert fresh
    assert second.returncode == 0
