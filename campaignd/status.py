"""``campaignd status``: ask the control API first; fall back to the published status record.

The daemon publishes its status record to SQL every few seconds (arq's health-key idea). When
the API does not answer, the record tells whether the daemon stopped cleanly (``stopped``) or
went silent (heartbeat older than ``STATUS_STALE_S``: ``stopped``; recent but API down:
``unhealthy``).
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from campaignd.settings import Settings

STATUS_STALE_S = 30.0


def _stopped(reason: str, source: str) -> dict[str, Any]:
    return {"state": "stopped", "healthy": False, "pid": None, "version": None,
            "uptime_s": None, "campaigns": [], "agents": [],
            "events": None, "dsp": None, "problems": [reason], "source": source}


async def read_status(settings: Settings, *, timeout: float = 3.0) -> dict[str, Any]:
    url = settings.control_url + "/api/v1/status"
    api_error = ""
    try:
        async with httpx.AsyncClient(timeout=timeout, trust_env=False) as client:
            resp = await client.get(url)
        if resp.status_code == 200:
            data = resp.json()
            data["source"] = "api"
            return dict(data)
        api_error = f"control API answered HTTP {resp.status_code}"
    except (httpx.HTTPError, ValueError) as exc:
        api_error = f"control API at {settings.control_url} not reachable ({type(exc).__name__})"
    record = await _read_record(settings)
    if record is None:
        return _stopped(f"{api_error}; no status record in the database", "none")
    payload, heartbeat = record
    age = (datetime.now(UTC) - heartbeat).total_seconds()
    payload = dict(payload)
    payload["source"] = "database"
    payload["healthy"] = False
    payload.setdefault("problems", [])
    if payload.get("state") == "stopped":
        payload["problems"] = [f"stopped at {heartbeat.isoformat()}"]
    elif age > STATUS_STALE_S:
        payload["state"] = "stopped"
        payload["problems"] = [f"{api_error}; last heartbeat {age:.0f} s ago "
                               f"(pid {payload.get('pid')} is gone or hung)"]
    else:
        payload["state"] = "unhealthy"
        payload["problems"] = [api_error, *payload["problems"]]
    return payload


async def _read_record(settings: Settings) -> tuple[dict[str, Any], datetime] | None:
    from sqlalchemy.engine import make_url

    from campaignd.stores.opening import database_url
    from campaignd.stores.sql.repository import SqlStore
    url = make_url(settings.database.url)
    if url.get_backend_name() == "sqlite" and (
            not url.database or not Path(url.database).exists()):
        return None  # never create a database file just to look at it
    try:
        store = await SqlStore.connect(database_url(settings))
    except Exception:
        return None
    try:
        rec = await store.read_status(settings.instance)
    except Exception:
        return None
    finally:
        with contextlib.suppress(Exception):
            await store.close()
    if rec is None:
        return None
    return rec.payload, rec.heartbeat_at
