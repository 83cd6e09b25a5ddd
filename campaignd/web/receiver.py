"""The event receiver: Beeswax's streaming log push (HTTP, JSON) into the durable spool.

Beeswax delivers streaming log messages by pushing them to a URL the customer gives it (HTTP,
or Kinesis); campaignd's side of the HTTP push is this small app on its own listener
(``[receiver]``). Every message of a request is written to the spool (``campaignd.pipeline.spool``)
and synced to disk *before* the request is answered 200, so Beeswax only forgets what campaignd
holds; the event feed then counts the spool like any DSP stream (cursor = sequence number,
committed with the counts).

``POST <receiver.path>`` (default ``/beeswax/events``):

- **Authentication**: ``Authorization: Bearer <receiver.token>``, or ``?token=<receiver.token>``
  for push configurations that only take a URL (a token in a URL can end up in proxy logs:
  prefer the header). No token: 401; a wrong one: 403. While a token is rotated,
  ``receiver.previous_token`` is accepted too (Beeswax drops a push refused with 401/403).
- **Body**: JSON — newline-delimited messages (one ``AdLogMessage`` a line), a JSON array of
  messages, or one message; ``Content-Encoding: gzip`` is accepted, and gzip that the headers
  do not announce is recognised by its magic bytes. Protobuf (the other format Beeswax offers)
  is refused with 415: configure the push for JSON. ``application/octet-stream`` is judged by
  the body (a proxy's default type may label JSON), as a 4xx makes Beeswax drop the batch.
- **Nothing is judged here**: a line that is not valid JSON is spooled as it is and the pipeline
  dead-letters it (``malformed_json``) with its payload, so no bad message makes Beeswax retry
  a whole batch forever and nothing is dropped; an array with a bad element is split into its
  elements, so the good ones are not dead-lettered with it.
- **Limits**: a body (after gunzip) above ``receiver.max_body_mb`` is refused with 413; when the
  spool is full (``receiver.max_spool_mb``: the feed is not keeping up, or the stores are down)
  or the disk fails, 503 with ``Retry-After`` — Beeswax retries, nothing is acknowledged that
  was not kept.
- **Answer**: ``{"accepted": n, "first_seq": s}``.

``GET /healthz``: the spool's state (open, no token needed; the listener binds 127.0.0.1 unless
configured otherwise — put a TLS-terminating proxy in front of it for Beeswax).
"""

from __future__ import annotations

import hmac
import re
import time
import zlib
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread
import msgspec
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from campaignd.logs import Outage, get_logger
from campaignd.pipeline.spool import Spool, SpoolFull

log = get_logger("campaignd.receiver")

RETRY_AFTER_S = 30
MAX_CONCURRENT = 8
"""Push requests handled at once (each holds its body, up to ``receiver.max_body_mb``)."""


def _error(status: int, message: str, *, field: str | None = None, fix: str | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "field": field, "fix": fix}, status_code=status,
                        headers=headers)


def split_messages(body: bytes) -> list[bytes]:
    """A push body's messages: the elements of a JSON array, one JSON value, or else its
    non-blank lines (newline-delimited JSON). A body that is none of these cleanly still gives
    its lines, each spooled as it is (the pipeline dead-letters the malformed ones); an array
    that does not decode (one bad element, several arrays, a cut-off end) gives its top-level
    elements, so one bad message does not take the good ones with it."""
    stripped = body.strip()
    if stripped[:3] == _BOM:  # some tools write one; JSON parsers may ignore it (RFC 8259)
        stripped = stripped[3:].strip()
    if not stripped:
        return []
    if stripped[:1] == b"[":
        try:
            return [bytes(r) for r in msgspec.json.decode(stripped, type=list[msgspec.Raw])]
        except (msgspec.DecodeError, RecursionError):
            return _array_elements(stripped)
    if b"\n" not in stripped:
        return [stripped]
    lines = [line.strip() for line in stripped.split(b"\n")]
    lines = [line for line in lines if line]
    # a first line that is not a message by itself: maybe one pretty-printed message
    if len(lines) > 1 and lines[0][:1] == b"{" and not _one_value(lines[0]) \
            and _one_value(stripped):
        return [stripped]
    return lines


def _one_value(data: bytes) -> bool:
    try:
        msgspec.json.decode(data, type=msgspec.Raw)
    except (msgspec.DecodeError, RecursionError):
        return False
    return True


_BOM = b"\xef\xbb\xbf"
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"?|[][{},]', re.DOTALL)
"""A JSON string (possibly cut off at the end), or a bracket or a comma outside strings."""


def _array_elements(body: bytes) -> list[bytes]:
    """The top-level elements of one or more JSON arrays that do not decode as a whole, found
    by brackets and commas outside strings; every byte that is not a separator lands in some
    message (text between arrays is a message of its own), so nothing is dropped."""
    out: list[bytes] = []
    stack = bytearray()  # open brackets
    start = 0  # where the current element (or the text between arrays) began

    def emit(end: int) -> None:
        piece = body[start:end].strip()
        if piece:
            out.append(piece)

    for m in _TOKENS.finditer(body):
        c = body[m.start()]
        if c == 0x22:  # a string: skipped whole
            continue
        if c in b"[{":
            if not stack and c == 0x5B:  # an array opens: what came before it is a message
                emit(m.start())
                start = m.end()
            stack.append(c)
        elif c in b"]}":
            if stack:
                stack.pop()
                if not stack and c == 0x5D:  # the array closes: its last element
                    emit(m.start())
                    start = m.end()
        elif len(stack) == 1 and stack[0] == 0x5B:  # a comma between the array's elements
            emit(m.start())
            start = m.end()
    emit(len(body))
    return out


class _TooLarge(Exception):
    pass


class _NotJson(Exception):
    pass


_GZIP_MAGIC = b"\x1f\x8b"


def _gunzip(data: bytes, limit: int) -> bytes:
    """Decompressed ``data`` — every gzip member of it (``cat a.gz b.gz`` is valid gzip), or
    zlib. Raises ``_TooLarge`` past ``limit`` bytes, ``zlib.error`` for a corrupt or truncated
    stream."""
    out = bytearray()
    rest = data
    while True:
        d = zlib.decompressobj(wbits=47)  # 32 + 15: gzip or zlib header, detected
        out += d.decompress(rest, limit + 1 - len(out))
        if len(out) > limit or d.unconsumed_tail:
            raise _TooLarge
        if not d.eof:
            raise zlib.error("the compressed stream is truncated")
        rest = d.unused_data
        if not rest.strip(b"\x00"):  # trailing padding after the last member
            return bytes(out)


def create_receiver_app(spool: Spool, *, token: str, path: str = "/beeswax/events",
                        max_body_bytes: int = 32 << 20,
                        on_accepted: Callable[[int], Any] | None = None,
                        on_refused: Callable[[str], Any] | None = None,
                        previous_token: str | None = None) -> Starlette:
    """The receiver (see the module docstring). ``on_accepted(n)`` / ``on_refused(reason)``
    are called for metrics. ``previous_token``: also accepted, while a token is rotated (a
    push it authenticates is logged, at most once an hour, so that the rotation is finished)."""
    if not token.strip():
        raise ValueError("the receiver needs a token")
    expected = token.strip().encode()
    previous = previous_token.strip().encode() if previous_token and \
        previous_token.strip() else None
    warned: list[float] = []

    slots: list[anyio.Semaphore] = []

    def refused(reason: str, response: JSONResponse) -> JSONResponse:
        if on_refused is not None:
            on_refused(reason)
        return response

    async def push(request: Request) -> Response:
        if not slots:
            slots.append(anyio.Semaphore(MAX_CONCURRENT))
        async with slots[0]:  # bodies held in memory at once: at most this many
            return await receive(request)

    # A full or broken spool refuses every push while it lasts (Beeswax retries them, several
    # a second): one line when it starts, at most one a minute, one when it ends.
    full = Outage(log, "receiver: the spool is full; asking the sender to retry")
    broken = Outage(log, "receiver: cannot write the spool", level="error")

    async def receive(request: Request) -> Response:
        auth = request.headers.get("authorization", "")
        scheme, _, given = auth.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            given = request.query_params.get("token", "")
        if not given:
            return refused("unauthenticated", _error(
                401, "pushing events needs the receiver's token", field="Authorization",
                fix="send 'Authorization: Bearer <token>' or add ?token=<token> to the push URL "
                    "(receiver.token)"))
        presented = given.strip().encode()
        ok = hmac.compare_digest(presented, expected)
        if not ok and previous is not None and hmac.compare_digest(presented, previous):
            ok = True
            now = time.monotonic()
            if not warned or now - warned[0] > 3600:
                warned[:] = [now]
                log.info("receiver: a push used receiver.previous_token; once the push sends "
                         "the new token, remove previous_token to finish the rotation")
        if not ok:
            return refused("bad_token", _error(403, "the token is not valid", field="Authorization",
                                               fix="use the token in receiver.token"))
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if "protobuf" in ctype:
            return refused("unsupported_format", _not_json(ctype))
        # A generic binary type may still label JSON (a proxy's default, a gzip body):
        # judged by the body below, as a 4xx makes the sender drop the data.
        binary = ctype == "application/octet-stream"
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
            return refused("too_large", _too_large(max_body_bytes))
        body = bytearray()
        try:
            async for chunk in request.stream():
                body += chunk
                if len(body) > max_body_bytes:
                    return refused("too_large", _too_large(max_body_bytes))
        except ClientDisconnect:
            # the sender gave up mid-body (a timeout, a proxy): nothing was taken, it retries
            log.info("receiver: the sender disconnected before the whole body arrived",
                     received=len(body))
            return refused("disconnected", _error(400, "the body was cut off", field="body",
                                                  fix="send the whole body"))
        encoding = request.headers.get("content-encoding", "").strip().lower()
        if encoding not in ("", "identity", "gzip", "x-gzip", "deflate"):
            return refused("bad_encoding", _error(
                415, f"Content-Encoding {encoding!r} is not supported", field="Content-Encoding",
                fix="send gzip or an uncompressed body"))

        def unpack_and_spool(raw: bytes) -> tuple[int, int]:
            # gzip the headers do not announce (a proxy dropped Content-Encoding, or set
            # ``Content-Type: application/gzip``): JSON never starts with these bytes
            if encoding not in ("", "identity") or raw[:2] == _GZIP_MAGIC:
                raw = _gunzip(raw, max_body_bytes)
            if binary and raw.lstrip(b" \t\r\n\xef\xbb\xbf")[:1] not in (b"{", b"["):
                raise _NotJson
            messages = split_messages(raw)
            if not messages:
                return 0, spool.next_seq
            return len(messages), spool.append(messages)

        try:  # decompressing, splitting and the fsync run on a worker thread
            n, first = await anyio.to_thread.run_sync(unpack_and_spool, bytes(body))
        except _TooLarge:
            return refused("too_large", _too_large(max_body_bytes))
        except _NotJson:
            return refused("unsupported_format", _not_json(ctype))
        except zlib.error as exc:
            return refused("bad_encoding", _error(
                400, f"the body is not valid {encoding or 'gzip'}: {exc}",
                field="Content-Encoding",
                fix="send the body compressed as Content-Encoding says, or uncompressed"))
        except SpoolFull as exc:
            full.failed(str(exc))
            return refused("spool_full", _error(
                503, "the spool is full: the event feed is behind", field=None,
                fix="retry later; check `campaignd status` for the feed and the stores",
                headers={"Retry-After": str(RETRY_AFTER_S)}))
        except ValueError as exc:
            return refused("too_large", _error(413, str(exc), field="body",
                                               fix="send smaller messages"))
        except OSError as exc:
            broken.failed(str(exc))
            return refused("spool_error", _error(
                503, f"cannot write the spool: {exc.strerror or exc}", field=None,
                fix="free disk space or fix receiver.spool_dir; the sender will retry",
                headers={"Retry-After": str(RETRY_AFTER_S)}))
        full.ok("receiver: the spool takes pushes again")
        broken.ok("receiver: the spool can be written again")
        if n == 0:
            return refused("empty", _error(400, "the body holds no message", field="body",
                                           fix="send JSON log messages, one a line"))
        if on_accepted is not None:
            on_accepted(n)
        return JSONResponse({"accepted": n, "first_seq": first})

    async def healthz(request: Request) -> Response:
        st = spool.status()
        return JSONResponse({"ok": True, "spool": {"first_seq": st.first_seq,
                                                   "next_seq": st.next_seq,
                                                   "segments": st.segments, "bytes": st.bytes}})

    async def not_here(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        if status == 405:
            return _error(405, f"{request.method} is not accepted at {request.url.path}",
                          field="method", fix=f"POST log messages to {path}")
        return _error(404, f"nothing is served at {request.url.path}", field="path",
                      fix=f"push to {path} (receiver.path)")

    app = Starlette(routes=[Route(path, push, methods=["POST"]),
                            Route("/healthz", healthz, methods=["GET"])],
                    exception_handlers={404: not_here, 405: not_here})
    # A slash too many is a 404 naming the push URL, not a redirect (that would send the
    # DSP, behind a TLS proxy, to an internal http:// address, its ?token= repeated)
    app.router.redirect_slashes = False
    return app


def _not_json(ctype: str) -> JSONResponse:
    return _error(415, f"campaignd reads Beeswax's JSON log format, not {ctype}",
                  field="Content-Type", fix="configure the streaming log push for JSON")


def _too_large(limit: int) -> JSONResponse:
    return _error(413, f"the body is larger than {limit} bytes", field="body",
                  fix="send smaller batches, or raise receiver.max_body_mb")


__all__ = ["create_receiver_app", "split_messages"]
