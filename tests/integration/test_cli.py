"""The CLI as a user runs it: a real process, exit codes, --json shapes, errors on stderr."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from campaignd.testing import cli, free_port

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "config" / "campaigns" / "madhive_12345.toml"


def test_version() -> None:
    from campaignd import __version__
    r = cli("--version")
    assert r.returncode == 0
    assert r.stdout.strip() == f"campaignd {__version__}"


def test_plan_json_counts_cells() -> None:
    r = cli("campaign", "plan", str(SEED), "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data == {"campaign_id": "madhive_12345", "cells": 432,
                    "dimensions": {"audience": 3, "creative": 3, "bid_strategy": 3,
                                   "daypart": 4, "platform": 4}}
    r = cli("campaign", "plan", str(SEED), "--json", "--cells")
    cells = json.loads(r.stdout)["cell_list"]
    assert len(cells) == 432 and len({c["cell_id"] for c in cells}) == 432
    assert set(cells[0]) == {"cell_id", "index", "audience", "creative", "bid_strategy",
                             "daypart", "platform", "alternative_id"}


def test_plan_human_output() -> None:
    r = cli("campaign", "plan", str(SEED))
    assert r.returncode == 0
    assert "432" in r.stdout and "cells" in r.stdout


def test_bad_spec_exits_2_naming_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(SEED.read_text().replace('"10001", ', '"1000x", ', 1))
    r = cli("campaign", "plan", str(bad))
    assert r.returncode == 2
    assert "audiences[0].zips" in r.stderr and "1000x" in r.stderr
    assert "Traceback" not in r.stderr
    r = cli("campaign", "plan", str(tmp_path / "missing.toml"))
    assert r.returncode == 2 and "file not found" in r.stderr


def test_a_huge_budget_is_refused_by_plan_and_add(tmp_path: Path) -> None:
    huge = tmp_path / "huge.toml"
    huge.write_text(SEED.read_text()
                    .replace('lifetime = "150000.00"', 'lifetime = "99999999999999999999999.99"')
                    .replace('daily = "2500.00"', 'daily = "99999999999999.99"'))
    env = {"CAMPAIGND_DATABASE__URL": f"sqlite+aiosqlite:///{tmp_path / 'h.db'}"}
    for args in (("campaign", "plan", str(huge)), ("campaign", "add", str(huge))):
        r = cli(*args, env=env)
        assert r.returncode == 2, (args, r.stderr)
        assert "budget.lifetime: is too large (at most 1,000,000,000" in r.stderr
        assert "budget.daily: is too large" in r.stderr
        assert "Traceback" not in r.stderr


def test_config_check(tmp_path: Path) -> None:
    r = cli("config", "check", "--config", "campaignd.toml.example", "--json",
            env={"CAMPAIGND_HTTP__API_TOKEN": "tok-abcdef-123456"})
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["ok"] is True
    assert data["settings"]["http"]["api_token"] == "**********"
    assert "tok-abcdef-123456" not in r.stdout
    assert data["settings"]["agents"]["reallocation_s"] == 120
    r = cli("config", "check", "--config", "campaignd.toml.example")
    assert r.returncode == 0 and "decision.mode" in r.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[decision]\nmode = "yolo"\n')
    r = cli("config", "check", "--config", str(bad))
    assert r.returncode == 2
    assert "decision.mode" in r.stderr and "yolo" in r.stderr and "'live'" in r.stderr
    assert "Traceback" not in r.stderr
    r = cli("config", "check", "--config", str(bad), env={
        "CAMPAIGND_DECISION__MODE": "live",
        "CAMPAIGND_DSP__SANDBOX__SCENARIO": str(ROOT / "config" / "scenarios" / "seed.toml")})
    assert r.returncode == 0, r.stderr  # the environment overrides the file


@pytest.mark.parametrize(("var", "value", "key"), [
    # (inf, -inf and every bounded key are covered in-process by tests/unit/test_settings.py)
    ("CAMPAIGND_AGENTS__MONITOR_S", "1e300", "(agents.monitor_s): must be at most 604800 s"),
    ("CAMPAIGND_DSP__RECONCILE_S", "nan", "dsp.reconcile_s"),
])
def test_unbounded_numbers_exit_2_from_check_and_run(tmp_path: Path, var: str, value: str,
                                                     key: str) -> None:
    env = {var: value, "CAMPAIGND_STATE_DIR": str(tmp_path / "state"),
           "CAMPAIGND_DATABASE__URL": f"sqlite+aiosqlite:///{tmp_path / 'r.db'}"}
    for args in (("config", "check"), ("run",)):
        r = cli(*args, env=env, timeout=60)
        assert r.returncode == 2, (args, r.stderr)
        assert key in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "r.db").exists()


def test_environment_errors_name_the_variable() -> None:
    for env, needles in (
            ({"CAMPAIGND_HTTP__PORT": "abc"}, ("CAMPAIGND_HTTP__PORT (http.port)", "'abc'")),
            ({"CAMPAIGND_CAMPAIGNS": "foo.toml"}, ("CAMPAIGND_CAMPAIGNS", "JSON list")),
            ({"CAMPAIGND_HTTP_PORT": "9000"}, ("did you mean CAMPAIGND_HTTP__PORT?",))):
        r = cli("config", "check", "--config", "campaignd.toml.example", env=env)
        assert r.returncode == 2, (env, r.stderr)
        assert all(n in r.stderr for n in needles), r.stderr
        assert "campaignd.toml.example" not in r.stderr and "Traceback" not in r.stderr


def test_missing_referenced_files_exit_2_from_check_and_run(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'state_dir = "{tmp_path / "state"}"\ncampaigns = ["missing.toml"]\n'
                   f'[database]\nurl = "sqlite+aiosqlite:///{tmp_path / "r.db"}"\n'
                   '[dsp.sandbox]\nscenario = "gone.toml"\n')
    for args in (("config", "check"), ("run",)):
        r = cli(*args, "--config", str(cfg), timeout=60)
        assert r.returncode == 2, (args, r.stderr)
        assert "campaigns[0]: file not found" in r.stderr
        assert "dsp.sandbox.scenario: file not found" in r.stderr
        assert "Traceback" not in r.stderr
    assert not (tmp_path / "r.db").exists()  # run failed before migrating the database


def test_config_check_validates_the_specs_and_the_scenario_it_names(tmp_path: Path) -> None:
    spec = tmp_path / "spec.toml"
    good = (ROOT / "config" / "campaigns" / "madhive_12345.toml").read_text()
    spec.write_text(good.replace('lifetime = "', 'lifetime = "-', 1))
    scenario = tmp_path / "scenario.toml"
    seed = ROOT / "config" / "campaigns" / "madhive_12345.toml"
    scenario.write_text(f'name = "x"\ncampaign = "{seed}"\n')
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'campaigns = ["{spec}"]\n[dsp.sandbox]\nscenario = "{scenario}"\n')
    r = cli("config", "check", "--config", str(cfg))
    assert r.returncode == 2, r.stderr
    assert "2 invalid file(s)" in r.stderr
    assert f"campaigns[0] ({spec})" in r.stderr and "budget.lifetime" in r.stderr
    assert f"dsp.sandbox.scenario ({scenario})" in r.stderr and "[base]" in r.stderr
    assert "Traceback" not in r.stderr


def test_run_names_a_state_dir_it_cannot_use_and_a_host_that_does_not_resolve(
        tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    a_file = tmp_path / "not-a-dir"
    a_file.write_text("")
    base = {"CAMPAIGND_DATABASE__URL": f"sqlite+aiosqlite:///{db}",
            "CAMPAIGND_DSP__SANDBOX__SCENARIO": str(ROOT / "config" / "scenarios" / "seed.toml")}
    for state_dir, needle in (("/proc/nope", "state_dir: cannot be created or written in"),
                              (str(a_file), "state_dir: is not a directory")):
        r = cli("run", env={**base, "CAMPAIGND_STATE_DIR": state_dir}, timeout=60)
        assert r.returncode == 2, r.stderr
        assert needle in r.stderr and "CAMPAIGND_STATE_DIR" in r.stderr
        assert "Traceback" not in r.stderr
        assert not db.exists()  # before the database migration
    r = cli("run", env={**base, "CAMPAIGND_STATE_DIR": str(tmp_path / "state"),
                        "CAMPAIGND_HTTP__HOST": "999.1.1.1"}, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "http.host '999.1.1.1' does not resolve" in r.stderr
    assert "another process may hold the port" not in r.stderr and "Traceback" not in r.stderr


def test_an_unwritable_log_file_or_a_file_nested_too_deep_exits_2(tmp_path: Path) -> None:
    r = cli("run", env={"CAMPAIGND_LOG__FILE": "/proc/nope/campaignd.log",
                        "CAMPAIGND_STATE_DIR": str(tmp_path / "state")}, timeout=60)
    assert r.returncode == 2, r.stderr  # (2: systemd's RestartPreventExitStatus, no loop)
    assert "log.file" in r.stderr and "Traceback" not in r.stderr
    deep = tmp_path / "deep.toml"
    deep.write_text("x = " + "[" * 3000 + "]" * 3000 + "\n")
    r = cli("config", "check", "--config", str(deep))
    assert r.returncode == 2 and "nested too deeply" in r.stderr, r.stderr
    r = cli("config", "check", env={"CAMPAIGND_CAMPAIGNS": "[" * 3000 + "]" * 3000})
    assert r.returncode == 2 and "CAMPAIGND_CAMPAIGNS" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_sandbox_serve_refuses_a_time_scale_or_start_the_market_cannot_run() -> None:
    scenario = str(ROOT / "config" / "scenarios" / "seed.toml")
    for args, field in ((["--time-scale", "nan"], "--time-scale"),
                        (["--time-scale", "1e300"], "--time-scale"),
                        (["--start", "9999-12-31T23:59:59Z"], "--start"),
                        (["--start", "0001-01-01T00:00:00+01:00"], "--start")):
        r = cli("sandbox", "serve", "--scenario", scenario, "--port", "0", *args, timeout=60)
        assert r.returncode == 2 and field in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr


def test_unknown_command_and_bad_option_exit_2() -> None:
    assert cli("frobnicate").returncode == 2
    assert cli("campaign", "plan").returncode == 2


@pytest.fixture(params=["sqlite", "postgres"])
def db_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    return {"CAMPAIGND_DATABASE__URL": url}


def test_db_upgrade_and_campaign_store(db_env: dict[str, str]) -> None:
    r = cli("db", "upgrade", env=db_env)
    assert r.returncode == 0, r.stderr
    r = cli("campaign", "add", str(SEED), "--json", env=db_env)
    assert r.returncode == 0, r.stderr
    first = json.loads(r.stdout)
    assert first["created"] is True and first["cells_added"] == 432
    r = cli("campaign", "add", str(SEED), "--json", env=db_env)
    second = json.loads(r.stdout)
    assert second["created"] is False and second["cells_added"] == 0
    assert second["cells_unchanged"] == 432
    r = cli("campaign", "list", "--json", env=db_env)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["campaigns"]
    assert [c["id"] for c in rows] == ["madhive_12345"]
    assert rows[0]["cells_total"] == 432
    assert rows[0]["lifetime_budget"] == "150000.00"
    r = cli("campaign", "show", "madhive_12345", "--json", "--cells", env=db_env)
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert len(shown["cell_list"]) == 432 and shown["daily_budget"] == "2500.00"
    r = cli("campaign", "show", "nope", env=db_env)
    assert r.returncode == 2 and "nope" in r.stderr
    r = cli("campaign", "list", env=db_env)
    assert r.returncode == 0 and "madhive_12345" in r.stdout


def test_status_when_stopped_exits_1(tmp_path: Path) -> None:
    env = {"CAMPAIGND_DATABASE__URL": f"sqlite+aiosqlite:///{tmp_path / 's.db'}",
           "CAMPAIGND_HTTP__PORT": "1"}
    r = cli("status", "--json", env=env)
    assert r.returncode == 1
    data = json.loads(r.stdout)
    assert data["state"] == "stopped" and data["healthy"] is False
    assert not (tmp_path / "s.db").exists()  # looking never creates a database


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf", "1e9"])
def test_status_refuses_a_timeout_that_cannot_wait(value: str) -> None:
    r = cli("status", "--timeout", value, "--json")
    assert r.returncode == 2, r.stderr
    assert "--timeout: must be a number of seconds greater than 0" in r.stderr
    assert r.stdout == "" and "Traceback" not in r.stderr


def test_simulate_json_report_and_bad_input(tmp_path: Path) -> None:
    scenario = str(ROOT / "config" / "scenarios" / "seed.toml")
    report = tmp_path / "report.html"
    r = cli("simulate", "--scenario", scenario, "--days", "0.25", "--seed", "3", "--policy",
            "seed", "--json", "--report", str(report), timeout=300)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    for key in ("conversions", "conversion_value", "spend", "budget", "impressions",
                "oracle_conversions", "oracle_conversion_value", "capture_ratio", "actions",
                "wall_seconds"):
        assert key in data
    assert isinstance(data["spend"], str) and "." in data["spend"]  # money as a decimal string
    html = report.read_text()
    assert "<svg" in html
    # Self-contained: no external scripts, styles or images.
    assert "<script src" not in html and "<link" not in html and "<img" not in html
    r = cli("simulate", "--scenario", scenario, "--days", "0", timeout=60)
    assert r.returncode == 2 and "--days" in r.stderr
    r = cli("simulate", "--scenario", scenario, "--days", "1", "--policy", "best", timeout=60)
    assert r.returncode == 2 and "uniform" in r.stderr
    # policy options: KEY=VALUE, named when unknown, malformed or out of range
    r = cli("simulate", "--scenario", scenario, "--days", "0.1", "-o", "fatigue_half_life=none",
            "-o", "spill=0", "--json", timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["policy_options"] == {"fatigue_half_life": None, "spill": 0}
    for bad, named in (("spil=0.2", "spil: is not an option of the thompson policy"),
                       ("spill", "--option: must be KEY=VALUE"),
                       ("spill=1.5", "spill: must be in [0, 1), got 1.5"),
                       ("replan_seconds=-5", "replan_seconds: must be >= 1 second"),
                       # each value is read as its option's type, named with an example
                       ("max_cut_per_day=abc", "max_cut_per_day: must be a number or none "
                                               "(got 'abc'); e.g. max_cut_per_day=0.2"),
                       ("estimate_delay=maybe", "estimate_delay: must be true or false (got "
                                                "'maybe'); e.g. estimate_delay=false"),
                       ("draws=1_0", "draws: must be a whole number")):
        r = cli("simulate", "--scenario", scenario, "--days", "1", "-o", bad, timeout=60)
        assert r.returncode == 2 and named in r.stderr, (bad, r.stderr)
    # the learning bound: the oracle takes over after some hours of the run, no more
    r = cli("simulate", "--scenario", scenario, "--days", "1", "--oracle-after", "30",
            timeout=60)
    assert r.returncode == 2 and "--oracle-after" in r.stderr and "at most 24" in r.stderr


def test_simulate_checks_the_report_path_first_and_keeps_the_result(tmp_path: Path) -> None:
    """A report path that cannot be written exits 2 naming --report before the run; one that
    fails at the end (a full disk) still prints the whole result, then says the report is
    missing (exit 1)."""
    scenario = str(ROOT / "config" / "scenarios" / "seed.toml")
    for bad, why in (("/proc/r.html", "cannot be created in /proc"),
                     (str(tmp_path), "is a directory"),
                     (str(ROOT / "README.md" / "r.html"), "is not a directory")):
        r = cli("simulate", "--scenario", scenario, "--days", "1", "--report", bad, "--json",
                timeout=60)
        assert r.returncode == 2, (bad, r.stderr)
        assert "--report" in r.stderr and why in r.stderr and "Traceback" not in r.stderr
        assert r.stdout == ""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full to fill up")
    r = cli("simulate", "--scenario", scenario, "--days", "0.05", "--policy", "uniform",
            "--report", "/dev/full", "--json", timeout=300)
    assert r.returncode == 1, r.stderr
    data = json.loads(r.stdout)
    assert "conversions" in data and data["report_error"].startswith("/dev/full: ")
    assert "--report" in r.stderr and "not written" in r.stderr and "Traceback" not in r.stderr


def test_deadletter_list_and_show(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    import anyio

    from campaignd.stores.sql.migrate import upgrade
    from campaignd.stores.sql.repository import SqlStore

    url = f"sqlite+aiosqlite:///{tmp_path / 'dl.db'}"

    async def seed() -> None:
        await upgrade(url)
        store = await SqlStore.connect(url)
        await store.add_dead_letters([("malformed", b"{oops"), ("bad_money", b'{"x": 1}')],
                                     source="events:test", now=datetime.now(UTC))
        await store.close()

    anyio.run(seed)
    # (a port of its own: a daemon someone runs on the default port is not this database's)
    env = {"CAMPAIGND_DATABASE__URL": url, "CAMPAIGND_HTTP__PORT": str(free_port())}
    r = cli("deadletter", "list", "--json", env=env)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["counts"] == {"malformed": 1, "bad_money": 1}
    ids = {d["reason"]: d["id"] for d in data["dead_letters"]}
    r = cli("deadletter", "show", str(ids["malformed"]), "--json", env=env)
    assert r.returncode == 0 and json.loads(r.stdout)["raw"] == "{oops"
    r = cli("deadletter", "list", "--reason", "bad_money", env=env)
    assert r.returncode == 0 and "bad_money" in r.stdout
    r = cli("deadletter", "show", "999", env=env)
    assert r.returncode == 2 and "999" in r.stderr
    # a reason that is none (a typo) is refused, as `deadletter retry` refuses it, rather than
    # listing nothing with exit 0
    r = cli("deadletter", "list", "--reason", "bad_mony", env=env)
    assert r.returncode == 2 and "--reason: is not a dead-letter reason" in r.stderr, r.stderr
    assert "bad_money" in r.stderr


def test_actions_archived_list_and_show(tmp_path: Path) -> None:
    """An action moved to the audit archive is still listed (--archived) and shown."""
    from datetime import UTC, datetime, timedelta

    import anyio

    from campaignd.domain.actions import Action, action_key
    from campaignd.domain.campaign import atomize, load_spec
    from campaignd.pipeline.archive import archive_old
    from campaignd.stores.sql.migrate import upgrade
    from campaignd.stores.sql.repository import SqlStore

    url = f"sqlite+aiosqlite:///{tmp_path / 'a.db'}"
    parquet = tmp_path / "parquet"
    old = datetime.now(UTC) - timedelta(days=400)
    spec = load_spec(SEED)
    cells = atomize(spec)

    def act(i: int) -> Action:
        after = {"daily_budget_micros": 7_000_000 + i, "lifetime_budget_micros": 70_000_000}
        return Action(key=action_key("d0", cells[i].cell_id, "budget", after), decision_id="d0",
                      campaign_id=spec.id, cell_id=cells[i].cell_id, line_item_id=100 + i,
                      kind="budget", before={"daily_budget_micros": 5_000_000,
                                             "lifetime_budget_micros": 50_000_000},
                      after=after, agent="reallocation", reason="test", evidence={"n": i},
                      created_at=old, score=1.0, impact=2.0, risk=0.1, priority=1.8)

    async def seed() -> int:
        await upgrade(url)
        store = await SqlStore.connect(url)
        await store.upsert_campaign(spec, cells, now=old)
        await store.record_actions([act(0), act(1)], mode="shadow", now=old)
        await store.record_actions([act(2)], mode="live", now=datetime.now(UTC))
        moved = await archive_old(store, parquet, now=datetime.now(UTC), action_days=180,
                                  dead_letter_days=30)
        await store.close()
        return moved["actions"]

    assert anyio.run(seed) == 2
    env = {"CAMPAIGND_DATABASE__URL": url, "CAMPAIGND_PIPELINE__PARQUET_DIR": str(parquet)}
    r = cli("actions", "list", "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert [a["cell_id"] for a in json.loads(r.stdout)["actions"]] == [cells[2].cell_id]
    r = cli("actions", "list", "--archived", "--json", env=env)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["archived"] is True and data["counts"]["shadow"] == 2
    assert [a["cell_id"] for a in data["actions"]] == [cells[1].cell_id, cells[0].cell_id]
    first = data["actions"][1]
    r = cli("actions", "show", str(first["id"]), "--json", env=env)
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert shown["archived"] is True and shown["evidence"] == {"n": 0}
    assert shown["after"]["daily_budget_micros"] == 7_000_000
    r = cli("actions", "list", "--archived", "--status", "nope", env=env)
    assert r.returncode == 2 and "--status" in r.stderr
    r = cli("actions", "show", "999", env=env)
    assert r.returncode == 2 and "--archived" in r.stderr


def test_an_empty_approval_queue_says_why(tmp_path: Path) -> None:
    """In approve mode, `actions list` with nothing proposed says what the daemon's engine
    skipped (from its last published status), and says nothing once something is proposed."""
    from datetime import UTC, datetime

    import anyio

    from campaignd.domain.actions import Action, action_key
    from campaignd.domain.campaign import atomize, load_spec
    from campaignd.settings import load_settings
    from campaignd.stores.sql.migrate import upgrade
    from campaignd.stores.sql.repository import SqlStore

    url = f"sqlite+aiosqlite:///{tmp_path / 'q.db'}"
    now = datetime.now(UTC)
    spec = load_spec(SEED)
    cells = atomize(spec)
    decision = {"mode": "approve", "risk_budget": 0.2, "cycles": 42,
                "last_cycle": {"at": now.isoformat(), "actions": 0, "skipped": {}},
                "skipped_since_start": {"risk budget": 30, "no expected gain": 12},
                "last_recorded_at": None}

    async def seed(propose: bool) -> None:
        if not propose:
            await upgrade(url)
        store = await SqlStore.connect(url)
        if not propose:
            await store.upsert_campaign(spec, cells, now=now)
            await store.write_status(load_settings(None, environ={}).instance, 1, "test", now,
                                     {"state": "running", "decision": decision}, now=now)
        else:
            after = {"daily_budget_micros": 7_000_000, "lifetime_budget_micros": 70_000_000}
            await store.record_actions([Action(
                key=action_key("d1", cells[0].cell_id, "budget", after), decision_id="d1",
                campaign_id=spec.id, cell_id=cells[0].cell_id, line_item_id=100, kind="budget",
                before={"daily_budget_micros": 5_000_000, "lifetime_budget_micros": 70_000_000},
                after=after, agent="reallocation", reason="test", evidence={}, created_at=now,
                score=1.0, impact=2.0, risk=0.1, priority=1.8)], mode="approve", now=now)
        await store.close()

    anyio.run(seed, False)
    # (a port of its own: a daemon someone runs on the default port is not this database's)
    env = {"CAMPAIGND_DATABASE__URL": url, "CAMPAIGND_HTTP__PORT": str(free_port())}
    r = cli("actions", "list", env=env)
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())
    assert "nothing is waiting for approval" in text and "risk budget 30" in text, text
    assert "has proposed nothing yet" in text and "42 decision cycle(s)" in text
    r = cli("actions", "list", "--json", env=env)
    assert "no expected gain 12" in json.loads(r.stdout)["queue_note"]
    anyio.run(seed, True)
    r = cli("actions", "list", "--json", env=env)
    assert r.returncode == 0 and "queue_note" not in json.loads(r.stdout)
    assert json.loads(r.stdout)["counts"]["proposed"] == 1


def test_the_empty_queue_note_knows_a_stopped_daemon() -> None:
    from datetime import UTC, datetime, timedelta

    from campaignd.cli_actions import _empty_queue_note

    now = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
    running = {"state": "running", "decision": {"mode": "approve", "cycles": 3,
                                                "skipped_since_start": {"risk budget": 3}}}
    note = _empty_queue_note(running, {}, None, heartbeat_at=now, now=now)
    assert note is not None and "risk budget 3" in note
    for payload, beat in (({**running, "state": "stopped"}, now),
                          (running, now - timedelta(minutes=5))):
        note = _empty_queue_note(payload, {}, None, heartbeat_at=beat, now=now)
        assert note is not None and "not running" in note and "risk budget" not in note
    assert _empty_queue_note(running, {"proposed": 2}, None, heartbeat_at=now, now=now) is None
    assert _empty_queue_note({**running, "decision": {"mode": "live"}}, {}, None) is None
    assert _empty_queue_note(running, {}, "applied", heartbeat_at=now, now=now) is None


def _seed_actions(url: str, n: int, *, decision: str = "d1", applied: bool = False
                   ) -> list[int]:
    """``n`` actions (ids 1..n), one per cell of the seed campaign, in a fresh database at
    ``url``: proposed (of ``decision``), or applied (``applied``). Returns their ids."""
    from datetime import UTC, datetime

    import anyio

    from campaignd.domain.actions import Action, action_key
    from campaignd.domain.campaign import atomize, load_spec
    from campaignd.stores.sql.migrate import upgrade
    from campaignd.stores.sql.repository import SqlStore

    now = datetime.now(UTC)
    spec = load_spec(SEED)
    cells = atomize(spec)

    async def seed() -> list[int]:
        await upgrade(url)
        store = await SqlStore.connect(url)
        await store.upsert_campaign(spec, cells, now=now)
        after = {"daily_budget_micros": 7_000_000, "lifetime_budget_micros": 70_000_000}
        await store.record_actions([Action(
            key=action_key(decision, c.cell_id, "budget", after), decision_id=decision,
            campaign_id=spec.id, cell_id=c.cell_id, line_item_id=100 + c.index, kind="budget",
            before={"daily_budget_micros": 5_000_000, "lifetime_budget_micros": 70_000_000},
            after=after, agent="reallocation", reason="test", evidence={}, created_at=now,
            score=1.0, impact=2.0, risk=0.1, priority=1.8) for c in cells[:n]],
            mode="live" if applied else "approve", now=now)
        ids = [r.id for r in await store.list_actions()]
        if applied:
            await store.finish_actions([(i, "applied", None, None) for i in ids], now=now)
        await store.close()
        return ids

    out: list[int] = anyio.run(seed)
    return out


def _statuses(env: dict[str, str]) -> dict[int, str]:
    r = cli("actions", "list", "--json", "--limit", "100", env=env)
    assert r.returncode == 0, r.stderr
    return {a["id"]: a["status"] for a in json.loads(r.stdout)["actions"]}


def test_actions_refuse_malformed_ids(tmp_path: Path) -> None:
    """Ids are ASCII digits only (int() reads "1_0" as 10 and "１" as 1: a typo would act on
    another action). Exit 2 naming the id, nothing changed."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'ids.db'}"
    _seed_actions(url, 12)
    env = {"CAMPAIGND_DATABASE__URL": url, "CAMPAIGND_HTTP__PORT": str(free_port()),
           "CAMPAIGND_STATE_DIR": str(tmp_path / "state")}
    before = _statuses(env)
    assert set(before.values()) == {"proposed"} and len(before) == 12
    for args in (("actions", "approve", "1_0"), ("actions", "reject", "１"),
                 ("actions", "undo", "+1"), ("actions", "show", "1_0"),
                 ("actions", "approve", "0"), ("actions", "approve", "9" * 30),
                 ("deadletter", "show", "1_0"), ("deadletter", "retry", "2", "٣")):
        r = cli(*args, env=env)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert "_id" in r.stderr and "ASCII digits" in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr
    assert _statuses(env) == before


def test_a_reject_note_above_the_limit_is_refused(tmp_path: Path) -> None:
    """A note above 1,000 characters is refused (exit 2 naming --note), not stored; one at
    the limit is stored whole."""
    from campaignd.domain.actions import MAX_NOTE_CHARS

    url = f"sqlite+aiosqlite:///{tmp_path / 'note.db'}"
    _seed_actions(url, 3)
    # no daemon answers on this port: the verdict is written to the database directly
    env = {"CAMPAIGND_DATABASE__URL": url, "CAMPAIGND_HTTP__PORT": str(free_port()),
           "CAMPAIGND_STATE_DIR": str(tmp_path / "state")}
    before = _statuses(env)
    r = cli("actions", "reject", "3", "--note", "n" * (MAX_NOTE_CHARS + 1), env=env)
    assert r.returncode == 2 and "--note" in r.stderr and str(MAX_NOTE_CHARS) in r.stderr
    assert _statuses(env) == before
    r = cli("actions", "reject", "3", "--note", "n" * MAX_NOTE_CHARS, "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["error"] == "n" * MAX_NOTE_CHARS


def test_a_whole_decision_is_approved_from_the_cli(tmp_path: Path) -> None:
    """`actions approve --decision D`: every proposed action of the re-plan at once (its cuts
    with the raises they pay for); exactly one of an id and --decision."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'decision.db'}"
    _seed_actions(url, 4)
    # no daemon answers on this port: the verdict is written to the database directly
    env = {"CAMPAIGND_DATABASE__URL": url, "CAMPAIGND_HTTP__PORT": str(free_port()),
           "CAMPAIGND_STATE_DIR": str(tmp_path / "state")}
    for args in (("actions", "approve"), ("actions", "approve", "1", "--decision", "d1"),
                 ("actions", "reject", "--decision", "d1; drop")):
        r = cli(*args, env=env)
        assert r.returncode == 2 and "Traceback" not in r.stderr, (args, r.stderr)
    assert set(_statuses(env).values()) == {"proposed"}
    r = cli("actions", "approve", "--decision", "d1", "--actor", "ana", env=env)
    assert r.returncode == 0, r.stderr
    assert "4 action(s) approved by ana" in r.stdout
    assert set(_statuses(env).values()) == {"pending"}
    r = cli("actions", "reject", "--decision", "d1", env=env)
    assert r.returncode == 2 and "4 pending" in r.stderr


def test_simulate_bad_numbers_and_files_exit_2_naming_the_flag() -> None:
    """`--seed -1` and `--days inf` were tracebacks (exit 1) from numpy and the market's clock;
    the simulator's own refusals named its arguments (`policy`, `oracle_after`, `SPEC`) rather
    than the flags a user typed."""
    scenario = str(ROOT / "config" / "scenarios" / "seed.toml")
    for args, named in (
            (["--days", "1", "--seed", "-1"], "--seed: must be 0 or more (got -1)"),
            (["--days", "inf"], "--days: must be greater than 0 and at most 3660 (got inf)"),
            (["--days", "1e308"], "--days: must be greater than 0 and at most 3660"),
            (["--days", "nan"], "--days: must be greater than 0"),
            (["--days", "1", "--policy", "best"], "--policy: is not a known policy"),
            (["--days", "1", "--oracle-after", "30"], "--oracle-after: must be between 0"),
            (["--days", "1", "--campaign", "/nonexistent/spec.toml"],
             "--campaign: file not found")):
        r = cli("simulate", "--scenario", scenario, *args, timeout=60)
        assert r.returncode == 2 and named in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr
    r = cli("simulate", "--scenario", "/nonexistent/scenario.toml", "--days", "1", timeout=60)
    assert r.returncode == 2 and "--scenario: file not found" in r.stderr, r.stderr


def test_actions_list_shows_the_decision_to_approve_whole(tmp_path: Path) -> None:
    """The README sends a person to "the `decision` column of `actions list`" for
    `actions approve|reject --decision D`; the table had no such column (only --json did)."""
    from campaignd.domain.campaign import atomize, load_spec

    url = f"sqlite+aiosqlite:///{tmp_path / 'd.db'}"
    cells = atomize(load_spec(SEED))
    decision = "f397ac0dd911f8575efa"
    _seed_actions(url, 1, decision=decision)
    # (a port of its own: a daemon someone runs on the default port is not this database's)
    env = {"CAMPAIGND_DATABASE__URL": url, "CAMPAIGND_HTTP__PORT": str(free_port())}
    r = cli("actions", "list", env=env)
    assert r.returncode == 0, r.stderr
    header = next(line for line in r.stdout.splitlines() if "┃ status" in line)
    assert "decision" in header, r.stdout
    row = next(line for line in r.stdout.splitlines() if cells[0].cell_id in line)
    assert decision in row, r.stdout
    r = cli("actions", "approve", "--decision", decision, "--actor", "alice", env=env)
    assert r.returncode == 0, r.stderr


def test_actions_undo_asked_twice_says_it_was_already_undone(tmp_path: Path) -> None:
    """An undo asked again queues nothing new; the second answer says so instead of
    "queued" (with no daemon running, the CLI writes the undo to the store itself)."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'd.db'}"
    (action_id,) = _seed_actions(url, 1, applied=True)
    # (a port of its own: a daemon someone runs on the default port is not this database's)
    env = {"CAMPAIGND_DATABASE__URL": url, "CAMPAIGND_HTTP__PORT": str(free_port())}
    first = cli("actions", "undo", str(action_id), "--actor", "alice", env=env)
    assert first.returncode == 0, first.stderr
    assert "queued: undo of action" in first.stdout, first.stdout
    second = cli("actions", "undo", str(action_id), "--actor", "alice", env=env)
    assert second.returncode == 0, second.stderr
    assert f"action {action_id} was already undone" in second.stdout, second.stdout
    assert "nothing new was queued" in second.stdout and "queued: undo" not in second.stdout


def test_status_says_an_agent_is_running_rather_than_showing_no_duration(
        capsys: pytest.CaptureFixture[str]) -> None:
    """"last run" is when the last run started: an agent on its first, still running run had a
    start time, 0 runs and "—" for a duration, which read like a run that never happened."""
    from campaignd.cli import _print_status

    agent = {"name": "reallocation", "cadence_s": 120.0, "runs": 0, "running": True,
             "last_run": "2026-12-03T12:00:00+00:00", "last_duration_s": None,
             "last_error": None, "next_run": None}
    done = {**agent, "name": "monitor", "runs": 3, "running": False, "last_duration_s": 0.0123}
    _print_status({"state": "running", "agents": [agent, done]})
    text = capsys.readouterr().out
    row = next(line for line in text.splitlines() if "reallocation" in line)
    assert "running" in row, row
    row = next(line for line in text.splitlines() if "monitor" in line)
    assert "12.3 ms" in row, row


def test_status_counts_the_expired_actions(capsys: pytest.CaptureFixture[str]) -> None:
    from campaignd.cli import _print_status

    _print_status({"state": "running", "agents": [], "decision": {
        "mode": "live", "risk_budget": 0.2, "last_cycle": None,
        "executor": {"applied": 5, "failed": 0, "refused": 7, "expired": 6}}})
    text = " ".join(capsys.readouterr().out.split())
    assert "refused 7 (6 expired)" in text, text
