"""The Beeswax ("Buzz") v2 HTTP session: authentication, retries, rate limiting, the circuit
breaker, status → ``campaignd.errors`` mapping, DRF pagination and idempotent creates.
``BeeswaxSession`` is mixed into ``BeeswaxAdapter`` (``campaignd.dsp.beeswax``), whose
``__init__`` builds the state declared here; the resource operations live there.

Transport behaviour (reference §1, §4):

- cookie session from ``POST /rest/v2/authenticate`` with ``keep_logged_in: true``; the httpx
  cookie jar keeps every ``Set-Cookie`` (Beeswax may rotate the session on any response);
  ``X-CSRFToken`` is echoed when a ``csrftoken`` cookie exists; on 401/403 the adapter
  re-authenticates exactly once and retries, then raises ``DSPAuthError``;
- a client-side token bucket (default 20 requests/s: Beeswax publishes no limit, FreeWheel's
  other APIs state 20/s);
- retries with exponential backoff and full jitter on 429 (honouring ``Retry-After``), 5xx,
  timeouts and connection errors; the backoff ``sleep`` is injectable;
- a circuit breaker: after ``breaker_threshold`` consecutive transport/5xx failures calls fail
  fast with ``DSPCircuitOpen`` until ``breaker_cooldown_s`` has passed, then one probe call is let
  through (half-open);
- creates are idempotent: ``_create`` takes a ``lookup`` (by the caller's deterministic
  ``alternative_id``, ``GET …?alternative_id=``) that runs before retrying a create whose
  response was lost, and ``_ensure`` looks the object up before creating it;
- list reads follow DRF pagination (``next``).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any

import anyio
import httpx
import structlog

from campaignd.clock import Clock
from campaignd.dsp.beeswax_codec import flatten_errors
from campaignd.dsp.resilience import CircuitBreaker, Sleep, TokenBucket, parse_retry_after
from campaignd.errors import (
    DSPAuthError,
    DSPCircuitOpen,
    DSPError,
    DSPNotFound,
    DSPRateLimited,
    DSPRejected,
    DSPTransientError,
)

# The adapter's logger: these events were always logged as ``campaignd.dsp.beeswax``.
log = structlog.get_logger("campaignd.dsp.beeswax")

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class _AuthExpired(Exception):
    pass


class BeeswaxSession:
    """The HTTP half of ``BeeswaxAdapter``: mixed into it (its ``__init__`` sets every
    attribute declared here). Methods take paths relative to ``/rest/v2`` or absolute URLs."""

    _client: httpx.AsyncClient
    _root: str
    _api: str
    _email: str
    _password: Any
    _timeout: float
    _clock: Clock
    _sleep: Sleep
    _rng: random.Random
    _limiter: TokenBucket
    _breaker: CircuitBreaker
    _max_attempts: int
    _backoff_base: float
    _backoff_cap: float
    _page_size: int
    _auth_lock: anyio.Lock
    _auth_generation: int
    _authenticated: bool
    requests: int
    retries: int
    rate_limited: int
    reauthentications: int
    _last_error: str | None
    _last_success: datetime | None

    # --- one request ------------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return path if path.startswith("http") else self._api + path

    def _csrf_header(self) -> dict[str, str]:
        try:
            token = self._client.cookies.get("csrftoken")
        except httpx.CookieConflict:
            token = None
        return {"X-CSRFToken": token} if token else {}

    async def _send(self, method: str, url: str, *, json_body: Any = None,
                    params: Mapping[str, Any] | None = None,
                    authenticated: bool = True) -> httpx.Response:
        """One attempt: breaker, rate limit, HTTP, and status → error mapping."""
        self._breaker.before_call()
        try:
            await self._limiter.acquire()
            headers = {} if method in _SAFE_METHODS else self._csrf_header()
            self.requests += 1
            try:
                resp = await self._client.request(method, url, json=json_body, params=params,
                                                  headers=headers, timeout=self._timeout)
            except httpx.TimeoutException as exc:
                self._breaker.failure()
                raise DSPTransientError(f"Beeswax {method} {_path(url)} timed out") from exc
            except httpx.TransportError as exc:
                self._breaker.failure()
                raise DSPTransientError(
                    f"Beeswax {method} {_path(url)}: connection error "
                    f"({type(exc).__name__})") from exc
            status = resp.status_code
            if status >= 500:
                self._breaker.failure()
                raise DSPTransientError(f"Beeswax {method} {_path(url)} answered {status}")
            self._breaker.success()
        finally:
            self._breaker.release_probe()
        if status == 429:
            self.rate_limited += 1
            raise DSPRateLimited(f"Beeswax {method} {_path(url)} answered 429",
                                 parse_retry_after(resp.headers.get("retry-after"),
                                                   self._clock.now()))
        if status in (401, 403) and authenticated:
            raise _AuthExpired
        if status in (401, 403):
            raise DSPAuthError(
                f"Beeswax refused the credentials (HTTP {status}); check the email and password "
                "settings for this DSP account")
        if status == 404:
            raise DSPNotFound(f"Beeswax {method} {_path(url)}: not found")
        if status >= 400:
            try:
                body = resp.json()
            except ValueError:
                body = {"detail": resp.text[:200]}
            field_errors = flatten_errors(body)
            summary = "; ".join(f"{k}: {' '.join(v)}" for k, v in field_errors.items())
            raise DSPRejected(f"Beeswax rejected {method} {_path(url)} (HTTP {status}): "
                              f"{summary}", field_errors)
        return resp

    def _backoff(self, attempt: int) -> float:
        return self._rng.uniform(0, min(self._backoff_cap, self._backoff_base * 2 ** attempt))

    async def _request(self, method: str, path: str, *, json_body: Any = None,
                       params: Mapping[str, Any] | None = None,
                       before_retry: Callable[[], Awaitable[Any]] | None = None) -> Any:
        """Send with authentication, retries and backoff. Returns the response, or whatever
        ``before_retry`` found (not None) before a retry — how creates stay idempotent."""
        url = self._url(path)
        if not self._authenticated:
            await self._ensure_authenticated(self._auth_generation)
        attempt = 0
        reauth_generation: int | None = None
        while True:
            generation = self._auth_generation
            try:
                resp = await self._send(method, url, json_body=json_body, params=params)
                self._last_success = self._clock.now()
                return resp
            except _AuthExpired:
                # Exactly one re-authentication per call: a 401 on the session that call's
                # own re-authentication produced means the account itself is refused.
                if reauth_generation is not None and generation >= reauth_generation:
                    self._last_error = "session rejected right after re-authentication"
                    raise DSPAuthError("Beeswax rejected the session again right after "
                                       "re-authentication") from None
                self.reauthentications += 1
                await self._ensure_authenticated(generation, force=True)
                reauth_generation = self._auth_generation
                continue
            except DSPCircuitOpen as exc:
                self._last_error = str(exc)
                raise
            except DSPRateLimited as exc:
                error: DSPTransientError = exc
                delay = exc.retry_after if exc.retry_after is not None else \
                    self._backoff(attempt)
            except DSPTransientError as exc:
                error = exc
                delay = self._backoff(attempt)
            except DSPError as exc:
                self._last_error = str(exc)
                raise
            self._last_error = str(error)
            attempt += 1
            if attempt >= self._max_attempts:
                raise error
            self.retries += 1
            log.info("beeswax.retry", method=method, path=_path(url), attempt=attempt,
                     delay_s=round(delay, 3), error=type(error).__name__)
            await self._sleep(delay)
            if before_retry is not None:
                # If the lookup itself fails, give up rather than re-send blindly: a second POST
                # after a lost response is exactly the duplicate this lookup exists to prevent.
                found = await before_retry()
                if found is not None:
                    return found

    # --- authentication ---------------------------------------------------------------------

    async def _ensure_authenticated(self, generation: int, *, force: bool = False) -> None:
        async with self._auth_lock:
            if self._auth_generation != generation or (self._authenticated and not force):
                return  # another task authenticated meanwhile
            try:
                await self._authenticate()
            except DSPError as exc:
                # health() shows why the adapter cannot work (wrong password, DSP down)
                self._authenticated = False
                self._last_error = str(exc)
                raise
            self._auth_generation += 1

    async def _authenticate(self) -> None:
        secret = self._password
        password = secret.get_secret_value() if hasattr(secret, "get_secret_value") else secret
        body = {"email": self._email, "password": password, "keep_logged_in": True}
        attempt = 0
        url = self._url("/authenticate")
        fell_back = False
        while True:
            try:
                resp = await self._send("POST", url, json_body=body, authenticated=False)
                break
            except DSPCircuitOpen:
                raise
            except DSPNotFound:
                if fell_back:
                    raise
                # "Authentication is both backwards and forwards compatible": fall back to the
                # 0.5 endpoint on instances without the v2 one.
                fell_back = True
                url = self._root + "/rest/authenticate"
                continue
            except DSPRejected as exc:
                raise DSPAuthError(f"Beeswax authentication failed: {exc}") from None
            except DSPRateLimited as exc:
                error: DSPTransientError = exc
                delay = exc.retry_after if exc.retry_after is not None else \
                    self._backoff(attempt)
            except DSPTransientError as exc:
                error, delay = exc, self._backoff(attempt)
            attempt += 1
            if attempt >= self._max_attempts:
                raise error
            self.retries += 1
            await self._sleep(delay)
        try:
            payload = resp.json()
        except ValueError:
            payload = {}
        if str(payload.get("success", "true")).lower() != "true":
            raise DSPAuthError("Beeswax authentication failed; check the email and password "
                               "settings for this DSP account")
        self._authenticated = True
        log.info("beeswax.authenticated", fields=["email", "password", "keep_logged_in"])

    # --- JSON, pagination and idempotent creates --------------------------------------------

    async def _json(self, method: str, path: str, body: Any = None,
                    params: Mapping[str, Any] | None = None) -> Any:
        resp = await self._request(method, path, json_body=body, params=params)
        return _decode(resp) if resp.content else None

    async def _list(self, path: str, params: Mapping[str, Any] | None = None) -> list[Any]:
        """Every result of a DRF-paginated list, following ``next``."""
        query = {"page_size": self._page_size, **(params or {})}
        resp = await self._request("GET", path, params=query)
        out: list[Any] = []
        while True:
            page = _decode(resp)
            if not isinstance(page, dict):
                raise DSPTransientError(f"Beeswax returned a list page that is not an object: "
                                        f"{_path(str(resp.request.url))}")
            results = page.get("results")
            if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
                raise DSPTransientError(f"Beeswax returned a list page whose results are not a "
                                        f"list of objects: {_path(str(resp.request.url))}")
            out.extend(results)
            nxt = page.get("next")
            if not nxt:
                return out
            resp = await self._request("GET", nxt)

    async def _find(self, path: str, alternative_id: str,
                    extra: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        found = await self._list(path, {"alternative_id": alternative_id, **(extra or {})})
        found = [r for r in found if r.get("alternative_id") == alternative_id]
        return min(found, key=lambda r: r["id"]) if found else None

    async def _create(self, path: str, body: dict[str, Any], *,
                      lookup: Callable[[], Awaitable[dict[str, Any] | None]]) -> dict[str, Any]:
        """POST a new object; before any retry, ``lookup`` finds it if the lost response had
        in fact created it."""
        result = await self._request("POST", path, json_body=body, before_retry=lookup)
        if isinstance(result, dict):
            log.info("beeswax.create_recovered", path=path)
            return result
        return result.json()

    async def _ensure(self, path: str, alternative_id: str, body: dict[str, Any]
                      ) -> dict[str, Any]:
        async def lookup() -> dict[str, Any] | None:
            return await self._find(path, alternative_id)

        existing = await lookup()
        if existing is not None:
            return existing
        return await self._create(path, {**body, "alternative_id": alternative_id},
                                  lookup=lookup)


def _path(url: str) -> str:
    """A URL for logs and messages: path only (never query strings, never credentials)."""
    return httpx.URL(url).path


def _decode(resp: httpx.Response) -> Any:
    """The response's JSON; a body that is not JSON is a (transient) DSP fault, not a crash."""
    try:
        return resp.json()
    except ValueError:
        raise DSPTransientError(
            f"Beeswax answered HTTP {resp.status_code} with a body that is not JSON on "
            f"{_path(str(resp.request.url))}") from None
