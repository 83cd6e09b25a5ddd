"""Settings: a TOML file (``--config`` or ``CAMPAIGND_CONFIG``) overridden by ``CAMPAIGND_*``
environment variables (nested with ``__``, e.g. ``CAMPAIGND_HTTP__PORT=9000``; lists and whole
sections as JSON). A ``CAMPAIGND_*`` variable that is not a setting is an error, and a bad value
from the environment is reported against its variable.

Secrets (DSP password, API token, database and Redis passwords) are ``SecretStr``: given in the
environment or read from a ``*_file`` path, never printed (``masked()`` shows ``**********``).
Relative paths inside the file (campaign specs, scenarios, state directory) are resolved against
the file's directory, so a config works from any working directory. Every validation failure is
reported as a ``ConfigError`` naming the key, the bad value and what is allowed. The sections
themselves (defaults, bounds, descriptions) are in ``settings_sections``.
"""

from __future__ import annotations

import contextvars
import difflib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_origin
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from campaignd.errors import ConfigError
from campaignd.settings_sections import (  # noqa: F401  (re-exported)
    DAY,
    HOUR,
    MAX_RETENTION_DAYS,
    MINUTE,
    TEN_YEARS,
    WEEK,
    AgentSettings,
    BeeswaxSettings,
    DatabaseSettings,
    DecisionSettings,
    DSPSettings,
    FaultSettings,
    HTTPSettings,
    LogSettings,
    PipelineSettings,
    ReceiverSettings,
    RedisSettings,
    SandboxSettings,
)
from campaignd.tomlfile import read_toml

ENV_PREFIX = "CAMPAIGND_"
CONFIG_ENV = "CAMPAIGND_CONFIG"

_file_data: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "_file_data", default=None)


class Settings(BaseSettings):
    """All of campaignd's settings. Build with ``load_settings``."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__",
                                      extra="forbid", validate_default=True)

    instance: str = "default"
    state_dir: Path = Path("./var")
    campaigns: list[Path] = []
    database: DatabaseSettings = DatabaseSettings()
    redis: RedisSettings = RedisSettings()
    dsp: DSPSettings = DSPSettings()
    agents: AgentSettings = AgentSettings()
    decision: DecisionSettings = DecisionSettings()
    http: HTTPSettings = HTTPSettings()
    pipeline: PipelineSettings = PipelineSettings()
    receiver: ReceiverSettings = ReceiverSettings()
    log: LogSettings = LogSettings()

    config_file: Path | None = Field(None, exclude=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        file_source = InitSettingsSource(settings_cls, init_kwargs=_file_data.get() or {})
        return (init_settings, env_settings, file_source)

    def resolve_paths(self, base: Path) -> Settings:
        """Make relative paths absolute against ``base`` (the config file's directory)."""

        def fix(p: Path | None) -> Path | None:
            if p is None or p.is_absolute():
                return p
            return (base / p).resolve()

        self.state_dir = fix(self.state_dir)  # type: ignore[assignment]
        self.campaigns = [fix(p) for p in self.campaigns]  # type: ignore[misc]
        self.dsp.sandbox.scenario = fix(self.dsp.sandbox.scenario)  # type: ignore[assignment]
        self.log.file = fix(self.log.file)
        self.pipeline.parquet_dir = fix(self.pipeline.parquet_dir)
        self.receiver.spool_dir = fix(self.receiver.spool_dir)
        return self

    @model_validator(mode="after")
    def _receiver_token(self) -> Settings:
        r = self.receiver
        if self.receiver_enabled and (r.token is None or not r.token.get_secret_value()):
            why = ("dsp.adapter = 'beeswax' receives its events by push, so the receiver is on"
                   if r.enabled is None else "receiver.enabled = true")
            raise ValueError(f"receiver.token is needed: {why}; set CAMPAIGND_RECEIVER__TOKEN "
                             "or receiver.token_file (or receiver.enabled = false)")
        return self

    @property
    def receiver_enabled(self) -> bool:
        r = self.receiver
        return r.enabled if r.enabled is not None else self.dsp.adapter == "beeswax"

    @property
    def spool_dir(self) -> Path:
        return self.receiver.spool_dir or self.state_dir / "spool"

    @property
    def parquet_dir(self) -> Path:
        return self.pipeline.parquet_dir or self.state_dir / "parquet"

    def masked(self) -> dict[str, Any]:
        """The resolved settings as plain data, secrets shown as ``**********`` — including a
        password written inside a database or Redis URL."""
        data = self.model_dump(mode="json", exclude={"config_file"})
        data["database"]["url"] = mask_url_password(data["database"]["url"])
        data["redis"]["url"] = mask_url_password(data["redis"]["url"])
        data["dsp"]["beeswax"]["base_url"] = mask_url_password(data["dsp"]["beeswax"]["base_url"])
        return data

    @property
    def control_url(self) -> str:
        host = self.http.host
        if host in ("0.0.0.0", "", "::"):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.http.port}"


def url_password(url: str) -> str | None:
    """The password in ``scheme://user:password@host/...``, if any."""
    parsed = urlsplit(url)
    try:
        return parsed.password
    except ValueError:
        return None


def mask_url_password(url: str) -> str:
    password = url_password(url)
    if not password:
        return url
    parsed = urlsplit(url)
    user = parsed.username or ""
    host = parsed.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parsed._replace(netloc=f"{user}:**********@{host}"))


def _number(x: Any) -> str:
    return f"{int(x)}" if isinstance(x, int | float) and float(x).is_integer() else str(x)


def _duration(seconds: float) -> str:
    for unit, size in (("days", DAY), ("hours", HOUR), ("minutes", MINUTE)):
        if seconds >= size:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"


def _describe_error(err: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in err.get("loc", ()) if p != "__root__")
    msg = err.get("msg", "invalid")
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    typ = err.get("type", "")
    ctx = err.get("ctx") or {}
    if typ == "extra_forbidden":
        # as for a misspelt CAMPAIGND_* variable: the nearest setting's name
        keys = [n[len(ENV_PREFIX):].lower().replace("__", ".") for n in _env_names()]
        close = difflib.get_close_matches(loc, keys, n=1, cutoff=0.7)
        hint = f"; did you mean {close[0]}?" if close else ""
        return (f"{loc}: is not a known setting{hint} (see campaignd.toml.example for every "
                "key)")
    if typ == "literal_error" and "expected" in ctx:
        return f"{loc}: {err.get('input')!r} is not allowed; use {ctx['expected']}"
    if typ == "less_than_equal" and "le" in ctx:
        msg = f"must be at most {_number(ctx['le'])}"
        if loc.endswith("_s"):
            msg += f" s ({_duration(float(ctx['le']))})"
        elif loc.endswith("_h"):
            msg += f" h ({_duration(float(ctx['le']) * HOUR)})"
    first = msg.split(" ", 1)[0]
    if "." in first and (not loc or first.startswith(loc + ".")):
        loc = ""  # the message names its key already (a section's own check)
    shown = err.get("input")
    got = ""
    if shown is not None and not isinstance(shown, dict) and "password" not in loc \
            and "token" not in loc:
        got = f" (got {shown!r})"
    return f"{loc}: {msg}{got}" if loc else f"{msg}{got}"


NOT_SETTINGS = frozenset({CONFIG_ENV, "CAMPAIGND_SANDBOX_PUSH_TOKEN", "CAMPAIGND_VENV"})
"""CAMPAIGND_* variables that are not settings: the config file's path, ``sandbox serve``'s
push token, the scripts' virtualenv."""
NOT_SETTINGS_PREFIXES = ("CAMPAIGND_TEST_", "CAMPAIGND_BENCH_")
"""Prefixes of the test suite's and the benchmarks' variables (service URLs)."""


def _env_kind(path: tuple[str, ...]) -> str | None:
    """What the setting at ``path`` (lower-case key names) is: "section", "list" or "value";
    None when there is no such setting."""
    model: type[BaseModel] = Settings
    for i, part in enumerate(path):
        field = model.model_fields.get(part)
        if field is None or (model is Settings and part == "config_file"):
            return None
        ann = field.annotation
        last = i == len(path) - 1
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            if last:
                return "section"
            model = ann
            continue
        if not last:
            return None
        return "list" if get_origin(ann) is list else "value"
    return None


def _env_names(model: type[BaseModel] = Settings, prefix: str = ENV_PREFIX) -> list[str]:
    """Every variable that sets a setting (a section's, as JSON, and each key's)."""
    names = []
    for name, field in model.model_fields.items():
        if model is Settings and name == "config_file":
            continue
        var = prefix + name.upper()
        names.append(var)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            names.extend(_env_names(ann, var + "__"))
    return names


def _check_environment(env: Mapping[str, str]) -> tuple[list[str], dict[tuple[str, ...], str]]:
    """The problems of the CAMPAIGND_* variables pydantic-settings would ignore or fail on
    without naming them, and the variable that sets each key path.

    An unknown CAMPAIGND_* variable is an error, not a warning: the file refuses unknown keys
    too, and a misspelt override (CAMPAIGND_DECISION_MODE=shadow, one "_") that is ignored leaves
    the daemon running with a setting its operator believes changed; a warning would be lost in
    the journal."""
    problems: list[str] = []
    by_path: dict[tuple[str, ...], str] = {}
    known: list[str] | None = None
    for name, value in sorted(env.items()):
        upper = name.upper()
        if (not upper.startswith(ENV_PREFIX) or upper in NOT_SETTINGS
                or upper.startswith(NOT_SETTINGS_PREFIXES)):
            continue
        path = tuple(upper[len(ENV_PREFIX):].lower().split("__"))
        kind = _env_kind(path)
        if kind is None:
            known = known if known is not None else [*_env_names(), CONFIG_ENV]
            close = difflib.get_close_matches(upper[len(ENV_PREFIX):],
                                              [k[len(ENV_PREFIX):] for k in known], n=1,
                                              cutoff=0.7)
            hint = f"; did you mean {ENV_PREFIX}{close[0]}?" if close else "."
            problems.append(
                f"{name}: is not a campaignd setting{hint} Rename or unset it (a setting's "
                "variable is CAMPAIGND_ + its key path in upper case, sections joined by "
                '"__", e.g. CAMPAIGND_HTTP__PORT for http.port)')
            continue
        by_path[path] = name
        if kind in ("section", "list"):
            want = dict if kind == "section" else list
            try:
                ok = isinstance(json.loads(value), want)
            except (ValueError, RecursionError):
                ok = False
            if not ok:
                key = ".".join(path)
                if kind == "list":
                    problems.append(f"{name}: {key} must be a JSON list (got {value!r}); e.g. "
                                    f"{name}='[\"/etc/campaignd/campaign.toml\"]'")
                else:  # not shown: a section may hold a secret
                    problems.append(f"{name}: the [{key}] section must be a JSON object; or "
                                    f"set one key at a time, e.g. {name}__<KEY>=value")
    return problems, by_path


def _env_source(loc: tuple[Any, ...], by_path: Mapping[tuple[str, ...], str]) -> str | None:
    """The variable that set the value at ``loc`` (or the section or list holding it)."""
    keys = tuple(str(p) for p in loc if isinstance(p, str))
    for n in range(len(keys), 0, -1):
        if keys[:n] in by_path:
            return by_path[keys[:n]]
    return None


def load_settings(config: str | Path | None = None, *,
                  environ: dict[str, str] | None = None) -> Settings:
    """Load settings from ``config`` (or ``$CAMPAIGND_CONFIG``) and the environment.

    Raises ``ConfigError`` (exit code 2) naming each bad key.
    """
    env = os.environ if environ is None else environ
    path_str = str(config) if config is not None else env.get(CONFIG_ENV)
    data: dict[str, Any] = {}
    path: Path | None = None
    if path_str:
        path = Path(path_str)
        data = read_toml(path, field="--config", error=ConfigError,
                         kind="a TOML settings file, e.g. campaignd.toml.example")
    env_problems, by_path = _check_environment(env)
    if env_problems:
        raise ConfigError(f"{len(env_problems)} invalid variable(s):\n  - "
                          + "\n  - ".join(env_problems), field="environment")
    token = _file_data.set(data)
    saved_env = None
    try:
        if environ is not None:
            saved_env = dict(os.environ)
            os.environ.clear()
            os.environ.update(environ)
        settings = Settings()
    except ValidationError as exc:
        problems = []
        from_env = from_file = 0
        for e in exc.errors():
            text = _describe_error(dict(e))
            var = _env_source(e.get("loc", ()), by_path)
            if var is None:
                # A section's own check (e.g. the receiver's token) may involve the file, the
                # environment, or both.
                keys = tuple(str(p) for p in e.get("loc", ()))
                from_file += 1
                from_env += any(p[:len(keys)] == keys for p in by_path)
                problems.append(text)
                continue
            # Name the variable, not the file: the file does not hold this value.
            from_env += 1
            loc = ".".join(str(p) for p in e.get("loc", ()))
            if loc and text.startswith(loc + ": "):
                text = f"{var} ({loc}): {text[len(loc) + 2:]}"
            else:
                text = f"{var}: {text}"
            problems.append(text + "; fix the variable or unset it")
        if path is not None and from_file:
            where = f"{path} and the environment" if from_env else str(path)
        else:
            where = "environment" if from_env else "settings"
        raise ConfigError(f"{len(problems)} invalid setting(s):\n  - " + "\n  - ".join(problems),
                          field=where) from None
    except SettingsError as exc:  # a value pydantic-settings could not decode (JSON)
        raise ConfigError(f"{exc}; a list or a section set from the environment must be JSON",
                          field="environment") from None
    except ValueError as exc:
        raise ConfigError(str(exc), field=str(path) if path else "settings") from None
    finally:
        _file_data.reset(token)
        if saved_env is not None:
            os.environ.clear()
            os.environ.update(saved_env)
    settings.config_file = path.resolve() if path else None
    base = path.resolve().parent if path else Path.cwd()
    return settings.resolve_paths(base)


def check_referenced_files(settings: Settings) -> None:
    """Check that the files the settings name can be read as TOML — each of ``campaigns`` and,
    with the sandbox DSP, ``dsp.sandbox.scenario`` — so that ``config check`` fails on a
    missing one and ``run`` fails before it touches the database. Raises ``ConfigError`` naming
    each key. Not their content: ``campaignd campaign plan`` validates a spec, and the daemon
    reports a bad one without stopping."""
    refs = [(f"campaigns[{i}]", p, "a campaign spec TOML file, e.g. "
             "config/campaigns/madhive_12345.toml") for i, p in enumerate(settings.campaigns)]
    if settings.dsp.adapter == "sandbox":
        refs.append(("dsp.sandbox.scenario", settings.dsp.sandbox.scenario,
                     "a scenario TOML file, e.g. config/scenarios/seed.toml"))
    problems = []
    for key, path, kind in refs:
        try:
            read_toml(path, field=key, kind=kind, error=ConfigError)
        except ConfigError as exc:
            problems.append(str(exc) if exc.field == key else f"{key}: {exc}")
    if problems:
        raise ConfigError(f"{len(problems)} invalid setting(s):\n  - " + "\n  - ".join(problems),
                          field=str(settings.config_file or "settings"))


def secret_values(settings: Settings) -> list[str]:
    """Every secret's plain value, for the log redactor."""
    out = []
    for s in (settings.database.password, settings.redis.password, settings.dsp.beeswax.password,
              settings.http.api_token, settings.receiver.token,
              settings.receiver.previous_token):
        if s is not None and s.get_secret_value():
            out.append(s.get_secret_value())
    for url in (settings.database.url, settings.redis.url, settings.dsp.beeswax.base_url):
        password = url_password(url)
        if password:
            out.append(password)
            out.append(unquote(password))  # as the driver uses it: "p%40ss" is "p@ss"
    return out
