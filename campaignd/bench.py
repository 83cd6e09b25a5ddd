"""Benchmarks behind ``scripts/bench``: one JSON object per line on stdout.

Families: ``atomize`` (spec → cells), ``ingest`` (decode → dedupe → aggregate, in-memory hot
store), ``simulate`` (wall time of the baselines over 7 simulated days on seed.toml and
large.toml), ``baselines`` (capture ratios of the baselines on every scenario, seeds 1-3).
"""

from __future__ import annotations

import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def emit(name: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"bench": name, **fields}) + "\n")
    sys.stdout.flush()


def bench_atomize() -> None:
    from campaignd.domain.campaign import atomize, load_spec
    for spec_name in ("madhive_12345", "large_10k"):
        path = ROOT / "config" / "campaigns" / f"{spec_name}.toml"
        if not path.exists():
            continue
        spec = load_spec(path)
        t0 = time.perf_counter()
        n = 0
        reps = 0
        while time.perf_counter() - t0 < 1.0:
            n = len(atomize(spec))
            reps += 1
        dt = (time.perf_counter() - t0) / reps
        emit("atomize", spec=spec_name, cells=n, seconds=round(dt, 6),
             cells_per_s=round(n / dt))


def _messages(n: int, n_line_items: int, now_us: int) -> list[bytes]:
    """``n`` Beeswax streaming messages (70% impressions, 25% activities, 4% clicks, 1%
    conversions) plus 1% duplicates, shuffled."""
    import random

    from campaignd.pipeline import schema as s
    rng = random.Random(7)
    out: list[bytes] = []
    for i in range(n):
        li = 1 + i % n_line_items
        auction = f"{now_us - i}.3054.{i % 64}.sandbox"
        key = f"{auction}.1.1.{li}"
        ag = s.AdGroupId(buzz_key="sandbox", accountid="1", campaignid="1", lineitemid=str(li))
        ts = str(now_us - rng.randrange(60_000_000))
        r = rng.random()
        if r < 0.70:
            msg = s.AdLogMessage(
                impression=s.ImpressionLogMessage(
                    auctionid_str=auction, adgroupid=ag, creative_id="1",
                    win_price_micros_usd=str(rng.randrange(15_000, 40_000)),
                    rx_timestamp_usecs=ts, auction_adgroup_id=key),
                request=s.RequestLogMessage(bidrequest=s.BidRequest(
                    app=s.App(bundle="com.hulu.plus"),
                    device=s.Device(devicetype=3, geo=s.Geo(zip="10001")))))
        elif r < 0.95:
            msg = s.AdLogMessage(activity=(s.ActivityLogMessage(
                type=rng.choice(["START", "Q1", "MID", "Q3", "COMPLETE", "VIEWABILITY"]),
                auctionid_str=auction, adgroupid=ag, rx_timestamp_usecs=ts,
                auction_adgroup_id=key),))
        elif r < 0.99:
            msg = s.AdLogMessage(clicks=(s.ClickLogMessage(
                auctionid_str=auction, adgroupid=ag, rx_timestamp_usecs=ts,
                auction_adgroup_id=key),))
        else:
            msg = s.AdLogMessage(conversion=s.ConversionLogMessage(
                conversion_id=f"conv-{i}", value="45.00", rx_timestamp=ts, auctionid=auction,
                auction_adgroup_id=key))
        out.append(s.encode_message(msg))
    out.extend(rng.sample(out, n // 100))
    rng.shuffle(out)
    return out


async def _ingest_run(n: int) -> dict[str, Any]:
    from datetime import UTC, datetime

    from campaignd.clock import SystemClock
    from campaignd.domain.campaign import atomize, load_spec
    from campaignd.domain.cells import CellTable
    from campaignd.metrics import Metrics
    from campaignd.pipeline.ingest import EventIngestor
    from campaignd.pipeline.schema import decode_messages
    from campaignd.stores.memory import InMemoryHotStore

    spec = load_spec(ROOT / "config" / "campaigns" / "madhive_12345.toml")
    cells = atomize(spec)
    table = CellTable(spec.id, cells)
    now_us = int(datetime.now(UTC).timestamp() * 1_000_000)
    raws = _messages(n, len(cells), now_us)
    t0 = time.perf_counter()
    decode_messages(raws)
    decode_s = time.perf_counter() - t0
    ing = EventIngestor(adapter=None, sql=None, hot=InMemoryHotStore(SystemClock()),
                        metrics=Metrics(), clock=SystemClock())
    ing.register(table, {i + 1: c.cell_id for i, c in enumerate(cells)})
    t0 = time.perf_counter()
    for i in range(0, len(raws), 5000):
        await ing.ingest(raws[i:i + 5000])
    total_s = time.perf_counter() - t0
    return {"events": len(raws), "duplicates_in_input": n // 100,
            "hot_store": "memory", "ingested": ing.ingested, "duplicates": ing.duplicates,
            "events_per_s": round(len(raws) / total_s),
            "decode_only_events_per_s": round(len(raws) / decode_s)}


def bench_ingest() -> None:
    import anyio
    emit("ingest", **anyio.run(_ingest_run, 200_000))


def bench_simulate() -> None:
    from campaignd.sim.driver import run_simulation
    for scenario in ("seed", "large"):
        for policy in ("uniform", "seed"):
            t0 = time.perf_counter()
            r = run_simulation(ROOT / "config" / "scenarios" / f"{scenario}.toml", days=7,
                               seed=1, policy=policy)
            emit("simulate", scenario=scenario, policy=policy, days=7, seed=1,
                 cells=r.get("cells"), wall_seconds=round(time.perf_counter() - t0, 2),
                 capture_ratio=r.get("capture_ratio"))


def bench_baselines() -> None:
    """Capture ratio of every baseline on every shipped scenario, seeds 1-3, 7 days."""
    from campaignd.sim.driver import run_simulation
    for path in sorted((ROOT / "config" / "scenarios").glob("*.toml")):
        for policy in ("uniform", "seed"):
            for seed in (1, 2, 3):
                r = run_simulation(path, days=7, seed=seed, policy=policy)
                emit("baseline", scenario=path.stem, policy=policy, seed=seed, days=7,
                     capture_ratio=r["capture_ratio"], conversions=r["conversions"],
                     oracle_conversions=r["oracle_conversions"], spend=r["spend"],
                     oracle_spend=r.get("oracle_spend"), budget=r["budget"])


FAMILIES: dict[str, Callable[[], None]] = {
    "atomize": bench_atomize, "ingest": bench_ingest, "simulate": bench_simulate,
    "baselines": bench_baselines,
}


def main(argv: list[str]) -> int:
    names = argv or list(FAMILIES)
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        sys.stderr.write(f"unknown benchmark(s) {unknown}; choose from {list(FAMILIES)}\n")
        return 2
    emit("machine", python=platform.python_version(), machine=platform.machine(),
         processor=platform.processor() or "unknown")
    for n in names:
        FAMILIES[n]()
    return 0


if __name__ == "__main__":
    from campaignd.cli import limit_math_threads
    limit_math_threads()
    raise SystemExit(main(sys.argv[1:]))
