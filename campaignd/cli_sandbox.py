"""The simulated market's commands of the ``campaignd`` CLI: ``sandbox serve`` (the
Beeswax-compatible sandbox DSP, standalone) and ``simulate`` (the agents on a virtual clock
against the market).

Registered on ``campaignd.cli``'s apps when that module is imported; same conventions (exit codes
0/1/2, ``--json`` with stable keys, rich tables).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import anyio
import typer
from rich.table import Table

from campaignd.cli import (
    JsonOpt,
    _escape,
    app,
    fail,
    handle_errors,
    out,
    print_json,
    sandbox_app,
)
from campaignd.errors import BadInput, SpecError

MAX_TIME_SCALE = 100_000
"""As ``dsp.sandbox.time_scale``'s limit."""

# --- sandbox ---------------------------------------------------------------------------------


@sandbox_app.command("serve")
@handle_errors
def sandbox_serve(
    scenario: Annotated[Path, typer.Option("--scenario", help="Scenario file (TOML).")],
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0 = any free port).")] = 8480,
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    seed: Annotated[int, typer.Option(help="Random seed of the market.")] = 0,
    time_scale: Annotated[float, typer.Option(help="Market seconds per real second.")] = 1.0,
    start: Annotated[str, typer.Option(
        help="When the market's clock starts: now (what a daemon on the wall clock expects), "
             "scenario (the scenario's start), or an RFC 3339 time.")] = "now",
    push_url: Annotated[str | None, typer.Option(
        "--push-url", help="Push the log stream here (HTTP POST of JSON lines), as Beeswax's "
                           "streaming log push does, e.g. a daemon's receiver: "
                           "http://127.0.0.1:8471/beeswax/events.")] = None,
    push_token_file: Annotated[Path | None, typer.Option(
        "--push-token-file", help="File holding the push's bearer token (or set "
                                  "CAMPAIGND_SANDBOX_PUSH_TOKEN).")] = None,
    account_timezone: Annotated[str, typer.Option(
        "--account-timezone", help="The account's time zone (IANA): the API's dates, and the "
                                   "midnight at which daily budgets and pacing start over. "
                                   "Match the daemon's dsp.account_timezone.")
    ] = "America/New_York",
) -> None:
    """Run the sandbox DSP (Beeswax-compatible API over a ground-truth market) standalone."""
    from campaignd import logs
    from campaignd.dsp.sandbox.scenarios import load_scenario
    from campaignd.dsp.sandbox.service import serve_standalone
    if not 0 < time_scale <= MAX_TIME_SCALE:  # (as dsp.sandbox.time_scale; NaN fails too)
        raise BadInput(f"must be greater than 0 and at most {MAX_TIME_SCALE:,}",
                       field="--time-scale", value=time_scale,
                       fix="e.g. --time-scale 60 (a market hour a real minute)")
    if not 0 <= port <= 65535:  # (bind() raised OverflowError: a traceback, exit 1)
        raise BadInput("must be from 0 to 65535 (0: any free port)", field="--port",
                       value=port, fix="e.g. --port 8480")
    from datetime import UTC, datetime

    from campaignd.domain.campaign import MAX_FLIGHT_YEAR, MIN_FLIGHT_YEAR
    sc = load_scenario(scenario)  # validate before binding anything
    from campaignd.domain.budget_day import check_timezone
    try:
        check_timezone(account_timezone)
    except ValueError as exc:
        raise BadInput(str(exc), field="--account-timezone", value=account_timezone,
                       fix="e.g. --account-timezone America/New_York") from None
    if start == "now":
        start_at = datetime.now(UTC)
    elif start == "scenario":
        start_at = sc.default_start
    else:
        try:
            start_at = datetime.fromisoformat(start.replace("Z", "+00:00"))
        except ValueError:
            raise BadInput("is not now, scenario or an RFC 3339 time", field="--start",
                           value=start, fix="e.g. --start 2026-12-01T00:00:00Z") from None
        if start_at.tzinfo is None:
            raise BadInput("needs a UTC offset", field="--start", value=start,
                           fix="end it with Z or +00:00")
        try:
            year = start_at.astimezone(UTC).year
        except OverflowError:
            year = 0
        if not MIN_FLIGHT_YEAR <= year <= MAX_FLIGHT_YEAR:
            raise BadInput(f"is outside the years {MIN_FLIGHT_YEAR}-{MAX_FLIGHT_YEAR}",
                           field="--start", value=start, fix="e.g. --start 2026-12-01T00:00:00Z")
    push_token = os.environ.get("CAMPAIGND_SANDBOX_PUSH_TOKEN") or None
    if push_token_file is not None:
        try:
            push_token = push_token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise BadInput(f"cannot be read ({exc.strerror})", field="--push-token-file",
                           value=str(push_token_file), fix="give a readable file") from None
    if push_url is not None and not push_url.startswith(("http://", "https://")):
        raise BadInput("is not an http(s) URL", field="--push-url", value=push_url,
                       fix="e.g. --push-url http://127.0.0.1:8471/beeswax/events")
    logs.configure("INFO", "auto")
    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(_until_signalled, functools.partial(
            serve_standalone, scenario, port=port, host=host, seed=seed, time_scale=time_scale,
            start=start_at, push_url=push_url, push_token=push_token,
            account_timezone=account_timezone))


async def _until_signalled(serve: Callable[[], Awaitable[None]],
                           deadline_s: float = 10.0) -> None:
    """Run ``serve`` until SIGINT or SIGTERM, then stop it by cancelling it (uvicorn shuts down,
    the ticker stops) -- as the daemon does, instead of relying on asyncio's SIGINT handling,
    which cancels the main task natively (a cancellation anyio's task groups can take for their
    own) and leaves SIGTERM to kill the process mid-response. A second signal during the
    shutdown ends the process at once (exit 128 + the signal's number: 130 for a second
    Ctrl-C), and so does a shutdown still running ``deadline_s`` later (exit 1). What ``serve``
    raises comes out as itself, not inside the task group's exception group."""
    import signal
    import threading

    from anyio.abc import TaskStatus

    from campaignd.errors import leaves
    from campaignd.logs import get_logger

    log = get_logger("campaignd.sandbox")
    timer: threading.Timer | None = None

    def now(code: int, message: str, **fields: Any) -> None:
        log.error(message, **fields)
        sys.stderr.flush()
        os._exit(code)

    async def watch(serving: anyio.CancelScope, *,
                    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        nonlocal timer
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for signum in signals:
                name = signal.Signals(signum).name
                if timer is not None:
                    now(128 + signum, "second signal during the shutdown; exiting now",
                        signal=name)
                log.info("shutting down", signal=name)
                timer = threading.Timer(deadline_s, now, args=(
                    1, "shutdown overran its deadline; exiting now"),
                    kwargs={"deadline_s": deadline_s})
                timer.daemon = True
                timer.start()
                serving.cancel()  # the watcher stays: a second signal must still be heard

    try:
        async with anyio.create_task_group() as tg:
            serving = anyio.CancelScope()
            await tg.start(watch, serving)
            with serving:
                await serve()
            tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        errors = list(leaves(group))
        if len(errors) == 1:
            raise errors[0] from None
        raise
    finally:
        if timer is not None:
            timer.cancel()


# --- simulate --------------------------------------------------------------------------------


@app.command()
@handle_errors
def simulate(
    scenario: Annotated[Path, typer.Option("--scenario", help="Scenario file (TOML).")],
    days: Annotated[float, typer.Option(help="Simulated days.")] = 7.0,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same report).")] = 1,
    campaign: Annotated[Path | None, typer.Option(
        "--campaign", help="Campaign spec (default: the scenario's campaign).")] = None,
    policy: Annotated[str, typer.Option(
        help="Policy: thompson (the daemon's: reallocation agent + decision engine), "
             "uniform | seed (baselines), oracle.")] = "thompson",
    report: Annotated[Path | None, typer.Option(
        "--report", help="Write a self-contained HTML report here.")] = None,
    events: Annotated[bool, typer.Option(
        "--events", help="Send every market event through the whole pipeline as a Beeswax "
                         "message (slower; the default feeds the market's step totals to the "
                         "pipeline's aggregation).")] = False,
    no_engine: Annotated[bool, typer.Option(
        "--no-engine", help="Diagnostic: apply thompson's budgets directly, without the "
                            "decision engine's rules.")] = False,
    option: Annotated[list[str] | None, typer.Option(
        "--option", "-o", help="A policy option as KEY=VALUE (repeatable), e.g. -o "
                               "fatigue_half_life=400000 -o spill=0 (README, 'Budget "
                               "allocation').")] = None,
    oracle_after: Annotated[float | None, typer.Option(
        "--oracle-after", help="Diagnostic, a bound on learning: the policy decides for this "
                               "many hours, then the oracle (the true rates) takes over.")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Run the agents on a virtual clock against the market and compare with the oracle."""
    from campaignd.sim.driver import MAX_DAYS, run_simulation
    from campaignd.sim.policies import parse_policy_options
    from campaignd.sim.report import check_report_path
    if not 0 < days <= MAX_DAYS:  # (NaN and inf too)
        raise BadInput(f"must be greater than 0 and at most {MAX_DAYS}", field="--days",
                       value=days, fix="e.g. --days 7")
    if seed < 0:
        raise BadInput("must be 0 or more", field="--seed", value=seed, fix="e.g. --seed 1")
    if report is not None:
        why = check_report_path(report)
        if why is not None:
            raise BadInput(why, field="--report", value=str(report),
                           fix="give a file in a directory you can write to, e.g. --report "
                               "sim-report.html")
    try:
        result = run_simulation(scenario, campaign_path=campaign, days=days, seed=seed,
                                policy=policy, report_html=report, events=events,
                                engine=not no_engine,
                                policy_options=parse_policy_options(
                                    policy, parse_options(option or [], "--option")),
                                oracle_after=oracle_after)
    except BadInput as exc:
        # the simulator names its arguments; the user typed the flags
        flag = _SIMULATE_FLAGS.get(exc.field or "")
        if flag is None or type(exc) not in (BadInput, SpecError):
            raise
        raise type(exc)(exc.message, field=flag, value=exc.value, fix=exc.fix) from None
    if json_out:
        print_json(result)
    else:
        t = Table("measure", "value", title=f"simulate {result.get('scenario')} · policy "
                  f"{result.get('policy')} · seed {result.get('seed')}",
                  title_justify="left")
        for k, v in result.items():
            if isinstance(v, list):
                t.add_row(k, ", ".join(str(x) for x in v))
            elif not isinstance(v, dict):
                t.add_row(k, str(v))
        out.print(t)
    if result.get("report_error"):
        # the results are printed above; the report asked for is missing: a failure (exit 1)
        fail(_escape(f"--report: the HTML report was not written ({result['report_error']}); "
                     "the results above are complete — run again with a writable --report "
                     "path for the report"), 1)


_SIMULATE_FLAGS = {"days": "--days", "seed": "--seed", "policy": "--policy",
                   "oracle_after": "--oracle-after", "SCENARIO": "--scenario",
                   "SPEC": "--campaign"}
"""``run_simulation``'s argument names -> ``campaignd simulate``'s flags, for its errors."""


def parse_options(pairs: list[str], flag: str) -> dict[str, str]:
    """``KEY=VALUE`` pairs to a dict of text values (each option reads its own type from
    them: ``campaignd.sim.policies.parse_policy_options``); a key given twice is refused."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or not key or not raw:
            raise BadInput("must be KEY=VALUE", field=flag, value=pair,
                           fix="e.g. -o fatigue_half_life=400000")
        if key in out:
            raise BadInput("is given twice", field=f"{flag} {key}", value=pair,
                           fix=f"give {key} once")
        out[key] = raw
    return out
