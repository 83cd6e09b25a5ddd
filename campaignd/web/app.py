"""Control API, dashboard and Prometheus metrics.

Read endpoints are open on the bind address (127.0.0.1 by default); every mutating call needs
``Authorization: Bearer <token>``. Errors are JSON: ``{"error": ..., "field": ..., "fix": ...}``.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

STATIC = Path(__file__).parent / "static"


class ControlPlane(Protocol):
    """What the web layer needs from the running daemon."""

    def status(self) -> dict[str, Any]: ...

    async def campaigns(self) -> list[dict[str, Any]]: ...

    async def campaign(self, campaign_id: str) -> dict[str, Any] | None: ...

    def trigger(self, job: str) -> bool: ...

    def metrics(self) -> bytes: ...

    def check_token(self, token: str) -> bool: ...


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
            return _error(401, "this call changes state and needs a bearer token",
                          field="Authorization",
                          fix="send 'Authorization: Bearer <token>' (http.api_token)")
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


def create_app(plane: ControlPlane) -> Starlette:
    app = Starlette(routes=[
        Route("/", dashboard),
        Route("/healthz", healthz),
        Route("/metrics", metrics),
        Route("/api/v1/status", status),
        Route("/api/v1/campaigns", campaigns),
        Route("/api/v1/campaigns/{campaign_id}", campaign),
        Route("/api/v1/agents/{name}/run", run_job, methods=["POST"]),
    ], exception_handlers={404: not_found, 405: method_not_allowed})
    app.state.plane = plane
    return app


def tokens_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
