"""Control API, dashboard and Prometheus metrics.

Read endpoints are open on the bind address (127.0.0.1 by default); every mutating call needs
``Authorization: Bearer <token>``. Errors are JSON: ``{"error": ..., "field": ..., "fix": ...}``.

Every request must name this daemon in its ``Host`` header (a loopback name, the bound address
or one of ``http.allowed_hosts``): a web page can point its own host name at 127.0.0.1 (DNS
rebinding), and the browser would then read the open endpoints as that page's origin.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import anyio
from starlette.applications import Starlette
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from campaignd.domain.actions import MAX_NOTE_CHARS
from campaignd.errors import BadInput, NotFound, StateConflict, StorageError

STATIC = Path(__file__).parent / "static"

MAX_BODY_BYTES = 64 * 1024
"""The largest request body the control API takes (a verdict is ``{"actor", "note"}``: a
1,000-character note is at most 12 kB of JSON even when every character is escaped)."""

DRAIN_BYTES = 64 << 20
"""A body above ``MAX_BODY_BYTES`` is read (and thrown away, never held) up to this size
before the 413 goes out, so that a client that sends its whole body before reading the answer
(httpx, requests) sees the 413 rather than a reset connection; beyond it, or when the client
waits for ``100-continue``, the 413 goes out at once and the connection is closed."""

BODY_TIMEOUT_S = 10.0
"""How long a request body may take to arrive."""


class ControlPlane(Protocol):
    """What the web layer needs from the running daemon."""

    def status(self) -> dict[str, Any]: ...

    async def campaigns(self) -> list[dict[str, Any]]: ...

    async def campaign(self, campaign_id: str) -> dict[str, Any] | None: ...

    def trigger(self, job: str) -> bool: ...

    def metrics(self) -> bytes: ...

    def check_token(self, token: str) -> bool: ...

    async def actions(self, *, status: str | None, campaign_id: str | None,
                      cell_id: str | None, decision_id: str | None,
                      limit: int) -> dict[str, Any]: ...

    async def action(self, action_id: int) -> dict[str, Any] | None: ...

    async def decide_action(self, action_id: int, *, approve: bool, actor: str,
                            note: str | None) -> dict[str, Any]: ...

    async def decide_decision(self, decision_id: str, *, approve: bool, actor: str,
                              note: str | None) -> dict[str, Any]: ...

    async def undo_action(self, action_id: int, *, actor: str) -> dict[str, Any]: ...


def _error(status: int, message: str, *, field: str | None = None,
           fix: str | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "field": field, "fix": fix}, status_code=status)


def require_token(handler: Callable[[Request], Awaitable[Response]]
                  ) -> Callable[[Request], Awaitable[Response]]:
    async def wrapped(request: Request) -> Response:
        plane: ControlPlane = request.app.state.plane
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token:
            resp = _error(401, "this call changes state and needs a bearer token",
                          field="Authorization",
                          fix="send 'Authorization: Bearer <token>' (http.api_token, or the "
                              "state directory's api-token file)")
            resp.headers["www-authenticate"] = 'Bearer realm="campaignd"'  # (RFC 6750)
            return resp
        if not plane.check_token(token.strip()):
            return _error(403, "the bearer token is not valid", field="Authorization",
                          fix="use the token from http.api_token or the state directory")
        return await handler(request)

    return wrapped


async def healthz(request: Request) -> Response:
    st = request.app.state.plane.status()
    return JSONResponse({"ok": st["healthy"], "state": st["state"]},
                        status_code=200 if st["healthy"] else 503)


async def status(request: Request) -> Response:
    return JSONResponse(request.app.state.plane.status())


async def campaigns(request: Request) -> Response:
    return JSONResponse({"campaigns": await request.app.state.plane.campaigns()})


async def campaign(request: Request) -> Response:
    cid = request.path_params["campaign_id"]
    found = await request.app.state.plane.campaign(cid)
    if found is None:
        return _error(404, f"no campaign {cid!r}", field="campaign_id",
                      fix="list campaigns with GET /api/v1/campaigns")
    return JSONResponse(found)


@require_token
async def run_job(request: Request) -> Response:
    name = request.path_params["name"]
    plane: ControlPlane = request.app.state.plane
    known = [j["name"] for j in plane.status()["agents"]]
    if name not in known:
        return _error(404, f"no agent or job {name!r}", field="name",
                      fix=f"use one of {', '.join(known)}")
    if not plane.trigger(name):
        return _error(409, f"{name} could not be queued (shutting down or queue full)")
    return JSONResponse({"queued": name}, status_code=202)


def _int_param(request: Request, name: str, default: int | None = None, *,
               low: int = 1, high: int = 10_000) -> int:
    raw = (request.path_params.get(name) if name in request.path_params
           else request.query_params.get(name))
    if raw is None:
        if default is None:
            raise BadInput("is required", field=name, fix=f"give {name} as an integer")
        return default
    # only ASCII digits: int() also takes "1_0" (10), " 7", "+7" and other scripts' digits
    # ("１"), and a typo must not act on another action
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 20:
        raise BadInput("must be a whole number in ASCII digits", field=name, value=raw[:40],
                       fix=f"give {name} as digits 0-9 only, from {low} to {high}")
    value = int(raw)
    if not low <= value <= high:
        raise BadInput(f"must be from {low} to {high}", field=name, value=value,
                       fix=f"give {name} between {low} and {high}")
    return value


class BodyTooLarge(BadInput):
    """The request body is above ``MAX_BODY_BYTES`` (HTTP 413). ``close``: the body was not
    read to its end, so the connection cannot be reused."""

    def __init__(self, *, close: bool) -> None:
        super().__init__(f"is larger than the control API's limit of {MAX_BODY_BYTES} bytes",
                         field="body",
                         fix='send a JSON object such as {"actor": "alice", "note": "…"} '
                             f"(a note of at most {MAX_NOTE_CHARS} characters)")
        self.close = close


class UnsupportedMedia(BadInput):
    """A body that is not declared JSON (HTTP 415)."""

    def __init__(self, media: str) -> None:
        super().__init__("must be application/json", field="Content-Type",
                         value=media[:80] or None,
                         fix="send the body as JSON with 'Content-Type: application/json'")


def _api_errors(handler: Callable[[Request], Awaitable[Response]]
                ) -> Callable[[Request], Awaitable[Response]]:
    """BadInput → 400 (409 for a state conflict, 413 for a body too large, 415 for a body
    not declared JSON), NotFound → 404, StorageError → 503."""
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except ClientDisconnect:
            return _error(400, "the client closed the connection before its body arrived",
                          field="body")
        except BodyTooLarge as exc:
            resp = _error(413, str(exc), field=exc.field, fix=exc.fix)
            if exc.close:
                resp.headers["connection"] = "close"
            return resp
        except NotFound as exc:
            field = exc.field or "action_id"
            return _error(404, str(exc), field=field, fix=(
                "list the proposed decisions with GET /api/v1/actions?status=proposed (their "
                "decision field)" if field == "decision_id"
                else "list actions with GET /api/v1/actions"))
        except BadInput as exc:
            code = (409 if isinstance(exc, StateConflict)
                    else 415 if isinstance(exc, UnsupportedMedia) else 400)
            return _error(code, str(exc), field=exc.field, fix=exc.fix)
        except StorageError as exc:
            return _error(503, f"the database is not available: {exc}",
                          fix="retry shortly; see `campaignd status`")
    return wrapped


@_api_errors
async def list_actions(request: Request) -> Response:
    q = request.query_params
    unknown = set(q) - {"status", "campaign", "cell", "decision", "limit"}
    if unknown:
        raise BadInput("unknown query parameter", field=sorted(unknown)[0],
                       fix="filter with status, campaign, cell, decision and limit")
    for name in ("status", "campaign", "cell", "decision", "limit"):
        if len(q.getlist(name)) > 1:
            raise BadInput("is given more than once", field=name,
                           fix=f"give {name} once (a list filters on one value of each)")
    for name in ("campaign", "cell", "decision"):
        value = q.get(name)
        if value is not None and not DECISION_ID.fullmatch(value):
            raise BadInput("is not an id", field=name, value=value[:80],
                           fix=f"give the {name} id as `campaignd actions list` shows it "
                               "(1-64 letters, digits and : . _ + -), or leave it out")
    return JSONResponse(await request.app.state.plane.actions(
        status=q.get("status"), campaign_id=q.get("campaign"), cell_id=q.get("cell"),
        decision_id=q.get("decision"), limit=_int_param(request, "limit", 100)))


@_api_errors
async def get_action(request: Request) -> Response:
    action_id = _int_param(request, "action_id", low=1, high=2**62)
    found = await request.app.state.plane.action(action_id)
    if found is None:
        raise NotFound(f"no action {action_id}", field="action_id")
    return JSONResponse(found)


async def _read_body(request: Request) -> bytes:
    """The request body, never holding more than ``MAX_BODY_BYTES`` of it: ``BodyTooLarge``
    when it is larger (declared or sent), ``BadInput`` when it takes longer than
    ``BODY_TIMEOUT_S`` to arrive."""
    declared = request.headers.get("content-length", "")
    too_large = declared.isdigit() and int(declared) > MAX_BODY_BYTES
    if too_large and (int(declared) > DRAIN_BYTES
                      or request.headers.get("expect", "").lower() == "100-continue"):
        raise BodyTooLarge(close=True)
    chunks: list[bytes] = []
    size = 0
    ended = False
    with anyio.move_on_after(BODY_TIMEOUT_S):
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                too_large = True
                chunks.clear()
                if size > DRAIN_BYTES:
                    break
            elif not too_large:
                chunks.append(chunk)
        else:
            ended = True
    if too_large:
        raise BodyTooLarge(close=not ended)
    if not ended:
        raise BadInput(f"did not arrive within {BODY_TIMEOUT_S:g} s", field="body",
                       fix="send the whole body at once (it is a small JSON object)")
    return b"".join(chunks)


async def _body(request: Request, keys: tuple[str, ...] = ("actor", "note"), *,
                no_note: str = "") -> dict[str, Any]:
    """The request's JSON object, with only ``keys`` (an unknown key is refused rather than
    dropped: a note sent as ``"comment"`` would be lost from the audit log unseen; ``no_note``
    says why a request without ``"note"`` in ``keys`` takes none)."""
    raw = await _read_body(request)
    if not raw.strip():
        return {}
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media != "application/json":
        raise UnsupportedMedia(media)
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):  # (nested a thousand deep: not a body we take)
        raise BadInput("is not valid JSON", field="body",
                       fix='send a JSON object such as {"actor": "alice", "note": "…"}') from None
    if not isinstance(data, dict):
        raise BadInput("must be a JSON object", field="body",
                       fix='send a JSON object such as {"actor": "alice"}')
    for key in data:
        if key not in keys:
            raise BadInput("is not a field this request takes", field=str(key)[:64],
                           fix="send only " + " and ".join(keys)
                               + (f" ({no_note})" if key == "note" and no_note else ""))
    for key in keys:
        if key in data and not isinstance(data[key], str | None):
            raise BadInput("must be a string", field=key, value=data[key],
                           fix=f"send {key} as a string")
        if isinstance(data.get(key), str) and not _is_text(data[key]):
            # (a NUL or a lone surrogate: SQLite cannot encode it, PostgreSQL refuses it)
            raise BadInput("must be text without NUL characters or unpaired surrogates",
                           field=key, fix=f"send {key} as plain UTF-8 text")
    note = data.get("note")
    if note is not None and len(note) > MAX_NOTE_CHARS:
        raise BadInput(f"is {len(note)} characters long, more than the {MAX_NOTE_CHARS} "
                       "allowed", field="note",
                       fix=f"shorten the note to at most {MAX_NOTE_CHARS} characters (link to "
                           "a longer write-up if needed)")
    return data


def _is_text(value: str) -> bool:
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_NO_NOTE = {"undo": "an undo takes no note: the audit log records whose undo it is, of which "
                    "action",
            "approve": "an approval takes no note: a rejection records one, an approval "
                       "records who approved"}


def _verdict(verb: str) -> Callable[[Request], Awaitable[Response]]:
    @require_token
    @_api_errors
    async def handler(request: Request) -> Response:
        action_id = _int_param(request, "action_id", low=1, high=2**62)
        body = await _body(request, ("actor", "note") if verb == "reject" else ("actor",),
                           no_note=_NO_NOTE.get(verb, ""))
        actor = str(body.get("actor") or "").strip()[:128] or "api"
        plane = request.app.state.plane
        if verb == "undo":
            out = await plane.undo_action(action_id, actor=actor)
            # asked again: the undo queued before (200, "repeat": nothing new was queued)
            return JSONResponse(out, status_code=200 if out.get("repeat") else 202)
        out = await plane.decide_action(action_id, approve=verb == "approve", actor=actor,
                                        note=body.get("note"))
        return JSONResponse(out)
    return handler


DECISION_ID = re.compile(r"[0-9A-Za-z:._+-]{1,64}")
"""A decision id as ``campaignd actions list`` shows it."""


def _decision_verdict(verb: str) -> Callable[[Request], Awaitable[Response]]:
    """A person's verdict on every proposed action of one decision (a campaign's re-plan)."""
    @require_token
    @_api_errors
    async def handler(request: Request) -> Response:
        decision_id = request.path_params["decision_id"]
        if not DECISION_ID.fullmatch(decision_id):
            raise BadInput("is not a decision id", field="decision_id", value=decision_id[:80],
                           fix="use a decision id from `campaignd actions list --status "
                               "proposed` (the decision column)")
        body = await _body(request, ("actor", "note") if verb == "reject" else ("actor",),
                           no_note=_NO_NOTE.get(verb, ""))
        actor = str(body.get("actor") or "").strip()[:128] or "api"
        out = await request.app.state.plane.decide_decision(
            decision_id, approve=verb == "approve", actor=actor, note=body.get("note"))
        return JSONResponse(out)
    return handler


async def metrics(request: Request) -> Response:
    return Response(request.app.state.plane.metrics(),
                    media_type="text/plain; version=0.0.4; charset=utf-8")


async def dashboard(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", media_type="text/html")


async def not_found(request: Request, exc: Exception) -> Response:
    return _error(404, f"no such endpoint: {request.method} {request.url.path}",
                  fix="see the README's control API section")


async def method_not_allowed(request: Request, exc: Exception) -> Response:
    return _error(405, f"{request.method} is not allowed on {request.url.path}",
                  fix="see the README's control API section for the methods")


LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
"""Host names a request to the daemon may always give: a browser reaches these only on this
machine."""

WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::"})

SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
    # the dashboard is one page with its script and style inline; it may only call back home
    "content-security-policy": "default-src 'none'; script-src 'unsafe-inline'; "
                               "style-src 'unsafe-inline'; connect-src 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
}
"""Added to every answer unless it has the header already."""


def allowed_hosts(bind_host: str, extra: Iterable[str] = ()) -> frozenset[str] | None:
    """The ``Host`` names the control API answers to: the loopback names, the bound address
    (unless it is a wildcard such as 0.0.0.0) and ``extra`` (``http.allowed_hosts``); ``None``
    (no check) when ``extra`` holds ``*``."""
    extra = [h.lower() for h in extra]
    if "*" in extra:
        return None
    hosts = set(LOOPBACK_HOSTS) | set(extra)
    if bind_host not in WILDCARD_BINDS:
        hosts.add(bind_host.lower().strip("[]"))
    return frozenset(hosts)


def host_name(header: str) -> str:
    """The host of a ``Host`` header without its port, lower case (``[::1]:8470`` → ``::1``)."""
    header = header.strip().lower()
    if header.startswith("["):
        name, _, rest = header[1:].partition("]")
    elif header.count(":") == 1:
        name, rest = header.split(":")
        rest = ":" + rest
    else:
        return header
    # anything but a port after the name ("[::1].x", "a:b") is not a host this daemon has
    return name if rest == "" or (rest[:1] == ":" and rest[1:].isdigit()) else header


class _Guard:
    """ASGI middleware: refuses a request whose ``Host`` is not one of ``hosts`` (400, before
    any route runs) and adds ``SECURITY_HEADERS`` to every answer."""

    def __init__(self, app: ASGIApp, *, hosts: frozenset[str] | None, port: int | None) -> None:
        self.app = app
        self.hosts = hosts
        self.port = port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if self.hosts is not None:
            given = Headers(scope=scope).get("host", "")
            if host_name(given) not in self.hosts:
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                at = f"http://127.0.0.1:{self.port}/" if self.port else "http://127.0.0.1/"
                refused = _error(
                    400, f"the Host header {given[:100]!r} does not name this daemon (a web "
                         "page pointing its own name at this address is refused)",
                    field="Host",
                    fix=f"use {at} or http://localhost; to reach it under another name, add "
                        "the name to http.allowed_hosts")
                await self._with_headers(refused)(scope, receive, send)
                return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for key, value in SECURITY_HEADERS.items():
                    if key not in headers:
                        headers[key] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)

    @staticmethod
    def _with_headers(response: Response) -> Response:
        for key, value in SECURITY_HEADERS.items():
            response.headers[key] = value
        return response


def create_app(plane: ControlPlane, *, hosts: frozenset[str] | None = LOOPBACK_HOSTS,
               port: int | None = None) -> Starlette:
    """The control API over ``plane``; ``hosts``: the ``Host`` names it answers to (see
    ``allowed_hosts``; ``None``: any), ``port``: the port it listens on (for the error's fix)."""
    app = Starlette(middleware=[Middleware(_Guard, hosts=hosts, port=port)], routes=[
        Route("/", dashboard),
        Route("/healthz", healthz),
        Route("/metrics", metrics),
        Route("/api/v1/status", status),
        Route("/api/v1/campaigns", campaigns),
        Route("/api/v1/campaigns/{campaign_id}", campaign),
        Route("/api/v1/agents/{name}/run", run_job, methods=["POST"]),
        Route("/api/v1/actions", list_actions),
        Route("/api/v1/actions/{action_id}", get_action),
        Route("/api/v1/actions/{action_id}/approve", _verdict("approve"), methods=["POST"]),
        Route("/api/v1/actions/{action_id}/reject", _verdict("reject"), methods=["POST"]),
        Route("/api/v1/actions/{action_id}/undo", _verdict("undo"), methods=["POST"]),
        Route("/api/v1/decisions/{decision_id}/approve", _decision_verdict("approve"),
              methods=["POST"]),
        Route("/api/v1/decisions/{decision_id}/reject", _decision_verdict("reject"),
              methods=["POST"]),
    ], exception_handlers={404: not_found, 405: method_not_allowed})
    app.router.redirect_slashes = False  # another path is a 404 naming it, not a redirect
    app.state.plane = plane
    return app


def tokens_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
