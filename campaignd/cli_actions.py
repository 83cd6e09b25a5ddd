"""``campaignd actions list|show|approve|reject|undo``: the audit log and the approval queue.

``list`` and ``show`` read the SQL store directly. ``approve``, ``reject`` and ``undo`` go
through the running daemon's control API when one answers at ``http.port`` (with the token of
``http.api_token`` or the state directory's ``api-token``): the daemon stamps them with its
own clock -- in sandbox mode the market's sped-up time, which its decisions, its manual holds
(``decision.manual_hold_s``) and the rest of the audit log use -- and wakes its executor at
once. With no daemon answering they write the SQL store directly, stamped with this machine's
clock (a daemon starting later, even a sandbox one, starts its clock from it), and the next
daemon applies them. Status changes are guarded in SQL, so a person and the daemon can never
apply one change twice, and a verdict or undo asked twice changes nothing more.
"""

from __future__ import annotations

import getpass
import os
from datetime import UTC, datetime
from typing import Annotated, Any

import anyio
import typer
from rich.table import Table

from campaignd.cli import (
    ConfigOpt,
    JsonOpt,
    _escape,
    app,
    handle_errors,
    id_argument,
    out,
    print_json,
    with_store,
)
from campaignd.domain.actions import ACTION_STATUSES, MAX_NOTE_CHARS
from campaignd.domain.campaign import from_micros
from campaignd.errors import BadInput, NotFound

actions_app = typer.Typer(no_args_is_help=True,
                          help="What campaignd decided and did: the audit log, the approval "
                               "queue, undo.")
app.add_typer(actions_app, name="actions")

ActorOpt = Annotated[str | None, typer.Option(
    "--actor", help="Who decides (recorded in the audit log; default: the login name).",
    show_default=False)]


def _actor(actor: str | None) -> str:
    if actor is not None:
        if not actor.strip():
            raise BadInput("must not be empty", field="--actor", fix="give a name, e.g. alice")
        return actor.strip()[:128]
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = str(os.getuid())
    return f"cli:{name}"


def _archived(config: Any) -> list[Any]:
    """Every archived action (``campaignd.pipeline.archive``), oldest first, as ``ActionRow``."""
    from campaignd.cli import _settings
    from campaignd.pipeline.archive import read_archive
    from campaignd.stores.sql.actions import action_row

    table = read_archive(_settings(config).parquet_dir, "actions")
    return [action_row(r) for r in table.to_pylist()]


def _change(row: Any) -> str:
    a = row.action
    return _describe_change(a.kind, a.before, a.after)


def _money(micros: Any) -> str:
    return "none" if micros is None else str(from_micros(int(micros)))


def _describe_change(kind: str, b: dict[str, Any], f: dict[str, Any]) -> str:
    if kind == "campaign_budget":
        return (f"campaign daily {_money(b.get('daily_budget_micros'))} → "
                f"{_money(f.get('daily_budget_micros'))}, lifetime "
                f"{_money(b.get('lifetime_budget_micros'))} → "
                f"{_money(f.get('lifetime_budget_micros'))}")
    if kind == "create":
        return (f"line item {f.get('line_item_id')} created or found (daily "
                f"{_money(f.get('daily_budget_micros'))}, lifetime "
                f"{_money(f.get('lifetime_budget_micros'))})")
    if kind == "budget":
        return (f"daily {from_micros(b['daily_budget_micros'])} → "
                f"{from_micros(f['daily_budget_micros'])}, lifetime "
                f"{from_micros(b['lifetime_budget_micros'])} → "
                f"{from_micros(f['lifetime_budget_micros'])}")
    return f"active {b.get('active')} → {f.get('active')}"


@actions_app.command("list")
@handle_errors
def actions_list(
    config: ConfigOpt = None, json_out: JsonOpt = False,
    status: Annotated[str | None, typer.Option(
        help="Only this status: proposed, pending, applying, applied, failed, refused, "
             "rejected, superseded, shadow.")] = None,
    campaign: Annotated[str | None, typer.Option(help="Only this campaign.")] = None,
    cell: Annotated[str | None, typer.Option(help="Only this cell.")] = None,
    decision: Annotated[str | None, typer.Option(help="Only this decision id.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="At most this many.")] = 50,
    archived: Annotated[bool, typer.Option(
        "--archived", help="List the audit archive (actions moved out of SQL after "
                           "decision.audit_retention_days) instead.")] = False,
) -> None:
    """Actions, newest first, with the counts by status."""
    if archived:
        if status is not None and status not in ACTION_STATUSES:
            raise BadInput("is not an action status", field="--status", value=status,
                           fix=f"use one of {', '.join(ACTION_STATUSES)}")
        rows = [r for r in reversed(_archived(config)) if
                all(v is None or v == got for v, got in (
                    (status, r.status), (campaign, r.action.campaign_id),
                    (cell, r.action.cell_id), (decision, r.action.decision_id)))]
        counts = dict.fromkeys(ACTION_STATUSES, 0)
        for r in rows:
            counts[r.status] += 1
        rows = rows[:limit]
    else:
        from campaignd.cli import _settings
        instance = _settings(config).instance

        async def read(store: Any) -> Any:
            rows = await store.list_actions(status=status, campaign_id=campaign, cell_id=cell,
                                            decision_id=decision, limit=limit)
            counts = await store.count_actions()
            record = await store.read_status(instance)
            return rows, counts, record

        rows, counts, record = with_store(config, read)
        queue_note = (None if record is None else
                      _empty_queue_note(record.payload, counts, status,
                                        heartbeat_at=record.heartbeat_at))
    if json_out:
        print_json({"counts": counts, "actions": [r.as_dict() for r in rows],
                    **({"archived": True} if archived else {}),
                    **({"queue_note": queue_note} if not archived and queue_note else {})})
        return
    out.print("by status: " + (", ".join(f"{s} {n}" for s, n in counts.items() if n)
                               or "none"))
    if not archived and queue_note:
        out.print(_escape(queue_note))
    t = Table("id", "status", "mode", "agent", "campaign", "cell", "line item", "change",
              "risk", "created")
    # the id `actions approve|reject --decision` takes: whole, never wrapped
    t.add_column("decision", no_wrap=True)
    for r in rows:
        a = r.action
        t.add_row(str(r.id), r.status, r.mode, a.agent, _escape(a.campaign_id), a.cell_id,
                  str(a.line_item_id or "—"), _change(r), f"{a.risk:.3f}",
                  a.created_at.isoformat(timespec="seconds"), _escape(a.decision_id))
    out.print(t)


def _empty_queue_note(daemon: dict[str, Any] | None, counts: dict[str, int],
                      status: str | None, *, heartbeat_at: datetime | None = None,
                      now: datetime | None = None) -> str | None:
    """Why nothing waits for approval, when the daemon (per its last published status) runs in
    approve mode and no action is ``proposed``: what its decision engine skipped since it
    started. Early in a campaign the engine refuses most re-plans (the posterior cannot back
    them yet), so an empty queue is the engine saying no, not a daemon doing nothing. A
    stopped daemon (its status says so, or its heartbeat is older than ``STATUS_STALE_S``)
    proposes nothing at all, and the note says that instead."""
    from campaignd.status import STATUS_STALE_S

    dec = (daemon or {}).get("decision") or {}
    if dec.get("mode") != "approve" or counts.get("proposed", 0) or status not in (
            None, "proposed"):
        return None
    now = now or datetime.now(UTC)
    if (daemon or {}).get("state") == "stopped" or (
            heartbeat_at is not None
            and (now - heartbeat_at).total_seconds() > STATUS_STALE_S):
        seen = heartbeat_at.isoformat(timespec="seconds") if heartbeat_at else "unknown"
        return ("nothing is waiting for approval, and the daemon is not running (last "
                f"heartbeat {seen}): nothing will be proposed until it runs again")
    skipped = dec.get("skipped_since_start") or {}
    why = ", ".join(f"{k} {v}" for k, v in sorted(skipped.items(), key=lambda kv: -kv[1]))
    last = dec.get("last_cycle") or {}
    return ("nothing is waiting for approval: the daemon runs in approve mode; in its "
            f"{dec.get('cycles', 0)} decision cycle(s) since start its engine "
            + (f"last proposed at {dec['last_recorded_at']}" if dec.get("last_recorded_at")
               else "has proposed nothing yet")
            + (f"; skipped since start: {why}" if why else "")
            + (f"; last cycle at {last['at']}" if last.get("at") else "")
            + ". Re-plans the posterior cannot back yet (risk above decision.risk_budget, or "
              "no expected gain) are refused, not queued; `campaignd status` shows more.")


@actions_app.command("show")
@handle_errors
def actions_show(action_id: Annotated[int, id_argument("Action id.")],
                 config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """One action with its reason, evidence, before and after (from the audit archive when it
    has left SQL)."""
    row = with_store(config, lambda store: store.get_action(action_id))
    archived = False
    if row is None:
        row = next((r for r in _archived(config) if r.id == action_id), None)
        archived = row is not None
    if row is None:
        raise NotFound(f"ID: no action {action_id}; list them with `campaignd actions list` "
                       "(or `--archived`)")
    data = row.as_dict()
    if archived:
        data["archived"] = True
    if json_out:
        print_json(data)
        return
    out.print(f"[bold]action {row.id}[/] ({row.status}, {row.mode}"
              f"{', archived' if archived else ''}) — {_escape(_change(row))}")
    for k in ("reason", "agent", "actor", "campaign_id", "cell_id", "line_item_id",
              "decision_id", "score", "impact", "risk", "priority", "attempts", "error",
              "created_at", "decided_at", "applied_at", "undo_of", "before", "after",
              "result", "evidence"):
        out.print(f"[bold]{k}[/]: {_escape(str(data.get(k)))}")


API_TIMEOUT_S = 30.0
"""How long a verdict or an undo waits for the running daemon's answer."""


def _api_token(settings: Any) -> str | None:
    """The running daemon's bearer token as the CLI on its host can read it: the configured
    one, else the one the daemon keeps in its state directory (``campaignd.daemon``)."""
    if settings.http.api_token is not None:
        return str(settings.http.api_token.get_secret_value())
    try:
        return (settings.state_dir / "api-token").read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def _through_daemon(config: Any, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
    """POST a change to the running daemon's control API and return the action as it answers
    it; ``None`` when no daemon answers (the caller writes the SQL store itself). The API's
    refusals become ours (exit 2: unknown action, not proposed or not applied, bad input)."""
    import httpx

    from campaignd.cli import _settings, err
    from campaignd.errors import CampaigndError, StateConflict

    settings = _settings(config)
    token = _api_token(settings)
    with httpx.Client(timeout=API_TIMEOUT_S, trust_env=False) as client:
        try:
            status = client.get(settings.control_url + "/api/v1/status", timeout=10.0)
        except (httpx.ConnectError, httpx.ConnectTimeout):
            return None  # no daemon: the change is the store's alone
        except httpx.TransportError as exc:
            raise CampaigndError(
                f"the daemon at {settings.control_url} did not answer its status "
                f"({type(exc).__name__}): nothing was sent; retry shortly, see "
                "`campaignd status`") from None
        _same_database(status, settings)
        try:
            resp = client.post(settings.control_url + path, json=body,
                               headers={"Authorization": f"Bearer {token}"} if token else {})
        except (httpx.ConnectError, httpx.ConnectTimeout):
            return None  # it went away: the change is the store's alone
        except httpx.TransportError as exc:
            # it may have been made: asking the store now could stamp it twice, or misreport
            raise CampaigndError(
                f"the daemon at {settings.control_url} did not answer ({type(exc).__name__}): "
                "the change may or may not have been made; see `campaignd actions show ID` and "
                "`campaignd status`, then ask again if needed (an approval or undo asked twice "
                "changes nothing more)") from None
    try:
        data = resp.json()
    except ValueError:
        data = {}
    if not isinstance(data, dict):
        data = {}
    if resp.status_code in (200, 202):
        return data
    message = str(data.get("error") or f"{settings.control_url} answered HTTP "
                  f"{resp.status_code} without a campaignd error (is it campaignd's control "
                  "API? see http.port)")
    if resp.status_code in (401, 403):
        if settings.dsp.adapter == "sandbox":
            # the daemon lives in the market's time: stamping the change with this machine's
            # clock would misplace it (a manual hold ending early, an audit log out of order)
            raise BadInput(f"the daemon at {settings.control_url} refused the CLI ({message})",
                           field="http.api_token",
                           fix="run the CLI with the daemon's settings file, as a user who can "
                               "read its state directory's api-token, or set http.api_token")
        err.print(f"note: the daemon at {settings.control_url} refused the CLI's token "
                  f"({_escape(message)}); writing to the database directly (the daemon picks "
                  "it up within decision.executor_poll_s)", highlight=False)
        return None
    if resp.status_code == 404:
        raise NotFound(message)
    if resp.status_code == 409:
        raise StateConflict(message)
    if 400 <= resp.status_code < 500:
        raise BadInput(message)
    raise CampaigndError(f"the daemon's control API answered HTTP {resp.status_code}: "
                         f"{message}; retry shortly, see `campaignd status`")


def _same_database(status: Any, settings: Any) -> None:
    """Refuse to send a change to a daemon that uses another database than this config's
    (another campaignd on the same port: its action 5 is not this database's). Compared by the
    database's identity (``SqlStore.database_id``), not its URL: a relative SQLite path names
    another file from another directory, and one database has several spellings. A daemon that
    does not publish it is trusted (an older version). This config's database is only read
    (connected to, never created or migrated)."""
    from pathlib import Path

    from sqlalchemy.engine import make_url

    from campaignd.errors import StorageError
    from campaignd.stores.opening import database_url, masked_database_url
    from campaignd.stores.sql.repository import SqlStore

    try:
        data = status.json() if status.status_code == 200 else {}
    except ValueError:
        data = {}
    theirs = data.get("database_id") if isinstance(data, dict) else None
    if not isinstance(theirs, str):
        return
    url = make_url(database_url(settings))
    shown = masked_database_url(settings)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        path = Path(url.database).resolve()
        shown = str(path)
        if not path.exists():
            raise BadInput(f"the daemon at {settings.control_url} uses the database "
                           f"{data.get('database')}, and this config's, {path}, does not "
                           "exist: it is another campaignd, and nothing was sent to it",
                           field="database.url",
                           fix="run the CLI with that daemon's settings file (--config FILE or "
                               "CAMPAIGND_CONFIG) from its directory, or set http.port to the "
                               "port of the daemon that uses this database")

    async def ours() -> str:
        store = await SqlStore.connect(str(url.render_as_string(hide_password=False)))
        try:
            return await store.database_id()
        finally:
            await store.close()

    try:
        mine = anyio.run(ours)
    except StorageError as exc:
        raise StorageError(f"could not tell which database the daemon at "
                           f"{settings.control_url} uses against this config's ({shown}): "
                           f"{exc}; nothing was sent") from None
    if mine != theirs:
        raise BadInput(f"the daemon at {settings.control_url} uses another database "
                       f"({data.get('database')}) than this config's ({shown}): it is "
                       "another campaignd, and nothing was sent to it", field="database.url",
                       fix="run the CLI with that daemon's settings file (--config FILE or "
                           "CAMPAIGND_CONFIG), or set http.port to the port of the daemon "
                           "that uses this database")


def _check_note(note: str | None) -> None:
    if note is not None and len(note) > MAX_NOTE_CHARS:
        raise BadInput(f"is {len(note)} characters long, more than the {MAX_NOTE_CHARS} "
                       "allowed", field="--note",
                       fix=f"shorten the note to at most {MAX_NOTE_CHARS} characters (link to "
                           "a longer write-up if needed)")


def _verdict(action_id: int, approve: bool, actor: str | None, note: str | None,
             config: Any, json_out: bool) -> None:
    who = _actor(actor)
    _check_note(note)
    verb = "approve" if approve else "reject"
    data = _through_daemon(config, f"/api/v1/actions/{action_id}/{verb}",
                           {"actor": who, **({"note": note} if note is not None else {})})
    if data is None:
        async def go(store: Any) -> Any:
            return await store.decide_action(action_id, approve=approve, actor=who,
                                             now=datetime.now(UTC), note=note)

        data = with_store(config, go).as_dict()
    if json_out:
        print_json(data)
        return
    out.print(f"action {data['id']}: {data['status']} by {_escape(who)}"
              + (" — the running daemon applies it within seconds" if approve else ""))


DecisionOpt = Annotated[str | None, typer.Option(
    "--decision", help="Instead of one action: every proposed action of this decision (a "
                       "campaign's re-plan, its cuts with the raises they pay for), as `actions "
                       "list` shows it.")]


def _decision_verdict(decision_id: str, approve: bool, actor: str | None, note: str | None,
                      config: Any, json_out: bool) -> None:
    from campaignd.web.app import DECISION_ID

    who = _actor(actor)
    if not DECISION_ID.fullmatch(decision_id):
        raise BadInput("is not a decision id", field="--decision", value=decision_id[:80],
                       fix="use a decision id from `campaignd actions list --status proposed`")
    _check_note(note)
    verb = "approve" if approve else "reject"
    data = _through_daemon(config, f"/api/v1/decisions/{decision_id}/{verb}",
                           {"actor": who, **({"note": note} if note is not None else {})})
    if data is None:
        async def go(store: Any) -> Any:
            return await store.decide_decision(decision_id, approve=approve, actor=who,
                                               now=datetime.now(UTC), note=note)

        rows = with_store(config, go)
        data = {"decision": decision_id, "status": "pending" if approve else "rejected",
                "actions": [r.as_dict() for r in rows]}
    if json_out:
        print_json(data)
        return
    ids = ", ".join(str(a["id"]) for a in data.get("actions", []))
    out.print(f"decision {_escape(decision_id)}: {len(data.get('actions', []))} action(s) "
              f"{'approved' if approve else 'rejected'} by {_escape(who)} ({ids})"
              + (" — the running daemon applies them within seconds" if approve else ""))


def _one_of(action_id: int | None, decision: str | None) -> None:
    if (action_id is None) == (decision is None):
        raise BadInput("give an action id or --decision (one of them)", field="ID",
                       fix="e.g. `campaignd actions approve 42` or `campaignd actions approve "
                           "--decision 0922ac98d1…` (see `campaignd actions list --status "
                           "proposed`)")


@actions_app.command("approve")
@handle_errors
def actions_approve(action_id: Annotated[int | None, id_argument("A proposed action's id.")] = None,
                    config: ConfigOpt = None, json_out: JsonOpt = False,
                    actor: ActorOpt = None, decision: DecisionOpt = None) -> None:
    """Approve a proposed action, or a whole decision with --decision (decision.mode =
    "approve"): the executor applies it."""
    _one_of(action_id, decision)
    if decision is not None:
        _decision_verdict(decision, True, actor, None, config, json_out)
    else:
        assert action_id is not None
        _verdict(action_id, True, actor, None, config, json_out)


@actions_app.command("reject")
@handle_errors
def actions_reject(action_id: Annotated[int | None, id_argument("A proposed action's id.")] = None,
                   config: ConfigOpt = None, json_out: JsonOpt = False, actor: ActorOpt = None,
                   note: Annotated[str | None, typer.Option(help="Why (recorded).")] = None,
                   decision: DecisionOpt = None) -> None:
    """Reject a proposed action, or a whole decision with --decision: never applied."""
    _one_of(action_id, decision)
    if decision is not None:
        _decision_verdict(decision, False, actor, note, config, json_out)
    else:
        assert action_id is not None
        _verdict(action_id, False, actor, note, config, json_out)


@actions_app.command("undo")
@handle_errors
def actions_undo(action_id: Annotated[int, id_argument("An applied action's id.")],
                 config: ConfigOpt = None, json_out: JsonOpt = False,
                 actor: ActorOpt = None) -> None:
    """Queue the reverse of an applied action (the line item's state before it).

    The executor applies it with the same cap checks; it is refused if the line item has
    changed since (undo the newer action first)."""
    who = _actor(actor)
    data = _through_daemon(config, f"/api/v1/actions/{action_id}/undo", {"actor": who})
    if data is None:
        async def go(store: Any) -> Any:
            return await store.undo_action(action_id, actor=who, now=datetime.now(UTC))

        data = with_store(config, go).as_dict()
    if json_out:
        print_json(data)
        return
    change = _describe_change(data["kind"], data["before"], data["after"])
    if data.get("repeat"):
        out.print(f"action {action_id} was already undone: action {data['id']} "
                  f"({_escape(change)}) — {data['status']}; nothing new was queued")
        return
    out.print(f"action {data['id']} queued: undo of action {action_id} ({_escape(change)}) "
              f"— {data['status']}")
