"""Settings: file + environment precedence, secrets from files, errors naming the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from campaignd.clock import SystemClock
from campaignd.errors import ConfigError
from campaignd.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "campaignd.toml.example"


def test_example_config_loads_with_documented_defaults() -> None:
    s = load_settings(EXAMPLE, environ={})
    assert s.database.url == "sqlite+aiosqlite:///./campaignd.db"
    assert s.redis.url == ""
    assert s.dsp.adapter == "sandbox"
    assert (s.agents.monitor_s, s.agents.reallocation_s, s.agents.discovery_s,
            s.agents.creative_s, s.agents.synthesizer_s) == (30, 120, 300, 600, 900)
    assert s.decision.risk_budget == 0.2
    assert s.http.host == "127.0.0.1"
    assert s.campaigns == [ROOT / "config" / "campaigns" / "madhive_12345.toml"]
    assert s.dsp.sandbox.scenario == ROOT / "config" / "scenarios" / "seed.toml"


def test_defaults_without_a_file() -> None:
    s = load_settings(None, environ={})
    assert s.decision.mode == "shadow"
    assert s.http.port == 8470
    assert s.http.host == "127.0.0.1"


def test_environment_overrides_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[http]\nport = 9000\n[decision]\nmode = "approve"\n')
    s = load_settings(cfg, environ={"CAMPAIGND_HTTP__PORT": "9100",
                                    "CAMPAIGND_DSP__SANDBOX__FAULTS__DROP_RATE": "0.25"})
    assert s.http.port == 9100
    assert s.decision.mode == "approve"
    assert s.dsp.sandbox.faults.drop_rate == 0.25


def test_config_path_from_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('instance = "east"\n')
    s = load_settings(None, environ={"CAMPAIGND_CONFIG": str(cfg)})
    assert s.instance == "east"


def test_secret_from_file_is_masked(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("s3cr3t-token-value\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[http]\napi_token_file = "{secret}"\n')
    s = load_settings(cfg, environ={"CAMPAIGND_DSP__BEESWAX__PASSWORD": "hunter2hunter2"})
    assert s.http.api_token is not None
    assert s.http.api_token.get_secret_value() == "s3cr3t-token-value"
    dumped = json.dumps(s.masked())
    assert "s3cr3t-token-value" not in dumped
    assert "hunter2hunter2" not in dumped
    assert "**********" in dumped


@pytest.mark.parametrize(("text", "needle"), [
    ('[decision]\nmode = "lve"\n', "decision.mode: 'lve' is not allowed; use 'live', 'shadow'"),
    ("[decision]\nrisk_budget = 3\n", "decision.risk_budget"),
    ("[http]\nport = 70000\n", "http.port"),
    ("[http]\nprot = 1\n", "http.prot: is not a known setting; did you mean http.port?"),
    # the nearest key for a file's typo, as for a variable's
    ("[pipeline]\nflush_ss = 1.0\n", "pipeline.flush_ss: is not a known setting; did you mean "
                                     "pipeline.flush_s?"),
    ("[decison]\nmode = \"live\"\n", "decison: is not a known setting; did you mean decision?"),
    ("[http]\nzzz = 1\n", "http.zzz: is not a known setting (see campaignd.toml.example"),
    ('[database]\nurl = "mysql://x"\n', "database.url must start with"),
    ('[dsp]\nadapter = "beeswax"\n', "dsp.beeswax.base_url"),
    ("[agents]\nmonitor_s = -1\n", "agents.monitor_s"),
    ('[dsp]\nadapter = "beeswax"\n[dsp.beeswax]\nbase_url = "https://x.api.beeswax.com"\n'
     'email = "a@b.c"\npassword = "pw"\n', "receiver.token is needed"),
    ("[receiver]\nenabled = true\n", "receiver.token is needed: receiver.enabled = true"),
    ('[receiver]\npath = "no-slash"\n', "receiver.path"),
    ('[dsp]\naccount_timezone = "Eastern"\n',
     "dsp.account_timezone: 'Eastern' is not a known IANA time zone: use a name such as "
     "America/New_York"),
    ("[http\n", "not valid TOML"),
    ("[agents]\nmonitor_s = 1e300\n", "agents.monitor_s: must be at most 604800 s (7 days)"),
    ("[agents]\nreallocation_s = inf\n", "agents.reallocation_s: Input should be a finite"),
    ("[agents]\ntimeout_s = nan\n", "agents.timeout_s: Input should be a finite"),
    ("[dsp]\nreconcile_s = 1e9\n", "dsp.reconcile_s: must be at most 604800"),
    ("[pipeline]\nrollup_s = 1e9\n", "pipeline.rollup_s: must be at most 604800"),
    ("[decision]\nmanual_hold_s = 1e11\n", "decision.manual_hold_s: must be at most 315360000"),
    ("[decision]\naudit_retention_days = 10000000000\n", "decision.audit_retention_days"),
    ('[decision]\nmin_change = "1e30"\n', "decision.min_change: must be at most"),
    ("[http]\nport = true\n", "http.port: must be a number, not true/false"),
    ("[http]\nport = 8470.0\n", "http.port: must be a whole number"),
    ("[receiver]\nport = false\n", "receiver.port: must be a number"),
    ("[decision]\nrisk_budget = true\n", "decision.risk_budget: must be a number"),
])
def test_invalid_settings_name_the_key(tmp_path: Path, text: str, needle: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(cfg, environ={})
    assert needle in str(info.value)


def test_durations_from_the_environment_are_bounded_too() -> None:
    for value in ("1e300", "inf", "-inf", "nan"):
        with pytest.raises(ConfigError, match=r"agents\.monitor_s"):
            load_settings(None, environ={"CAMPAIGND_AGENTS__MONITOR_S": value})
    assert load_settings(None, environ={"CAMPAIGND_AGENTS__MONITOR_S": "604800",
                                        "CAMPAIGND_HTTP__PORT": "9000"}).http.port == 9000


def _number_fields(model: type, prefix: str = "") -> list[tuple[str, object]]:
    from pydantic import BaseModel
    out: list[tuple[str, object]] = []
    for name, field in model.model_fields.items():  # type: ignore[attr-defined]
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.extend(_number_fields(ann, f"{prefix}{name}."))
        elif ann in (int, float, int | None, float | None):
            out.append((prefix + name, field))
    return out


def test_every_duration_has_a_finite_upper_bound() -> None:
    """A duration that passes `config check` must not overflow a timedelta or the scheduler at
    run time: every *_s, *_h and *_days setting has an upper bound."""
    from annotated_types import Le, Lt

    from campaignd.settings import Settings
    durations = [(k, f) for k, f in _number_fields(Settings)
                 if k.endswith(("_s", "_h", "_days"))]
    assert len(durations) >= 20
    unbounded = [k for k, f in durations
                 if not any(isinstance(m, Le | Lt) for m in f.metadata)]  # type: ignore[attr-defined]
    assert unbounded == []


def test_missing_file_and_secret_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_settings(tmp_path / "missing.toml", environ={})
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[http]\napi_token_file = "{tmp_path / "nope"}"\n')
    with pytest.raises(ConfigError, match="api_token_file"):
        load_settings(cfg, environ={})


def test_an_empty_api_token_is_refused(tmp_path: Path) -> None:
    """An empty token would be accepted and then refuse every mutating API call."""
    for value in ("", "   "):
        with pytest.raises(ConfigError) as info:
            load_settings(None, environ={"CAMPAIGND_HTTP__API_TOKEN": value})
        assert "http.api_token (or CAMPAIGND_HTTP__API_TOKEN) is empty" in str(info.value)
        assert "set a non-empty token, or remove the key" in str(info.value)
    empty = tmp_path / "token"
    empty.write_text("\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[http]\napi_token_file = "{empty}"\n')
    with pytest.raises(ConfigError, match=r"http\.api_token_file: the secret file '.*token' "
                                          r"is empty: write the secret in it, or remove the "
                                          r"key"):
        load_settings(cfg, environ={})
    assert load_settings(None, environ={}).http.api_token is None  # generated at start


def test_an_api_token_no_client_can_send_is_refused(tmp_path: Path) -> None:
    """Surrounding spaces are stripped by the server from what a client sends, and a header
    is not UTF-8: such a token passed and then refused every mutating call (the CLI crashed)."""
    for value in (" s3cr3t-token", "s3cr3t token", "tök€n-s3cr3t", "tab\tbed"):
        with pytest.raises(ConfigError) as info:
            load_settings(None, environ={"CAMPAIGND_HTTP__API_TOKEN": value})
        assert "not a bearer token a client can send" in str(info.value)
        assert value not in str(info.value)  # (a secret is never shown)
    secret = tmp_path / "token"
    secret.write_text("tök€n\n", encoding="utf-8")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[http]\napi_token_file = "{secret}"\n')
    with pytest.raises(ConfigError, match=r"http\.api_token_file \(.*token\) is not a bearer"):
        load_settings(cfg, environ={})
    for good in ("s3cr3t-token", "abc.DEF_~+/x==", "0123456789abcdef" * 4):
        token = load_settings(None, environ={"CAMPAIGND_HTTP__API_TOKEN": good}).http.api_token
        assert token is not None and token.get_secret_value() == good


@pytest.mark.parametrize("section", ["dsp.beeswax", "database", "redis", "receiver"])
def test_a_secret_file_that_is_empty_or_not_text_is_refused_naming_its_key(
        tmp_path: Path, section: str) -> None:
    """An empty DSP password file used to pass, and fail later as a 401 from the DSP; a
    file of binary bytes was reported against the section, with no fix."""
    key = "token_file" if section == "receiver" else "password_file"
    table = "[dsp]\nadapter = \"beeswax\"\n[dsp.beeswax]" if section == "dsp.beeswax" \
        else f"[{section}]"
    secret = tmp_path / "secret"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'{table}\n{key} = "{secret}"\n')
    for content, needle in ((b"\n", "is empty: write the secret in it"),
                            (b"pw\xff\xfe-hunter2", "is not UTF-8 text")):
        secret.write_bytes(content)
        with pytest.raises(ConfigError) as info:
            load_settings(cfg, environ={})
        text = str(info.value)
        assert f"{section}.{key}" in text and needle in text, text
        assert "hunter2" not in text, text  # (the bytes are the secret)


def test_the_receiver_is_on_for_beeswax_and_its_token_is_a_secret(tmp_path: Path) -> None:
    from campaignd.settings import secret_values
    token = tmp_path / "push-token"
    token.write_text("push-secret-123456\n")
    env = {"CAMPAIGND_DSP__ADAPTER": "beeswax",
           "CAMPAIGND_DSP__BEESWAX__BASE_URL": "https://x.api.beeswax.com",
           "CAMPAIGND_DSP__BEESWAX__EMAIL": "a@b.c", "CAMPAIGND_DSP__BEESWAX__PASSWORD": "pw",
           "CAMPAIGND_RECEIVER__TOKEN_FILE": str(token)}
    s = load_settings(None, environ=env)
    assert s.receiver_enabled and s.receiver.host == "127.0.0.1"
    assert s.spool_dir == s.state_dir / "spool"
    assert "push-secret-123456" in secret_values(s)
    assert "push-secret-123456" not in json.dumps(s.masked())
    assert not load_settings(None, environ={}).receiver_enabled  # the sandbox's feed is read
    del env["CAMPAIGND_RECEIVER__TOKEN_FILE"]
    off = load_settings(None, environ={**env, "CAMPAIGND_RECEIVER__ENABLED": "false"})
    assert not off.receiver_enabled


def test_bad_environment_value_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"http\.port"):
        load_settings(None, environ={"CAMPAIGND_HTTP__PORT": "many"})


def test_a_bad_environment_value_names_the_variable_not_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[http]\nport = 9000\n")
    with pytest.raises(ConfigError) as info:
        load_settings(cfg, environ={"CAMPAIGND_HTTP__PORT": "abc"})
    text = str(info.value)
    assert text.startswith("environment: 1 invalid setting(s)"), text
    assert str(cfg) not in text
    assert "CAMPAIGND_HTTP__PORT (http.port): " in text and "'abc'" in text
    assert "fix the variable or unset it" in text
    with pytest.raises(ConfigError, match=r"CAMPAIGND_HTTP \(http\.port\)"):
        load_settings(cfg, environ={"CAMPAIGND_HTTP": '{"port": "x"}'})
    # a bad value in the file still names the file
    cfg.write_text("[http]\nport = 0\n")
    with pytest.raises(ConfigError, match=f"^{cfg}: 1 invalid setting"):
        load_settings(cfg, environ={})


@pytest.mark.parametrize(("name", "value", "needle"), [
    ("CAMPAIGND_CAMPAIGNS", "foo.toml",
     "CAMPAIGND_CAMPAIGNS: campaigns must be a JSON list (got 'foo.toml'); e.g. "
     "CAMPAIGND_CAMPAIGNS='[\"/etc/campaignd/campaign.toml\"]'"),
    ("CAMPAIGND_CAMPAIGNS", '{"a": 1}', "must be a JSON list"),
    ("CAMPAIGND_HTTP", "port=9000", "CAMPAIGND_HTTP: the [http] section must be a JSON object; "
                                    "or set one key at a time, e.g. CAMPAIGND_HTTP__<KEY>"),
    ("CAMPAIGND_HTTP_PORT", "9000", "CAMPAIGND_HTTP_PORT: is not a campaignd setting; did you "
                                    "mean CAMPAIGND_HTTP__PORT? Rename or unset it"),
    ("CAMPAIGND_DECISION_MODE", "live", "did you mean CAMPAIGND_DECISION__MODE?"),
    ("CAMPAIGND_HTTP__PROT", "1", "did you mean CAMPAIGND_HTTP__PORT?"),
    ("CAMPAIGND_CONFIG_FILE", "x.toml", "did you mean CAMPAIGND_CONFIG?"),
    ("CAMPAIGND_NOPE", "1", "CAMPAIGND_NOPE: is not a campaignd setting. Rename or unset it"),
])
def test_environment_variables_that_are_not_settings_are_named(name: str, value: str,
                                                                needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, environ={name: value})
    assert needle in str(info.value)
    assert "EnvSettingsSource" not in str(info.value)


def test_environment_lists_sections_and_other_campaignd_variables(tmp_path: Path) -> None:
    s = load_settings(None, environ={
        "CAMPAIGND_CAMPAIGNS": '["a.toml"]', "CAMPAIGND_HTTP": '{"port": 9001}',
        "campaignd_decision__mode": "live",  # names are case-insensitive
        "CAMPAIGND_SANDBOX_PUSH_TOKEN": "x", "CAMPAIGND_VENV": "/v",
        "CAMPAIGND_TEST_DATABASE_URL": "x", "CAMPAIGND_BENCH_REDIS_URL": "x",
        "CAMPAIGND_CONFIG": ""})
    assert s.campaigns == [Path.cwd() / "a.toml"]
    assert s.http.port == 9001 and s.decision.mode == "live"


def test_referenced_files_are_checked_naming_the_key(tmp_path: Path) -> None:
    from campaignd.settings import check_referenced_files
    (tmp_path / "bad.toml").write_text("id = \n")
    (tmp_path / "dir.toml").mkdir()
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'campaigns = ["missing.toml", "{ROOT / "config/campaigns/madhive_12345.toml"}",'
                   ' "bad.toml", "dir.toml"]\n[dsp.sandbox]\nscenario = "nope.toml"\n')
    s = load_settings(cfg, environ={})
    with pytest.raises(ConfigError) as info:
        check_referenced_files(s)
    text = str(info.value)
    assert text.startswith(f"{cfg}: 4 invalid setting(s)"), text
    assert (f"campaigns[0]: file not found (got '{tmp_path / 'missing.toml'}'); give the path "
            "of a campaign spec TOML file") in text
    assert "campaigns[1]" not in text
    assert "campaigns[2]: " in text and "is not valid TOML" in text
    assert "campaigns[3]: cannot read" in text
    assert (f"dsp.sandbox.scenario: file not found (got '{tmp_path / 'nope.toml'}'); give the "
            "path of a scenario TOML file") in text
    assert "SPEC" not in text and "SCENARIO" not in text
    check_referenced_files(load_settings(EXAMPLE, environ={}))
    # the scenario is only read with the sandbox DSP
    cfg.write_text('[dsp.sandbox]\nscenario = "nope.toml"\n')
    check_referenced_files(load_settings(cfg, environ={
        "CAMPAIGND_DSP__ADAPTER": "beeswax", "CAMPAIGND_DSP__BEESWAX__BASE_URL": "https://x",
        "CAMPAIGND_DSP__BEESWAX__EMAIL": "a@b.c", "CAMPAIGND_DSP__BEESWAX__PASSWORD": "pw",
        "CAMPAIGND_RECEIVER__ENABLED": "false"}))


def test_passwords_inside_urls_are_masked_and_scrubbed() -> None:
    from campaignd.settings import secret_values
    s = load_settings(None, environ={
        "CAMPAIGND_DATABASE__URL": "postgresql+asyncpg://bob:hunter2secret@db:5432/x",
        "CAMPAIGND_REDIS__URL": "redis://:redispass123@cache:6379/0"})
    text = json.dumps(s.masked())
    assert "hunter2secret" not in text and "redispass123" not in text
    assert "postgresql+asyncpg://bob:**********@db:5432/x" in text
    assert {"hunter2secret", "redispass123"} <= set(secret_values(s))


def test_every_url_shown_hides_a_password_whole_even_one_holding_an_at_sign(
        tmp_path: Path) -> None:
    """A URL parser reads the password up to the last "@"; masking up to the first one
    showed its end (``redis://***@ss9@host``), and the DSP's base URL was shown whole in the
    status, which is read without a token."""
    from campaignd.dsp.service import DSPService
    from campaignd.stores.daemon_lock import DaemonLock
    from campaignd.stores.opening import make_url_safe, masked_database_url

    assert make_url_safe("redis://:REDISPW@ss9@127.0.0.1:1/0") == \
        "redis://:**********@127.0.0.1:1/0"
    s = load_settings(None, environ={
        "CAMPAIGND_DATABASE__URL": "postgresql+asyncpg://bob:DBPW@Sec3t@127.0.0.1/db",
        "CAMPAIGND_DSP__ADAPTER": "beeswax",
        "CAMPAIGND_DSP__BEESWAX__BASE_URL": "http://svc:URLPW_Secret7@127.0.0.1:18610",
        "CAMPAIGND_DSP__BEESWAX__PASSWORD": "pw", "CAMPAIGND_DSP__BEESWAX__EMAIL": "a@b.c",
        "CAMPAIGND_RECEIVER__TOKEN": "t0ken-for-the-push"})
    shown = [masked_database_url(s),
             DaemonLock(state_dir=tmp_path, database_url=s.database.url).shown_url,
             json.dumps(DSPService(s, None, clock=SystemClock()).status())]
    for text in shown:
        assert "DBPW" not in text and "Sec3t" not in text and "URLPW" not in text, text
    assert "http://svc:**********@127.0.0.1:18610" in shown[2]


def test_an_empty_generated_token_file_is_replaced(tmp_path: Path) -> None:
    from campaignd.credentials import load_or_create_token, token_path

    s = load_settings(None, environ={"CAMPAIGND_STATE_DIR": str(tmp_path)})
    token_path(s).write_text("\n")  # (a full disk when it was written)
    token = load_or_create_token(s)
    assert len(token) > 20 and token_path(s).read_text().strip() == token
    assert load_or_create_token(s) == token  # kept


def test_allowed_hosts_are_bare_names_and_a_bad_one_is_named() -> None:
    s = load_settings(None, environ={"CAMPAIGND_HTTP__ALLOWED_HOSTS":
                                     '["Campaignd.Internal", "10.0.0.5", "[fe80::1]"]'})
    assert s.http.allowed_hosts == ["campaignd.internal", "10.0.0.5", "fe80::1"]
    assert load_settings(None, environ={}).http.allowed_hosts == []
    for bad in ("campaignd.internal:8470", "http://campaignd.internal", "a b", ""):
        with pytest.raises(ConfigError) as info:
            load_settings(None, environ={"CAMPAIGND_HTTP__ALLOWED_HOSTS": json.dumps([bad])})
        assert "allowed_hosts" in str(info.value) and "no scheme, port or path" in str(info.value)


def test_a_generated_token_file_open_to_others_is_refused(tmp_path: Path) -> None:
    from campaignd.credentials import load_or_create_token, token_path

    s = load_settings(None, environ={"CAMPAIGND_STATE_DIR": str(tmp_path)})
    token = load_or_create_token(s)
    path = token_path(s)
    assert path.stat().st_mode & 0o777 == 0o600
    for mode in (0o644, 0o640, 0o602):
        path.chmod(mode)
        with pytest.raises(ConfigError) as info:
            load_or_create_token(s)
        message = str(info.value)
        assert f"mode {mode:04o}" in message and str(path) in message, message
        assert "delete it" in message and f"chmod 600 {path}" in message
        assert token not in message
    path.chmod(0o600)
    assert load_or_create_token(s) == token


def test_a_secret_file_open_to_every_user_is_warned_about(tmp_path: Path) -> None:
    from structlog.testing import capture_logs

    from campaignd.credentials import warn_about_secret_files

    private, group, world = (tmp_path / n for n in ("private", "group", "world"))
    for path, mode in ((private, 0o600), (group, 0o640), (world, 0o644)):
        path.write_text("s3cr3t-value\n")
        path.chmod(mode)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[http]\napi_token_file = "{private}"\n'
                   f'[database]\npassword_file = "{group}"\n'
                   f'[receiver]\ntoken_file = "{world}"\n')
    s = load_settings(cfg, environ={})
    with capture_logs() as logs:
        warnings = warn_about_secret_files(s)
    assert len(warnings) == 1 and f"receiver.token_file {world}" in warnings[0], warnings
    assert "mode 0644" in warnings[0] and f"chmod 600 {world}" in warnings[0]
    assert [(e["log_level"], e["key"]) for e in logs] == [("warning", "receiver.token_file")]
    assert "s3cr3t-value" not in json.dumps(logs)


def test_a_url_with_a_bad_port_is_named_without_its_password() -> None:
    """Such a URL crashed `campaignd run`, `status` and `db upgrade` with a traceback."""
    from campaignd.settings import secret_values

    for key, url in (("database.url", "postgresql+asyncpg://bob:pw-s3cr3t@db:54x2/x"),
                     ("redis.url", "redis://:pw-s3cr3t@127.0.0.1:99999/0")):
        env = "CAMPAIGND_" + key.upper().replace(".", "__")
        with pytest.raises(ConfigError) as info:
            load_settings(None, environ={env: url})
        assert f"{key} has a port that is not a number" in str(info.value)
        assert "pw-s3cr3t" not in str(info.value)
    s = load_settings(None, environ={"CAMPAIGND_DATABASE__URL":
                                     "postgresql+asyncpg://bob:p%40ss@db:5432/x"})
    assert s.database.url.endswith("@db:5432/x")
    # the redactor scrubs the password as written and as the driver sends it
    assert {"p%40ss", "p@ss"} <= set(secret_values(s))


def test_the_monitors_raw_rule_is_a_setting(tmp_path: Path) -> None:
    """The issue: "the raw rule is available as an option for comparison"."""
    from campaignd.daemon import Daemon

    s = load_settings(None, environ={"CAMPAIGND_AGENTS__MONITOR_RULE": "raw",
                                     "CAMPAIGND_STATE_DIR": str(tmp_path)})
    assert Daemon(s).monitor.rule == "raw"
    assert Daemon(load_settings(None, environ={"CAMPAIGND_STATE_DIR": str(tmp_path)})
                  ).monitor.rule == "posterior"
    with pytest.raises(ConfigError, match=r"agents\.monitor_rule"):
        load_settings(None, environ={"CAMPAIGND_AGENTS__MONITOR_RULE": "gut"})
