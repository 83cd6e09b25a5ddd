"""The ``campaignd`` command line (typer). Thin: parse, call, print.

Exit codes: 0 ok; 1 runtime failure or unhealthy; 2 bad input (a message names the field and the
fix, never a traceback). Every listing command has ``--json`` with stable keys; human output
uses rich tables.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import anyio
import typer
from rich.console import Console
from rich.table import Table

from campaignd import __version__
from campaignd.errors import BadInput, CampaigndError, NotFound

# Annotated: the cli_* modules that register commands on these apps import from this module and
# this one from them, and mypy may check them first (it then cannot infer these types).
app: typer.Typer = typer.Typer(
    name="campaignd", no_args_is_help=True, add_completion=False,
    help="campaignd: every campaign as thousands of micro-experiments.",
    pretty_exceptions_enable=False)
config_app: typer.Typer = typer.Typer(no_args_is_help=True, help="Inspect settings.")
db_app: typer.Typer = typer.Typer(no_args_is_help=True, help="Database schema.")
campaign_app: typer.Typer = typer.Typer(no_args_is_help=True,
                                        help="Campaign specs and stored campaigns.")
sandbox_app: typer.Typer = typer.Typer(no_args_is_help=True,
                                       help="The simulated Beeswax-compatible DSP.")
deadletter_app: typer.Typer = typer.Typer(
    no_args_is_help=True, help="Events the pipeline refused, with their raw payloads.")
app.add_typer(config_app, name="config")
app.add_typer(db_app, name="db")
app.add_typer(campaign_app, name="campaign")
app.add_typer(sandbox_app, name="sandbox")
app.add_typer(deadletter_app, name="deadletter")

# Piped output (scripts, CI logs) gets wide tables instead of rich's 80-column default.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 200)

ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", "-c", envvar="CAMPAIGND_CONFIG", help="Settings file (TOML).",
    show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output (stable keys).")]

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


def fail(message: str, code: int) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False, markup=True)
    raise typer.Exit(code)


def handle_errors(func: F) -> F:
    """Map our errors to exit codes: BadInput → 2, anything else of ours → 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except BadInput as exc:
            err.print(f"[bold red]error:[/] {_escape(str(exc))}", highlight=False)
            raise typer.Exit(2) from None
        except NotFound as exc:
            err.print(f"[bold red]error:[/] {_escape(str(exc))}", highlight=False)
            raise typer.Exit(2) from None
        except CampaigndError as exc:
            err.print(f"[bold red]error:[/] {_escape(str(exc))}", highlight=False)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def parse_id(value: str | int) -> int:
    """A database id given on the command line: ASCII digits only. (click's ``int`` takes what
    Python's ``int()`` takes: "1_0" is 10 and the full-width "１" is 1, so a typo could act on
    another action.)"""
    if isinstance(value, int):
        return value
    if not (value.isascii() and value.isdigit()) or len(value) > 18 or int(value) < 1:
        raise typer.BadParameter(f"{value!r} is not an id: give a whole number from 1 in "
                                 "ASCII digits 0-9 only, e.g. 42")
    return int(value)


def id_argument(help: str) -> Any:
    """A positional database id (``parse_id``): a malformed one exits 2 naming the argument."""
    return typer.Argument(help=help, parser=parse_id)


def _escape(text: str) -> str:
    from rich.markup import escape
    return escape(text)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def _settings(config: Path | None) -> Any:
    from campaignd.settings import load_settings
    return load_settings(config)


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"campaignd {__version__}")
        raise typer.Exit(0)


@app.callback()
def main_callback(
    version: Annotated[bool, typer.Option("--version", callback=version_callback,
                                          is_eager=True, help="Print the version.")] = False,
) -> None:
    """campaignd: a campaign-optimization daemon."""


# --- run / status ----------------------------------------------------------------------------


@app.command()
@handle_errors
def run(config: ConfigOpt = None,
        no_upgrade: Annotated[bool, typer.Option(
            "--no-upgrade", help="Do not upgrade the database schema at start.")] = False,
        ) -> None:
    """Run the daemon in the foreground until SIGTERM/SIGINT."""
    from campaignd.daemon import run_daemon
    from campaignd.settings import check_referenced_files
    from campaignd.stores.opening import prepare_directories
    settings = _settings(config)
    check_referenced_files(settings)  # before the database is touched
    prepare_directories(settings)
    if no_upgrade:
        settings.database.upgrade_on_start = False
    raise typer.Exit(run_daemon(settings))


@app.command()
@handle_errors
def status(config: ConfigOpt = None, json_out: JsonOpt = False,
           timeout: Annotated[float, typer.Option(help="Seconds to wait for the API.")] = 3.0,
           ) -> None:
    """Report the daemon's state; exit 0 only when it is running and healthy."""
    import math

    from campaignd.status import read_status
    # A timeout of 0, below 0 or nan gives up at once and reports a healthy daemon unreachable.
    if not (math.isfinite(timeout) and 0 < timeout <= 3600):
        raise BadInput("must be a number of seconds greater than 0 and at most 3600",
                       field="--timeout", value=timeout, fix="e.g. --timeout 3")
    settings = _settings(config)
    st = anyio.run(functools.partial(read_status, settings, timeout=timeout))
    if json_out:
        print_json(st)
    else:
        _print_status(st)
    raise typer.Exit(0 if st.get("state") == "running" and st.get("healthy") else 1)


def _print_status(st: dict[str, Any]) -> None:
    colour = {"running": "green", "unhealthy": "yellow", "stopped": "red"}.get(st["state"], "red")
    out.print(f"campaignd [bold {colour}]{st['state']}[/]"
              + (f"  pid {st['pid']}  up {st['uptime_s']:.0f} s  version {st['version']}"
                 if st.get("pid") else "")
              + (f"  (source: {st.get('source')})" if st.get("source") else ""))
    for p in st.get("problems", []):
        out.print(f"  [yellow]problem:[/] {_escape(p)}")
    # In sandbox mode the daemon lives in the market's sped-up time (its decisions, actions and
    # event counts) while its agents run on the wall clock (cadences in real seconds): say
    # which clock each time is on rather than print the two side by side unlabelled.
    market = (st.get("dsp") or {}).get("adapter") == "sandbox" and st.get("market_time")
    wall, mkt = (" (wall)", " (market)") if market else ("", "")
    if market:
        out.print(f"clocks: market time {market} (the sandbox's sped-up time: decisions, "
                  f"actions, events); wall time {st.get('heartbeat_at') or '—'} (agents' runs)")
    if st.get("campaigns"):
        t = Table("campaign", "cells", "active", "daily budget", "today (paced)",
                  "lifetime budget", "spend", title="Campaigns", title_justify="left")
        for c in st["campaigns"]:
            t.add_row(c["id"], str(c["cells_total"]), str(c["cells_active"]),
                      f"{c['daily_budget']} {c['currency']}",
                      f"{c.get('budget_today') or '—'} {c['currency']}",
                      f"{c['lifetime_budget']} {c['currency']}", f"{c['spend']} {c['currency']}")
        out.print(t)
    if st.get("agents"):
        t = Table("agent", "cadence", "runs", f"last run{wall}", "last duration", "last error",
                  f"next run{wall}", title="Agents", title_justify="left")
        for a in st["agents"]:
            dur = a.get("last_duration_s")
            # "last run" is when the last run started: one still running has no duration yet
            shown = ("running" if a.get("running")
                     else "—" if dur is None else f"{dur * 1000:.1f} ms")
            t.add_row(a["name"], f"{a['cadence_s']:g} s", str(a["runs"]),
                      a.get("last_run") or "—", shown, a.get("last_error") or "—",
                      a.get("next_run") or "—")
        out.print(t)
    ev = st.get("events")
    if ev:
        p99 = ev.get("lag_p99_s")
        out.print(f"events: {ev['ingested']} ingested, {ev['duplicates']} duplicates, "
                  f"{ev['dead_lettered']} dead-lettered, lag p99 "
                  + ("—" if p99 is None else f"{p99:.2f} s")
                  + (f", {ev['backlog']} uncommitted" if ev.get("backlog") else ""))
        rcv = ev.get("receiver")
        if rcv:
            out.print(f"  receiver {rcv['url']}: {rcv['accepted']} accepted since start, spool "
                      f"{rcv['spool_bytes'] / 1e6:.1f} MB in {rcv['spool_segments']} "
                      f"segment(s), next seq {rcv['spool_next_seq']}")
        if ev.get("dead_by_reason"):
            out.print("  dead-lettered: " + ", ".join(
                f"{r} {n}" for r, n in sorted(ev["dead_by_reason"].items())))
        if ev.get("outside_targeting"):
            out.print("  [yellow]delivered outside targeting:[/] " + ", ".join(
                f"{d} {n}" for d, n in sorted(ev["outside_targeting"].items())))
    dsp = st.get("dsp")
    if dsp:
        out.print(f"dsp: {dsp['adapter']} {'healthy' if dsp['healthy'] else 'UNHEALTHY'}"
                  f" ({dsp.get('line_items', 0)} line items) {_escape(str(dsp.get('detail')))}")
    dec = st.get("decision")
    if dec:
        line = f"decisions: mode {dec['mode']}, risk budget {dec['risk_budget']:g}"
        last = dec.get("last_cycle")
        if last:
            skipped = ", ".join(f"{k} {v}" for k, v in sorted(last.get("skipped", {}).items()))
            line += (f"; last cycle{mkt} {last['at']}: {last['actions']} actions"
                     + (f" (skipped: {skipped})" if skipped else ""))
        ex = dec.get("executor")
        if ex:
            line += f"; applied {ex['applied']}, failed {ex['failed']}, refused {ex['refused']}"
            if ex.get("expired"):
                line += f" ({ex['expired']} expired)"
        out.print(line)


# --- config ----------------------------------------------------------------------------------


@config_app.command("check")
@handle_errors
def config_check(config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """Validate the settings and the files they name (campaign specs, the sandbox's scenario),
    and print the settings resolved (secrets masked)."""
    from campaignd.settings import check_referenced_files
    settings = _settings(config)
    check_referenced_files(settings)
    _check_referenced_contents(settings)
    data = settings.masked()
    if json_out:
        print_json({"ok": True, "config_file": str(settings.config_file or ""), "settings": data})
        return
    out.print(f"[green]ok[/]: {settings.config_file or '(no file: defaults and environment)'}")
    t = Table("setting", "value", title="Resolved settings", title_justify="left")
    for key, value in _flatten(data):
        t.add_row(key, _escape(json.dumps(value) if not isinstance(value, str) else value))
    out.print(t)


def _check_referenced_contents(settings: Any) -> None:
    """Every campaign spec and the sandbox's scenario parse and validate (the daemon itself
    starts with a bad spec and reports it; ``config check`` is where to catch it first). Raises
    ``ConfigError`` listing every problem, each under the setting that names the file."""
    from campaignd.domain.campaign import load_spec
    from campaignd.dsp.sandbox.scenarios import load_scenario
    from campaignd.errors import BadInput, ConfigError
    checks: list[tuple[str, Any, Any]] = [(f"campaigns[{i}]", p, load_spec)
                                          for i, p in enumerate(settings.campaigns)]
    if settings.dsp.adapter == "sandbox":
        checks.append(("dsp.sandbox.scenario", settings.dsp.sandbox.scenario, load_scenario))
    problems = []
    for key, path, load in checks:
        try:
            load(path)
        except BadInput as exc:
            text = str(exc).replace("\n", "\n    ")
            problems.append(f"{key} ({path}): {text}")
    if problems:
        raise ConfigError(f"{len(problems)} invalid file(s):\n  - " + "\n  - ".join(problems),
                          field=str(settings.config_file or "settings"))


def _flatten(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            rows.extend(_flatten(v, key + "."))
        else:
            rows.append((key, v))
    return rows


# --- db --------------------------------------------------------------------------------------


@db_app.command("upgrade")
@handle_errors
def db_upgrade(config: ConfigOpt = None) -> None:
    """Upgrade the database schema to the newest revision."""
    from campaignd.errors import StorageError
    from campaignd.stores.opening import database_url, masked_database_url
    from campaignd.stores.sql.migrate import upgrade
    settings = _settings(config)
    try:
        rev = anyio.run(upgrade, database_url(settings))
    except Exception as exc:
        raise StorageError(f"cannot upgrade {masked_database_url(settings)}: {exc}") from None
    out.print(f"database {masked_database_url(settings)} at revision {rev}")


# --- campaigns -------------------------------------------------------------------------------


@campaign_app.command("plan")
@handle_errors
def campaign_plan(spec: Annotated[Path, typer.Argument(help="Campaign spec (TOML).")],
                  json_out: JsonOpt = False,
                  cells: Annotated[bool, typer.Option("--cells", help="List every cell.")] = False,
                  ) -> None:
    """Validate a spec and show its cells (nothing is stored)."""
    from campaignd.domain.campaign import atomize, cell_dict, load_spec, spec_summary
    s = load_spec(spec)
    cell_list = atomize(s)
    summary = spec_summary(s, cell_list)
    if json_out:
        if cells:
            summary["cell_list"] = [cell_dict(c) for c in cell_list]
        print_json(summary)
        return
    dims = " × ".join(f"{n} {d}" for d, n in summary["dimensions"].items())
    out.print(f"[bold]{s.id}[/] ({_escape(s.name)}): {dims}"
              + (f" − {len(s.exclusions)} exclusion rule(s)" if s.exclusions else "")
              + f" = [bold]{len(cell_list)}[/] cells")
    out.print(f"budget {s.lifetime_budget} {s.currency} lifetime, {s.daily_budget} "
              f"{s.currency} daily; flight {s.flight_start.isoformat()} → "
              f"{s.flight_end.isoformat()}; objective {s.objective}")
    if cells:
        t = Table("#", "cell id", "audience", "creative", "bid strategy", "daypart", "platform")
        for c in cell_list:
            t.add_row(str(c.index), c.cell_id, c.audience, c.creative, c.bid_strategy,
                      c.daypart, c.platform)
        out.print(t)


@campaign_app.command("add")
@handle_errors
def campaign_add(spec: Annotated[Path, typer.Argument(help="Campaign spec (TOML).")],
                 config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """Store a campaign and its cells in the database (idempotent)."""
    from campaignd.domain.campaign import atomize, load_spec
    s = load_spec(spec)
    cell_list = atomize(s)
    result = with_store(config, lambda store: store.upsert_campaign(s, cell_list))
    data = {"campaign_id": s.id, "cells": len(cell_list), "created": result.created,
            "cells_added": result.cells_added, "cells_unchanged": result.cells_unchanged,
            "cells_removed": result.cells_removed}
    if json_out:
        print_json(data)
    else:
        verb = "created" if result.created else "updated"
        out.print(f"campaign {s.id} {verb}: {len(cell_list)} cells "
                  f"({result.cells_added} added, {result.cells_unchanged} unchanged, "
                  f"{result.cells_removed} removed)")


def with_store(config: Path | None, work: Callable[[Any], Awaitable[T]]) -> T:
    """Load the settings, open (and upgrade) the database, run ``work(store)``, close it."""
    settings = _settings(config)

    async def go() -> T:
        from campaignd.stores.opening import open_sql
        store = await open_sql(settings)
        try:
            return await work(store)
        finally:
            await store.close()

    return anyio.run(go)


def _campaign_row(c: Any) -> dict[str, Any]:
    from campaignd.domain.campaign import from_micros
    return {
        "id": c.id, "name": c.name, "currency": c.currency, "objective": c.objective,
        "status": c.status, "cells_total": c.cells_total, "cells_active": c.cells_active,
        "lifetime_budget": str(from_micros(c.lifetime_budget_micros)),
        "daily_budget": str(from_micros(c.daily_budget_micros)),
        "spend": str(from_micros(c.spend_micros)),
        "flight_start": c.flight_start.isoformat(), "flight_end": c.flight_end.isoformat(),
    }


@campaign_app.command("list")
@handle_errors
def campaign_list(config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """List stored campaigns."""
    rows = [_campaign_row(c) for c in with_store(config, lambda store: store.list_campaigns())]
    if json_out:
        print_json({"campaigns": rows})
        return
    t = Table("id", "name", "status", "cells", "active", "daily budget", "lifetime budget",
              "spend", "flight")
    for r in rows:
        t.add_row(r["id"], _escape(r["name"]), r["status"], str(r["cells_total"]),
                  str(r["cells_active"]), f"{r['daily_budget']} {r['currency']}",
                  f"{r['lifetime_budget']} {r['currency']}", f"{r['spend']} {r['currency']}",
                  f"{r['flight_start'][:10]} → {r['flight_end'][:10]}")
    out.print(t)


@campaign_app.command("show")
@handle_errors
def campaign_show(campaign_id: Annotated[str, typer.Argument(help="Campaign id.")],
                  config: ConfigOpt = None, json_out: JsonOpt = False,
                  cells: Annotated[bool, typer.Option("--cells", help="List every cell.")] = False,
                  ) -> None:
    """Show one stored campaign."""
    async def read(store: Any) -> Any:
        detail = await store.get_campaign(campaign_id)
        cell_rows = await store.list_cells(campaign_id) if (detail and cells) else []
        return detail, cell_rows

    detail, cell_rows = with_store(config, read)
    if detail is None:
        raise NotFound(f"campaign_id: no stored campaign {campaign_id!r}; "
                       "list them with `campaignd campaign list`")
    data = {**_campaign_row(detail), "cells_by_status": dict(detail.cells_by_status),
            "spec": detail.spec}
    if cells:
        data["cell_list"] = [_cell_row(c) for c in cell_rows]
    if json_out:
        print_json(data)
        return
    out.print(f"[bold]{data['id']}[/] {_escape(data['name'])} ({data['status']}), objective "
              f"{data['objective']}")
    out.print(f"budget {data['lifetime_budget']} {data['currency']} lifetime, "
              f"{data['daily_budget']} daily; spend {data['spend']}; flight "
              f"{data['flight_start']} → {data['flight_end']}")
    out.print("cells: " + ", ".join(f"{k} {v}" for k, v in data["cells_by_status"].items()))
    if cells:
        t = Table("cell id", "audience", "creative", "bid", "daypart", "platform", "status",
                  "line item", "budget", "daily")
        for c in data["cell_list"]:
            t.add_row(c["cell_id"], c["audience"], c["creative"], c["bid_strategy"],
                      c["daypart"], c["platform"], c["status"], str(c["dsp_line_item_id"] or "—"),
                      c["budget"] or "—", c["daily_budget"] or "—")
        out.print(t)


def _cell_row(c: Any) -> dict[str, Any]:
    from campaignd.domain.campaign import from_micros
    return {"cell_id": c.cell_id, "index": c.index, "audience": c.audience,
            "creative": c.creative, "bid_strategy": c.bid_strategy, "daypart": c.daypart,
            "platform": c.platform, "status": c.status, "dsp_line_item_id": c.dsp_line_item_id,
            "budget": None if c.budget_micros is None else str(from_micros(c.budget_micros)),
            "daily_budget": (None if c.daily_budget_micros is None
                             else str(from_micros(c.daily_budget_micros)))}


def limit_math_threads() -> None:
    """One BLAS/OpenMP thread unless the operator says otherwise: campaignd's matrices are small
    and it shares its host, so numpy's default of one thread per core only oversubscribes the
    CPU (measured: a 7-day simulation took 295 s instead of 17 s on a loaded 2-core host).
    Must run before numpy is imported (this module does it when it loads)."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")


# Before the command modules below load numpy (which reads the thread settings once, then).
limit_math_threads()

# The simulated market's commands (sandbox serve, simulate), the audit log and approval queue
# (actions) and the event-pipeline commands (dead letters, replay, export) live in their own
# modules and register their commands on import. Keep cli_sandbox first: `campaignd --help` lists
# the commands in the order they are registered (run, status, simulate, replay, export).
# sandbox_serve, simulate and parse_options lived here: still importable from campaignd.cli.
from campaignd.cli_sandbox import parse_options, sandbox_serve, simulate  # noqa: E402,F401

# isort: split
from campaignd import cli_actions, cli_events  # noqa: E402,F401  (register their commands on import)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
