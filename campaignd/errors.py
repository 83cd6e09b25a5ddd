"""The campaignd error tree.

Every error that reaches a user says what is wrong, with which field or value, and how to fix
it. ``BadInput`` and its subclasses map to exit code 2 on the CLI and 4xx on the API; DSP errors
carry whether a retry can help, so callers never parse messages to decide.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any


class CampaigndError(Exception):
    """Base of every error campaignd raises on purpose."""


class BadInput(CampaigndError):
    """Input from a user (file, flag, API body) is invalid: exit code 2, HTTP 400/422."""

    def __init__(self, message: str, *, field: str | None = None, value: Any = None,
                 fix: str | None = None) -> None:
        self.field = field
        self.value = value
        self.fix = fix
        parts = []
        if field is not None:
            parts.append(f"{field}: ")
        parts.append(message)
        if value is not None:
            parts.append(f" (got {value!r})")
        if fix:
            parts.append(f"; {fix}")
        super().__init__("".join(parts))
        self.message = message

    def as_dict(self) -> dict[str, Any]:
        return {"error": str(self), "field": self.field,
                "value": None if self.value is None else str(self.value), "fix": self.fix}


class StateConflict(BadInput):
    """The request is well formed but the object's state forbids it (e.g. approving an action
    that is no longer proposed): exit code 2, HTTP 409."""


class ConfigError(BadInput):
    """The settings file or a CAMPAIGND_* variable is invalid."""


class SpecError(BadInput):
    """A campaign spec (or scenario) file is invalid."""


class SpecErrors(BadInput):
    """Several problems found in one file; reports all of them at once."""

    def __init__(self, source: str, errors: Sequence[BadInput]) -> None:
        self.source = source
        self.errors = list(errors)
        lines = [f"{source}: {len(self.errors)} problem(s)"] + [f"  - {e}" for e in self.errors]
        CampaigndError.__init__(self, "\n".join(lines))
        self.field = self.errors[0].field if self.errors else None
        self.value = None
        self.fix = None
        self.message = lines[0]

    def as_dict(self) -> dict[str, Any]:
        return {"error": self.message, "problems": [e.as_dict() for e in self.errors]}


class NotFound(CampaigndError):
    """A named object (campaign, action, cell) does not exist; ``field`` names the input that
    named it (the API's error body carries it)."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class StorageError(CampaigndError):
    """A store (SQL, Redis) failed or is unreachable."""


class StartupError(CampaigndError):
    """The daemon cannot start (port taken, database unreachable): exit code 1."""


# --- DSP errors: mapped once, at the adapter boundary --------------------------------------


class DSPError(CampaigndError):
    """Any failure talking to a DSP. ``retryable`` says whether the same call may succeed later."""

    retryable: bool = False


class DSPTransientError(DSPError):
    """Timeouts, dropped connections, 5xx: retry with backoff."""

    retryable = True


class DSPRateLimited(DSPTransientError):
    """The DSP answered 429; ``retry_after`` (seconds) is honoured when given."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DSPCircuitOpen(DSPTransientError):
    """Too many consecutive failures: calls are refused until the breaker half-opens."""


class DSPAuthError(DSPError):
    """Credentials rejected (after one re-authentication attempt)."""


class DSPRejected(DSPError):
    """The DSP refused the request as invalid (HTTP 400).

    ``field_errors`` maps a field path to its messages."""

    def __init__(self, message: str, field_errors: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.field_errors = dict(field_errors or {})


class DSPNotFound(DSPError):
    """The object does not exist on the DSP (HTTP 404)."""


def leaves(exc: BaseException) -> Iterator[BaseException]:
    """The exceptions inside (nested) exception groups, or ``exc`` itself: what failed inside
    an anyio task group, which always raises a group."""
    if isinstance(exc, BaseExceptionGroup):
        for e in exc.exceptions:
            yield from leaves(e)
    else:
        yield exc
