"""The event-pipeline commands of the ``campaignd`` CLI: dead letters, replay, export.

Registered on ``campaignd.cli``'s apps when that module is imported; same conventions (exit codes
0/1/2, ``--json`` with stable keys, rich tables).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import anyio
import typer
from rich.table import Table

from campaignd.cli import (
    ConfigOpt,
    JsonOpt,
    _escape,
    _settings,
    app,
    deadletter_app,
    err,
    handle_errors,
    id_argument,
    out,
    parse_id,
    print_json,
    with_store,
)
from campaignd.errors import BadInput, CampaigndError, NotFound

# --- dead letters ----------------------------------------------------------------------------


def _letter_row(le: Any, *, raw: bool) -> dict[str, Any]:
    row = {"id": le.id, "reason": le.reason, "source": le.source, "count": le.count,
           "first_seen": le.first_seen.isoformat(), "last_seen": le.last_seen.isoformat(),
           "size": len(le.raw)}
    if raw:
        row["raw"] = le.raw.decode("utf-8", "replace")
    return row


@deadletter_app.command("list")
@handle_errors
def deadletter_list(config: ConfigOpt = None, json_out: JsonOpt = False,
                    reason: Annotated[str | None, typer.Option(help="Only this reason.")] = None,
                    limit: Annotated[int, typer.Option(min=1, max=10_000,
                                                       help="At most this many.")] = 100,
                    ) -> None:
    """Refused events, newest first, with the counts by reason."""
    from campaignd.pipeline.validate import REASONS
    if reason is not None and reason not in REASONS:  # (a typo listed nothing, exit 0)
        raise BadInput("is not a dead-letter reason", field="--reason", value=reason,
                       fix=f"use one of {', '.join(REASONS)}")

    async def read(store: Any) -> Any:
        return (await store.list_dead_letters(reason=reason, limit=limit),
                await store.dead_letter_counts())

    letters, counts = with_store(config, read)
    if json_out:
        print_json({"counts": counts, "dead_letters": [_letter_row(le, raw=False)
                                                       for le in letters]})
        return
    out.print("by reason: " + (", ".join(f"{r} {n}" for r, n in sorted(counts.items()))
                               or "none"))
    t = Table("id", "reason", "count", "last seen", "source", "payload")
    for le in letters:
        preview = le.raw[:60].decode("utf-8", "replace")
        t.add_row(str(le.id), le.reason, str(le.count), le.last_seen.isoformat(),
                  _escape(le.source), _escape(preview + ("…" if len(le.raw) > 60 else "")))
    out.print(t)


@deadletter_app.command("show")
@handle_errors
def deadletter_show(letter_id: Annotated[int, id_argument("Dead letter id.")],
                    config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """One refused event with its whole raw payload."""
    le = with_store(config, lambda store: store.get_dead_letter(letter_id))
    if le is None:
        raise NotFound(f"ID: no dead letter {letter_id}; list them with "
                       "`campaignd deadletter list`")
    row = _letter_row(le, raw=True)
    if json_out:
        print_json(row)
        return
    for k, v in row.items():
        out.print(f"[bold]{k}[/]: {_escape(str(v))}")


@deadletter_app.command("retry")
@handle_errors
def deadletter_retry(
    letter_ids: Annotated[list[int] | None, typer.Argument(
        help="Dead letter ids (default: those chosen by --reason or --all).", parser=parse_id,
        show_default=False)] = None,
    config: ConfigOpt = None, json_out: JsonOpt = False,
    reason: Annotated[str | None, typer.Option(help="Every letter with this reason.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every dead letter.")] = False,
) -> None:
    """Run refused events through the pipeline again.

    E.g. once their line item is known. Accepted ones leave the dead letter; the rest stay,
    under their current reason. The daemon must be stopped.
    """
    from campaignd.pipeline.offline import OfflineIngest
    from campaignd.pipeline.validate import REASONS
    if not letter_ids and reason is None and not all_:
        raise BadInput("nothing chosen", field="ID", fix="give dead letter ids, --reason R or "
                                                          "--all (see `campaignd deadletter list`)")
    if reason is not None and reason not in REASONS:
        raise BadInput("is not a dead-letter reason", field="--reason", value=reason,
                       fix=f"use one of {', '.join(REASONS)}")
    settings = _settings(config)

    async def go() -> dict[str, Any]:
        async with OfflineIngest(settings) as off:
            if letter_ids:
                letters = [le for le in [await off.sql.get_dead_letter(i) for i in letter_ids]
                           if le is not None]
                missing = sorted(set(letter_ids) - {le.id for le in letters})
                if missing:
                    raise NotFound(f"ID: no dead letter {missing[0]}; list them with "
                                   "`campaignd deadletter list`")
            else:
                letters = await off.sql.list_dead_letters(reason=reason, limit=1_000_000)
            return await off.retry(letters)

    result = anyio.run(go)
    if json_out:
        print_json(result)
        return
    out.print(f"retried {result['retried']}: {result['ingested']} counted, "
              f"{result['duplicates']} already counted, {result['resolved']} resolved; still "
              "refused: " + (", ".join(f"{r} {n}" for r, n in result["still_refused"].items())
                             or "none"))
    if result["marked_but_maybe_not_counted"]:
        out.print(f"{result['marked_but_maybe_not_counted']} internal_error letter(s) kept: the "
                  "pipeline failed on them after marking them seen, so whether they were counted "
                  "cannot be told; compare `campaignd deadletter show ID` with the cell's counts")


# --- replay and export -----------------------------------------------------------------------


@app.command()
@handle_errors
def replay(
    files: Annotated[list[Path], typer.Argument(
        help="JSON-lines files of Beeswax streaming messages (optionally gzipped).")],
    config: ConfigOpt = None, json_out: JsonOpt = False,
) -> None:
    """Ingest recorded exhaust (backfills, backtests) through the pipeline.

    Exactly once: a file replayed again, or resumed after an interruption, adds nothing twice.
    The daemon must be stopped.
    """
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    from campaignd.pipeline.offline import OfflineIngest, summary_json
    settings = _settings(config)
    for f in files:
        if not f.is_file():
            raise BadInput("is not a readable file", field="FILE", value=str(f),
                           fix="give JSON-lines files in Beeswax's streaming format")

    async def go() -> dict[str, Any]:
        progress = Progress("[progress.description]{task.description}", BarColumn(),
                            DownloadColumn(), TimeRemainingColumn(), console=err,
                            disable=json_out or not sys.stderr.isatty(), transient=True)
        tasks: dict[str, Any] = {}

        def tick(path: str, done: int) -> None:
            if path not in tasks:
                tasks[path] = progress.add_task(Path(path).name, total=Path(path).stat().st_size)
            progress.update(tasks[path], completed=done)

        async with OfflineIngest(settings) as off:
            if off.line_items() == 0:
                raise BadInput("no stored line items to attribute events to",
                               field="--config", value=str(settings.config_file or ""),
                               fix="run the daemon once so that it syncs its campaigns to "
                                   "the DSP (or point --config at the database that did)")
            with progress:
                summaries = await off.replay(files, progress=tick)
            return summary_json(summaries, off.added())

    result = anyio.run(go)
    if json_out:
        print_json(result)
        return
    t = Table("file", "lines", "ingested", "duplicates", "dead-lettered", "already replayed")
    for f in result["files"]:
        t.add_row(_escape(f["path"]), str(f["lines"]), str(f["ingested"]), str(f["duplicates"]),
                  ", ".join(f"{r} {n}" for r, n in f["dead_by_reason"].items()) or "0",
                  str(f["already_replayed_lines"]))
    out.print(t)
    for cid, added in result["added_per_campaign"].items():
        out.print(f"campaign {cid}: +" + ", +".join(f"{n} {m}" for m, n in added.items()))


@app.command("export")
@handle_errors
def export_parquet(
    campaign_id: Annotated[str, typer.Option("--campaign", help="Campaign id.")],
    from_: Annotated[str, typer.Option("--from", help="First UTC day, YYYY-MM-DD.")],
    to: Annotated[str, typer.Option("--to", help="Last UTC day (inclusive), YYYY-MM-DD.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for the Parquet files.")],
    config: ConfigOpt = None, json_out: JsonOpt = False,
) -> None:
    """Write a campaign's daily per-cell counters as Parquet files.

    One file per day, OUT/campaign=ID/date=YYYY-MM-DD/part-0.parquet, one row per cell.
    """
    from datetime import date

    from campaignd.pipeline.rollup import export_days

    def day(value: str, name: str) -> date:
        try:
            return date.fromisoformat(value)
        except ValueError:
            raise BadInput("is not a date", field=name, value=value,
                           fix="write it as YYYY-MM-DD, e.g. 2026-12-01") from None

    first, last = day(from_, "--from"), day(to, "--to")
    if last < first:
        raise BadInput("is before --from", field="--to", value=to,
                       fix=f"give a day on or after {first.isoformat()}")
    out_fix = "give a directory this user can write to (it is created if missing), e.g. " \
        "--out ./parquet"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise BadInput("is a file, not a directory", field="--out", value=str(out_dir),
                       fix=out_fix) from None
    except OSError as exc:
        raise BadInput(f"cannot be created ({exc.strerror})", field="--out",
                       value=str(out_dir), fix=out_fix) from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise BadInput("is not writable by this user", field="--out", value=str(out_dir),
                       fix=out_fix)

    async def work(store: Any) -> list[tuple[Any, Path, int]]:
        if await store.get_campaign(campaign_id) is None:
            raise NotFound(f"--campaign: no stored campaign {campaign_id!r}; list them with "
                           "`campaignd campaign list`")
        try:
            return await export_days(store, out_dir, campaign_id, first, last)
        except OSError as exc:  # (a disk filling up meanwhile): what was written stays
            raise CampaigndError(f"--out: writing the Parquet files under {out_dir} failed: "
                                 f"{exc.strerror or exc}; free space or give another "
                                 "directory, then run again (days are written whole, one "
                                 "file each)") from None

    written = with_store(config, work)
    rows = [{"date": d.isoformat(), "path": str(p), "rows": n} for d, p, n in written]
    if json_out:
        print_json({"campaign_id": campaign_id, "files": rows})
        return
    if not rows:
        out.print(f"no counts for {campaign_id} between {first} and {last}: nothing written")
        return
    for r in rows:
        out.print(f"{r['date']}: {r['rows']} cells → {_escape(r['path'])}")
