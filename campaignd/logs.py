"""Structured logging (structlog): JSON lines for journald and files, console on a TTY.

Secrets never reach a log: values of keys that look secret (password, token, secret, cookie,
authorization) are replaced, and every registered secret value is scrubbed from every string.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, MutableMapping
from pathlib import Path
from typing import Any, TextIO

import structlog

SECRET_KEYS = ("password", "token", "secret", "cookie", "authorization", "api_key")
MASK = "**********"

_secret_values: set[str] = set()


def register_secrets(values: Iterable[str]) -> None:
    """Scrub these values (e.g. a DSP password) from everything logged from now on."""
    for v in values:
        if v:
            _secret_values.add(v)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        for s in _secret_values:
            if s in value:
                value = value.replace(s, MASK)
        return value
    if isinstance(value, dict):
        return {k: (MASK if _is_secret_key(k) else _scrub(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_scrub(v) for v in value)
    return value


def _is_secret_key(key: Any) -> bool:
    k = str(key).lower()
    return any(s in k for s in SECRET_KEYS)


def redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask secret-looking keys and registered secret values."""
    for key in list(event_dict):
        if _is_secret_key(key):
            event_dict[key] = MASK
        else:
            event_dict[key] = _scrub(event_dict[key])
    return event_dict


class _Tee:
    """Writes every line to several streams (stderr and the log file)."""

    def __init__(self, *streams: TextIO) -> None:
        self.streams = streams

    def write(self, data: str) -> int:
        for s in self.streams:
            s.write(data)
        return len(data)

    def flush(self) -> None:
        for s in self.streams:
            s.flush()


_log_file: TextIO | None = None


def configure(level: str = "INFO", fmt: str = "auto", file: Path | None = None,
              stream: TextIO | None = None) -> None:
    """Configure structlog and the stdlib root logger. Safe to call more than once."""
    global _log_file
    out = stream or sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    if _log_file is not None:
        _log_file.close()
        _log_file = None
    target: TextIO = out
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        _log_file = open(file, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        target = _Tee(out, _log_file)  # type: ignore[assignment]
        use_json = use_json or fmt == "auto"
    lvl = getattr(logging, level.upper(), logging.INFO)
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        redact,
    ]
    renderer: Any = (structlog.processors.JSONRenderer() if use_json
                     else structlog.dev.ConsoleRenderer(colors=out.isatty()))
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=target),
        cache_logger_on_first_use=False,
    )
    # Libraries log through stdlib; send warnings and above through the same redaction.
    handler = logging.StreamHandler(target)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, redact,
                    renderer],
        foreign_pre_chain=[structlog.processors.add_log_level,
                           structlog.processors.TimeStamper(fmt="iso", utc=True),
                           structlog.processors.format_exc_info],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(lvl, logging.WARNING))
    for noisy in ("uvicorn.access", "httpx", "httpcore", "apscheduler"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def get_logger(name: str | None = None, **bound: Any) -> Any:
    log = structlog.get_logger(name)
    return log.bind(**bound) if bound else log


class Outage:
    """One failing thing (a store, the feed), logged once per interval rather than once per
    attempt: a database down for a night must not write a line every second to the journal.

    ``failed`` logs the first failure at once and then at most one line every ``every_s``
    seconds (with how long it has been failing and the attempts so far); ``ok`` logs one line
    when it works again (how long it was down) and resets. ``since`` (``clock`` seconds) is set
    while it is failing: the status reads it to say what is wrong and for how long."""

    def __init__(self, logger: Any, event: str, *, every_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic, level: str = "warning") -> None:
        self.log = logger
        self.event = event
        self.level = level
        self.every_s = every_s
        self.clock = clock
        self.since: float | None = None
        self.attempts = 0
        self.error: str | None = None
        self._logged_at = 0.0

    def failing_for(self) -> float:
        """Seconds since the first failure of this outage (0 when it is not failing)."""
        return 0.0 if self.since is None else self.clock() - self.since

    def failed(self, error: str, **fields: Any) -> None:
        now = self.clock()
        self.attempts += 1
        self.error = error
        if self.since is None:
            self.since = now
        elif now - self._logged_at < self.every_s:
            return
        self._logged_at = now
        getattr(self.log, self.level)(self.event, error=error,
                                      failing_for_s=round(now - self.since, 1),
                                      attempts=self.attempts, **fields)

    def ok(self, event: str, **fields: Any) -> None:
        if self.since is None:
            return
        self.log.info(event, down_s=round(self.clock() - self.since, 1),
                      attempts=self.attempts, **fields)
        self.since = None
        self.attempts = 0
        self.error = None
