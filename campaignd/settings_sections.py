"""The sections of campaignd's settings (``[database]``, ``[dsp]``, ``[decision]``, …): one
pydantic model each, with their defaults, bounds and descriptions. ``campaignd.settings`` puts
them together into ``Settings`` and loads them (README "Configuration").
"""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

# Upper bounds of durations. Every number is finite (inf and nan are refused) and bounded, so a
# value that passes `config check` cannot overflow a timedelta or the scheduler at run time.
MINUTE = 60.0
HOUR = 3600.0
DAY = 86_400.0
WEEK = 7 * DAY
"""The longest cadence (agents.*_s, dsp.reconcile_s, pipeline.rollup_s)."""
TEN_YEARS = 3650 * DAY
"""The longest hold (decision.manual_hold_s)."""
MAX_RETENTION_DAYS = 36_500
"""The longest retention, in days (a century: "forever" for an operator)."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _strict_numbers(cls, v: Any, info: ValidationInfo) -> Any:
        # pydantic reads `port = true` as 1 and `port = 8470.0` as 8470: a number given as
        # true/false, or a whole-number setting given a float, is a mistake. (Strings stay
        # accepted: environment variables are strings.)
        if info.field_name is None or not isinstance(v, bool | float):
            return v
        ann = cls.model_fields[info.field_name].annotation
        if isinstance(v, bool) and ann in (int, float, Decimal, int | None, float | None):
            raise ValueError("must be a number, not true/false")
        if isinstance(v, float) and ann in (int, int | None):
            raise ValueError("must be a whole number (no decimal point)")
        return v


TOKEN_RE = re.compile(r"[A-Za-z0-9._~+/-]+=*")
"""A bearer token as a client can send it (RFC 6750's b64token)."""


def _read_secret_file(path: Path | None, key: str) -> SecretStr | None:
    if path is None:
        return None
    try:
        secret = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise ValueError(f"cannot read secret file {str(path)!r} for {key}: {exc.strerror}") \
            from None
    except UnicodeDecodeError:  # (the message never shows the bytes: they are the secret)
        raise ValueError(f"{key}: the secret file {str(path)!r} is not UTF-8 text: write the "
                         "secret as plain text on one line") from None
    if not secret.strip():
        # an empty secret would only show later, as the DSP or the database refusing it
        raise ValueError(f"{key}: the secret file {str(path)!r} is empty: write the secret "
                         "in it, or remove the key")
    return SecretStr(secret)


def _check_url_port(url: str, key: str, example: str) -> None:
    """A URL whose port is not a number would crash its driver later with a traceback; the
    message never repeats the URL (it may hold a password)."""
    try:
        _ = urlsplit(url).port  # (reading it raises ValueError on a bad one)
    except ValueError:
        raise ValueError(f"{key} has a port that is not a number from 0 to 65535: give the "
                         f"port as digits, e.g. {example}") from None


class DatabaseSettings(_Section):
    url: str = Field("sqlite+aiosqlite:///./campaignd.db",
                     description="SQLAlchemy async URL: sqlite+aiosqlite:///PATH or "
                                 "postgresql+asyncpg://USER@HOST:PORT/DB")
    password: SecretStr | None = None
    password_file: Path | None = None
    upgrade_on_start: bool = True

    @model_validator(mode="after")
    def _secret(self) -> DatabaseSettings:
        if self.password is None:
            self.password = _read_secret_file(self.password_file, "database.password_file")
        if not (self.url.startswith("sqlite+aiosqlite://")
                or self.url.startswith("postgresql+asyncpg://")):
            raise ValueError("database.url must start with sqlite+aiosqlite:// or "
                             "postgresql+asyncpg://")
        _check_url_port(self.url, "database.url", "postgresql+asyncpg://USER@HOST:5432/DB")
        return self


class RedisSettings(_Section):
    url: str = Field("", description="redis://HOST:PORT/DB; empty = in-memory hot store")
    password: SecretStr | None = None
    password_file: Path | None = None
    key_prefix: str = "campaignd:"

    @model_validator(mode="after")
    def _secret(self) -> RedisSettings:
        if self.password is None:
            self.password = _read_secret_file(self.password_file, "redis.password_file")
        if self.url and not self.url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("redis.url must be empty or start with redis://, rediss:// or unix://")
        _check_url_port(self.url, "redis.url", "redis://HOST:6379/0")
        return self


class FaultSettings(_Section):
    """Sandbox fault injection (all off by default)."""

    rate_limit_rate: float = Field(0.0, ge=0, le=1)
    retry_after_s: float = Field(1.0, ge=0, le=HOUR)
    server_error_rate: float = Field(0.0, ge=0, le=1)
    slow_rate: float = Field(0.0, ge=0, le=1)
    slow_s: float = Field(0.5, ge=0, le=HOUR)
    drop_rate: float = Field(0.0, ge=0, le=1)
    max_rps: float | None = Field(None, gt=0, description="answer 429 above this request rate")
    session_expiry_rate: float = Field(0.0, ge=0, le=1)
    duplicate_rate: float = Field(0.0, ge=0, le=1)
    reorder_rate: float = Field(0.0, ge=0, le=1)
    malformed_rate: float = Field(0.0, ge=0, le=1)
    seed: int = 0


class SandboxSettings(_Section):
    scenario: Path = Path("config/scenarios/seed.toml")
    seed: int = 0
    time_scale: float = Field(60.0, gt=0, le=100_000,
                              description="market seconds per real second")
    host: str = "127.0.0.1"
    port: int = Field(0, ge=0, le=65535, description="0 = any free port")
    email: str = "sandbox@campaignd.local"
    password: SecretStr = SecretStr("sandbox")
    faults: FaultSettings = FaultSettings()


class BeeswaxSettings(_Section):
    base_url: str = Field("", description="https://<buzz_key>.api.beeswax.com")
    buzz_key: str = ""
    email: str = ""
    password: SecretStr | None = None
    password_file: Path | None = None
    advertiser_id: int | None = None
    rate_limit_rps: float = Field(20.0, gt=0, le=1000)
    timeout_s: float = Field(30.0, gt=0, le=HOUR)
    max_retries: int = Field(5, ge=0, le=20)
    breaker_failures: int = Field(5, ge=1)
    breaker_cooldown_s: float = Field(30.0, gt=0, le=DAY)

    @model_validator(mode="after")
    def _secret(self) -> BeeswaxSettings:
        if self.password is None:
            self.password = _read_secret_file(self.password_file, "dsp.beeswax.password_file")
        return self


class DSPSettings(_Section):
    adapter: Literal["sandbox", "beeswax"] = "sandbox"
    sandbox: SandboxSettings = SandboxSettings()
    beeswax: BeeswaxSettings = BeeswaxSettings()
    events_poll_s: float = Field(0.25, gt=0, le=MINUTE,
                                 description="seconds between event-feed reads when idle")
    reconcile_s: float = Field(300.0, gt=0, le=WEEK,
                               description="seconds between line-item read-backs")
    account_timezone: str = Field(
        "America/New_York",
        description="the DSP account's time zone (IANA name): the DSP's dates are in it and its "
                    "daily budgets reset at its midnight (Beeswax's default: America/New_York)")

    @field_validator("account_timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        from campaignd.domain.budget_day import check_timezone

        return check_timezone(v)

    @model_validator(mode="after")
    def _beeswax_complete(self) -> DSPSettings:
        if self.adapter == "beeswax":
            missing = [k for k in ("base_url", "email") if not getattr(self.beeswax, k)]
            if self.beeswax.password is None:
                missing.append("password (or password_file, or CAMPAIGND_DSP__BEESWAX__PASSWORD)")
            if missing:
                raise ValueError("dsp.adapter = 'beeswax' needs dsp.beeswax."
                                 + ", dsp.beeswax.".join(missing))
        return self


class AgentSettings(_Section):
    """Cadences in seconds (at most a week)."""

    monitor_s: float = Field(30.0, gt=0, le=WEEK)
    monitor_rule: Literal["posterior", "raw"] = Field(
        "posterior", description="flag a cell when the posterior probability that it is below "
                                 "half the campaign's rate is high, or by the seed's raw rule "
                                 "(30-second rate below half; for comparison)")
    reallocation_s: float = Field(120.0, gt=0, le=WEEK)
    discovery_s: float = Field(300.0, gt=0, le=WEEK)
    creative_s: float = Field(600.0, gt=0, le=WEEK)
    synthesizer_s: float = Field(900.0, gt=0, le=WEEK)
    timeout_s: float = Field(25.0, gt=0, le=DAY,
                             description="an agent run is cancelled after this")


class DecisionSettings(_Section):
    """The decision engine and the executor (README "Decisions and actions")."""

    mode: Literal["live", "shadow", "approve"] = "shadow"
    risk_budget: float = Field(0.2, ge=0, le=1,
                               description="summed risk of the decisions executed per cycle")
    policy: Literal["thompson", "uniform", "seed"] = Field(
        "thompson", description="the reallocation agent's budget policy")
    min_change_fraction: float = Field(0.05, ge=0, le=1,
                                       description="smaller budget changes are immaterial...")
    min_change: Decimal = Field(Decimal("1.00"), ge=0, le=Decimal(1_000_000_000),
                                decimal_places=6,
                                description="...when also below this much money a day")
    request_share: float = Field(0.5, gt=0, le=1,
                                 description="share of the DSP's request rate a cycle may use")
    executor_poll_s: float = Field(2.0, gt=0, le=60,
                                   description="seconds between outbox drains")
    max_attempts: int = Field(8, ge=1, le=100,
                              description="tries before an action is marked failed/refused")
    max_action_age_s: float = Field(
        3600.0, ge=0, le=TEN_YEARS,
        description="an action not applied this long after it was decided (a person's: "
                    "after the approval or undo) is refused as expired, e.g. after a long "
                    "stop (0: no limit)")
    manual_hold_s: float = Field(86_400.0, ge=0, le=TEN_YEARS,
                                 description="after a person's undo, agents leave that line "
                                             "item alone this long")
    proposal_ttl_s: float = Field(
        3600.0, gt=0, le=7 * 86_400,
        description="approve mode: a campaign's proposed re-plan stands this long (for a "
                    "person to approve or reject it whole) before a newer one may replace it")
    max_cut_per_cycle: float | None = Field(
        None, ge=0, le=1, description="largest cut of a line item's budget per re-plan "
                                      "(a fraction; unset: no limit)")
    max_cut_per_day: float | None = Field(
        None, ge=0, le=1, description="largest cut of a line item's budget per day (DV360 "
                                      "allows 0.2; unset: no limit)")
    fatigue_half_life: int = Field(
        200_000, ge=0, le=10**12,
        description="impressions of one creative to one audience after which its "
                    "rates have lost half of what fatigue can take (0: assume no "
                    "creative fatigue)")
    fatigue_floor: float = Field(0.5, ge=0, lt=1, description="the share of a creative's "
                                                              "rates that fatigue never takes")
    attribution_spill: float = Field(
        0.0, ge=0, lt=1, description="share of a line item's credited conversions that "
                                     "last-touch attribution took from another line item the "
                                     "user saw (0: every conversion credited to its cause)")
    conversion_delay_h: float = Field(
        3.0, ge=0, le=365 * 24,
        description="mean hours from an impression to its conversion (impressions "
                    "count as trials as they mature; clicks and views: none)")
    estimate_conversion_delay: bool = Field(
        True, description="measure the conversion lag from when conversions arrive after "
                           "delivery (conversion_delay_h is then the starting value)")
    history_half_life_h: float = Field(
        0.0, ge=0, le=TEN_YEARS / HOUR,
        description="hours after which old counts weigh half, for markets that "
                    "drift and creatives that wear out (0: keep them all)")
    change_threshold: float = Field(
        8.0, ge=0, description="evidence (log-likelihood ratio) that a level's rate changed "
                               "before its history is mostly forgotten (0: no change "
                               "detection)")
    audit_retention_days: int = Field(
        180, ge=1, le=MAX_RETENTION_DAYS,
        description="finished actions older than this move from SQL to the audit "
                    "archive (Parquet under parquet_dir/audit)")

    def thompson_options(self) -> dict[str, Any]:
        """The ``thompson`` budget policy's options from these settings."""
        return {"max_cut_per_cycle": self.max_cut_per_cycle,
                "max_cut_per_day": self.max_cut_per_day,
                "fatigue_half_life": self.fatigue_half_life or None,
                "fatigue_floor": self.fatigue_floor,
                "spill": self.attribution_spill,
                "half_life_hours": self.history_half_life_h,
                "conversion_delay_hours": self.conversion_delay_h,
                "estimate_delay": self.estimate_conversion_delay,
                "change_threshold": self.change_threshold or None}


class HTTPSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8470, ge=1, le=65535)
    api_token: SecretStr | None = None
    api_token_file: Path | None = None
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host names (besides 127.0.0.1, localhost, ::1 and http.host) requests may "
                    "name in their Host header; '*' turns the check off")

    @field_validator("allowed_hosts")
    @classmethod
    def _host_names(cls, v: list[str]) -> list[str]:
        for name in v:
            # a name, or an IPv6 address (two colons at least: one is a port)
            if name != "*" and not (re.fullmatch(r"[A-Za-z0-9._-]+", name) or (
                    re.fullmatch(r"\[?[0-9A-Fa-f:.]+\]?", name) and name.count(":") >= 2)):
                raise ValueError(
                    f"{name!r} is not a host name: give bare names or addresses such as "
                    "\"campaignd.internal\" or \"10.0.0.5\" (no scheme, port or path)")
        return [name.lower().strip("[]") for name in v]

    @model_validator(mode="after")
    def _secret(self) -> HTTPSettings:
        where = "http.api_token (or CAMPAIGND_HTTP__API_TOKEN) is empty"
        if self.api_token is None:
            self.api_token = _read_secret_file(self.api_token_file, "http.api_token_file")
            where = f"http.api_token_file ({self.api_token_file}) is empty"
        # An empty token would be accepted here and then refuse every mutating API call with
        # a misleading "send the token" answer.
        if self.api_token is not None and not self.api_token.get_secret_value().strip():
            raise ValueError(f"{where}: set a non-empty token, or remove the key to have one "
                             "generated into state_dir/api-token")
        if self.api_token is not None and not TOKEN_RE.fullmatch(
                self.api_token.get_secret_value()):
            # (a client cannot send it as it is: spaces are stripped, other characters are
            # not ASCII in a header -- every call would be refused)
            key = ("http.api_token (or CAMPAIGND_HTTP__API_TOKEN)" if self.api_token_file is None
                   else f"http.api_token_file ({self.api_token_file})")
            raise ValueError(f"{key} is not a bearer token a client can send: use only ASCII "
                             "letters, digits and - . _ ~ + / (then = at the end), with no "
                             "spaces, e.g. the output of `openssl rand -hex 32`")
        return self


class ReceiverSettings(_Section):
    """The HTTP receiver for Beeswax's streaming log push (README "Receiving Beeswax's log
    push")."""

    enabled: bool | None = Field(None, description="None: on with dsp.adapter = 'beeswax' "
                                                   "(its events arrive by push), off with the "
                                                   "sandbox (its feed is read)")
    host: str = "127.0.0.1"
    port: int = Field(8471, ge=1, le=65535)
    path: str = Field("/beeswax/events", pattern=r"^/[A-Za-z0-9/_.-]*$")
    token: SecretStr | None = None
    token_file: Path | None = None
    previous_token: SecretStr | None = None
    """Also accepted while a token is rotated (Beeswax drops a push refused with 401/403):
    set it to the old token, ``token`` to the new one, update the push, then remove it."""
    previous_token_file: Path | None = None
    spool_dir: Path | None = Field(None, description="default: state_dir/spool")
    max_spool_mb: int = Field(10_240, ge=1, description="above this, pushes get 503 + Retry-After")
    segment_mb: int = Field(64, ge=1, le=4096)
    max_body_mb: int = Field(32, ge=1, le=1024)

    @model_validator(mode="after")
    def _secret(self) -> ReceiverSettings:
        if self.token is None:
            self.token = _read_secret_file(self.token_file, "receiver.token_file")
        if self.previous_token is None:
            self.previous_token = _read_secret_file(self.previous_token_file,
                                                    "receiver.previous_token_file")
        if self.previous_token is not None:
            old = self.previous_token.get_secret_value().strip()
            if not old:
                raise ValueError("receiver.previous_token is empty: remove it, or give the "
                                 "token being rotated out")
            if self.token is not None and old == self.token.get_secret_value().strip():
                raise ValueError("receiver.previous_token is the same as receiver.token: give "
                                 "the old token (the one being rotated out), or remove it")
        if self.max_spool_mb < self.segment_mb + self.max_body_mb:
            raise ValueError(f"receiver.max_spool_mb ({self.max_spool_mb}) must be at least "
                             f"receiver.segment_mb + receiver.max_body_mb "
                             f"({self.segment_mb + self.max_body_mb}): raise it, or lower those")
        return self


class PipelineSettings(_Section):
    """The event pipeline and its stores (see README "The event pipeline")."""

    batch: int = Field(5000, ge=1, le=10_000, description="messages read per feed request")
    flush_s: float = Field(1.0, gt=0, le=60,
                           description="seconds between commits of counts + cursor to SQL")
    dedupe_window_s: int = Field(72 * 3600, ge=60, le=30 * 86_400,
                                 description="at-least-once window: dedupe and staleness")
    max_future_s: int = Field(3600, ge=0, le=7 * 86_400,
                              description="refuse events this far ahead")
    max_seen: int = Field(1_000_000, ge=1000,
                          description="dedupe marks kept by the in-memory hot store")
    context_capacity: int = Field(500_000, ge=1000,
                                  description="recent impressions remembered for ZIP series "
                                              "and auction-only conversions")
    max_backlog: int = Field(2_000_000, ge=10_000,
                             description="uncommitted rows before reading pauses")
    warm_retention_days: int = Field(7, ge=1, le=MAX_RETENTION_DAYS,
                                     description="days of minute rows kept in SQL")
    unknown_line_item_samples: int = Field(
        100, ge=0, le=10**9,
        description="events of a line item campaignd never made (an account-wide log push) "
                    "kept whole per line item and day; the rest are counted, one row per line "
                    "item and day (0: keep none whole; 1000000000: keep every one)")
    dead_letter_retention_days: int = Field(
        30, ge=1, le=MAX_RETENTION_DAYS,
        description="dead letters not seen again for this long move from SQL to the "
                    "audit archive (Parquet under parquet_dir/audit)")
    rollup_s: float = Field(600.0, gt=0, le=WEEK,
                            description="seconds between Parquet exports")
    parquet_dir: Path | None = Field(None, description="default: state_dir/parquet")


class LogSettings(_Section):
    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    file: Path | None = None


__all__ = [
    "DAY", "HOUR", "MAX_RETENTION_DAYS", "MINUTE", "TEN_YEARS", "WEEK", "AgentSettings",
    "BeeswaxSettings", "DSPSettings", "DatabaseSettings", "DecisionSettings", "FaultSettings",
    "HTTPSettings", "LogSettings", "PipelineSettings", "ReceiverSettings", "RedisSettings",
    "SandboxSettings",
]
