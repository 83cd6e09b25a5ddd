"""Benchmarks behind ``scripts/bench``: one JSON object per line on stdout.

Families: ``atomize`` (spec → cells), ``ingest`` (decode → dedupe → aggregate, in-memory hot
store), ``simulate`` (wall time of the baselines over 7 simulated days on seed.toml and
large.toml), ``baselines`` (capture ratios of the baselines on every scenario, seeds 1-3),
``decide`` (the decision cycle at 12,000 and 100,000 cells: ``campaignd.bench_decide``).
"""

from __future__ import annotations

import json
import platform
import re
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


_LOCAL_TIME = re.compile(rb'"user_time_of_week":-?\d+,?')


def _messages(n: int, n_line_items: int, now_us: int, rate_per_s: int = 250_000) -> list[bytes]:
    """``n`` Beeswax streaming messages as the sandbox emits them (full impression and request
    objects): 70 % impressions, 25 % activities, 4 % clicks, 1 % conversions, the last three
    naming earlier impressions; plus 1 % duplicates, shuffled. A live stream of ``rate_per_s``
    events a second ending at ``now_us`` (timestamps in order, then up to 2 s out of order)."""
    import random

    from campaignd.dsp.sandbox.feed import Ids, MessageEncoder
    from campaignd.dsp.sandbox.model import (
        ActivityEvent,
        ClickEvent,
        ConversionEvent,
        ImpressionEvent,
        MarketEvent,
    )
    rng = random.Random(7)
    enc = MessageEncoder("sandbox")
    zips = ("10001", "11201", "90012", "60614", "94103", "33130", "77002", "98101")
    bundles = ("com.hulu.plus", "com.disney.disneyplus", "com.peacocktv.peacockandroid",
               "com.cbs.app")
    ids = [Ids(1, 1, 1, li, 100 + li % 3) for li in range(1, n_line_items + 1)]
    auctions: list[tuple[str, int, int]] = []
    out: list[bytes] = []
    for i in range(n):
        ts = now_us - (n - i) * 1_000_000 // rate_per_s - rng.randrange(2_000_000)
        r = rng.random()
        ev: MarketEvent
        if r < 0.70 or not auctions:
            li = 1 + rng.randrange(n_line_items)
            aid = f"{ts}.3054.{i}.sandbox"
            auctions.append((aid, li, ts))
            ev = ImpressionEvent(ts, aid, 1, li, "c1", rng.choice(zips), rng.choice(bundles), 3,
                                 f"u{rng.randrange(10**6)}", 30_000_000,
                                 rng.randrange(15_000, 40_000), rng.randrange(10_080),
                                 rng.random() < 0.97)
        else:
            aid, li, _ = auctions[-1 - rng.randrange(min(len(auctions), 5000))]
            if r < 0.95:
                ev = ActivityEvent(ts, aid, 1, li, "c1", rng.choice(
                    ["START", "Q1", "MID", "Q3", "COMPLETE", "VIEWABILITY"]))
            elif r < 0.99:
                ev = ClickEvent(ts, aid, 1, li, "c1")
            else:
                ev = ConversionEvent(ts, f"conv-{i}", aid, 1, li, "c1", 45_000_000, "u1")
        # Beeswax's streaming messages carry no viewer-local time (the sandbox adds it from
        # the batch logs): without it the pipeline derives it from the ZIP, the slower path.
        out.append(_LOCAL_TIME.sub(b"", enc.encode(ev, ids[ev.line_item_id - 1])))
    out.extend(rng.sample(out, n // 100))
    rng.shuffle(out)
    return out


async def _ingest_run(raws: list[bytes], hot_store: str,
                      redis_url: str | None = None) -> dict[str, Any]:
    """Decode → validate → dedupe → enrich → aggregate → hot store on ``raws``, in batches of
    5000 as the daemon reads them, then one commit's worth of hot-store writes (buckets and
    exact totals) as a flush publishes them. One run; returns its timings."""
    import uuid

    from campaignd.clock import SystemClock
    from campaignd.domain.campaign import atomize, load_spec
    from campaignd.pipeline.ingest import Pipeline
    from campaignd.pipeline.registry import Registry
    from campaignd.stores.base import HotStore
    from campaignd.stores.memory import InMemoryHotStore

    spec = load_spec(ROOT / "config" / "campaigns" / "madhive_12345.toml")
    cells = atomize(spec)
    hot: HotStore
    if hot_store == "redis":
        from campaignd.stores.redis import RedisHotStore
        hot = RedisHotStore.from_url(redis_url or "redis://127.0.0.1:6379/15",
                                     prefix=f"campaignd:bench:{uuid.uuid4().hex[:8]}:")
    else:
        hot = InMemoryHotStore(SystemClock(), max_seen=2 * len(raws))
    registry = Registry()
    registry.add_campaign(spec, cells)
    registry.register(spec.id, {i + 1: c.cell_id for i, c in enumerate(cells)})
    pipe = Pipeline(registry, hot, clock=SystemClock())
    n = len(raws)
    try:
        t0 = time.perf_counter()
        # As the daemon's feed loop does: with Redis, the next batch is decoded while the
        # current one is deduplicated (a round trip) and counted.
        await pipe.ingest_batches((raws[i:i + 5000], range(i, min(i + 5000, n)))
                                  for i in range(0, n, 5000))
        t_ingest = time.perf_counter() - t0
        flush = pipe.take_flush()
        for campaign_id, buckets in pipe.hot_buckets(flush.pending).items():
            await hot.add_buckets(campaign_id, buckets)
        for campaign_id, totals in pipe.hot_totals(flush.pending.slots).items():
            await hot.set_totals(campaign_id, totals)
        total_s = time.perf_counter() - t0
        # "cell X over the last N seconds": 900 per-second buckets, or 1,440 per-minute ones
        now_s = int(time.time())
        queries = {}
        for window in (300, 900, 86_400):
            tq = time.perf_counter()
            await hot.cell_window(spec.id, cells[0].cell_id, since_epoch_s=now_s - window,
                                  until_epoch_s=now_s)
            queries[f"{window}s"] = round((time.perf_counter() - tq) * 1000, 2)
    finally:
        if hot_store == "redis":
            await _drop_prefix(hot)
        await hot.close()
    st = pipe.stats
    return {"ingested": sum(st.ingested.values()), "duplicates": st.duplicates,
            "dead_lettered": sum(st.dead.values()), "total_s": total_s, "ingest_s": t_ingest,
            "window_query_ms": queries}


def _decode_s(raws: list[bytes]) -> float:
    from campaignd.pipeline.schema import decode_view
    t0 = time.perf_counter()
    for raw in raws:  # the decoder the pipeline uses (into its views), alone
        decode_view(raw)
    return time.perf_counter() - t0


async def _drop_prefix(hot: Any) -> None:
    keys = [k async for k in hot._r.scan_iter(match=f"{hot.prefix}*", count=5000)]
    for i in range(0, len(keys), 5000):
        await hot._r.delete(*keys[i:i + 5000])


def bench_ingest(repeats: int = 5) -> None:
    """Events/s end to end per hot store: best and median of ``repeats`` runs (this machine's
    speed wanders by 2x within minutes: the best run is the least disturbed one), each beside
    the decoder alone measured just before it."""
    import gc
    import os
    import statistics
    from datetime import UTC, datetime

    import anyio

    from campaignd.domain.campaign import atomize, load_spec

    cells = atomize(load_spec(ROOT / "config" / "campaigns" / "madhive_12345.toml"))
    raws = _messages(200_000, len(cells), int(datetime.now(UTC).timestamp() * 1_000_000))
    url = os.environ.get("CAMPAIGND_BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
    for store in ("memory", "redis"):
        rates, decode_rates, ratios = [], [], []
        last: dict[str, Any] = {}
        try:
            for _ in range(repeats):
                gc.collect()
                d = _decode_s(raws)
                last = anyio.run(_ingest_run, raws, store, url)
                rates.append(len(raws) / last["total_s"])
                decode_rates.append(len(raws) / d)
                ratios.append(d / last["total_s"])
        except Exception as exc:  # no Redis here: say so, do not invent a figure
            emit("ingest", hot_store=store, skipped=f"{type(exc).__name__}: {exc}")
            continue
        emit("ingest", hot_store=store, events=len(raws), duplicates_in_input=2000,
             ingested=last["ingested"], duplicates=last["duplicates"],
             dead_lettered=last["dead_lettered"], runs=repeats,
             events_per_s_best=round(max(rates)), events_per_s_median=round(
                 statistics.median(rates)),
             decode_only_events_per_s_best=round(max(decode_rates)),
             end_to_end_vs_decode_median=round(statistics.median(ratios), 3),
             cell_window_query_ms=last["window_query_ms"])


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


def load_server(port: int, rate: float, push_url: str | None = None) -> None:
    """The sandbox's Beeswax-compatible server over a constant-rate market (for ``sustained``),
    pushing its log stream to ``push_url`` (the token in ``CAMPAIGND_SANDBOX_PUSH_TOKEN``)."""
    import os

    import anyio

    from campaignd import logs
    from campaignd.dsp.sandbox.loadgen import ConstantRateMarket
    from campaignd.dsp.sandbox.service import SandboxService
    logs.configure("WARNING", "console")
    service = SandboxService(ConstantRateMarket(rate), port=port, time_scale=1.0,
                             tick_interval_s=0.1, feed_capacity=2_000_000, log_level="warning",
                             push_url=push_url,
                             push_token=os.environ.get("CAMPAIGND_SANDBOX_PUSH_TOKEN"))
    anyio.run(service.run)


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _lag_buckets(metrics_text: str) -> dict[str, float]:
    out = {}
    for line in metrics_text.splitlines():
        if line.startswith("campaignd_event_lag_seconds_hist_bucket"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out[le] = float(line.rsplit(" ", 1)[1])
    return out


def bench_sustained(rate: float = 20_000, seconds: float = 600, warmup: float = 60) -> None:
    """The daemon (every agent and job on its cadence, SQLite + in-memory hot store) receiving
    ``rate`` events/s for ``seconds`` as Beeswax delivers them — pushed over HTTP to its receiver,
    spooled, read back by the feed: event-to-registry lag and memory over time."""
    import os
    import socket
    import subprocess
    import tempfile

    import httpx

    def free_port() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])

    tmp = Path(tempfile.mkdtemp(prefix="campaignd-sustained-"))
    dsp_port, http_port, push_port = free_port(), free_port(), free_port()
    token = "sustained-bench-push-token"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAMPAIGND_")}
    spec = ROOT / "config" / "campaigns" / "madhive_12345.toml"
    cfg = tmp / "campaignd.toml"
    cfg.write_text(f"""state_dir = "{tmp / 'state'}"
campaigns = ["{spec}"]
[database]
url = "sqlite+aiosqlite:///{tmp / 'campaignd.db'}"
[dsp]
adapter = "beeswax"
[dsp.beeswax]
base_url = "http://127.0.0.1:{dsp_port}"
buzz_key = "sandbox"
email = "sandbox@campaignd.local"
rate_limit_rps = 1000
[http]
port = {http_port}
[receiver]
port = {push_port}
[log]
format = "json"
level = "WARNING"
file = "{tmp / 'campaignd.log'}"
""")
    env_d = {**env, "CAMPAIGND_DSP__BEESWAX__PASSWORD": "sandbox",
             "CAMPAIGND_RECEIVER__TOKEN": token}
    server = subprocess.Popen([sys.executable, "-m", "campaignd.bench", "load-server",
                               str(dsp_port), str(rate),
                               f"http://127.0.0.1:{push_port}/beeswax/events"],
                              env={**env, "CAMPAIGND_SANDBOX_PUSH_TOKEN": token})
    daemon = None
    try:
        time.sleep(2.0)
        with open(tmp / "daemon.out", "w") as out:
            daemon = subprocess.Popen([sys.executable, "-m", "campaignd", "run", "--config",
                                       str(cfg)], stdout=out, stderr=subprocess.STDOUT,
                                      env=env_d)
        api = httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=10,
                           trust_env=False)
        deadline = time.monotonic() + 300
        while True:
            try:
                st = api.get("/api/v1/status").json()
                if st.get("healthy"):
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or daemon.poll() is not None:
                tail = (tmp / "daemon.out").read_text()[-2000:]
                raise RuntimeError(f"the daemon did not start: {tail}")
            time.sleep(0.5)
        time.sleep(warmup)
        samples = []
        t_start = time.monotonic()
        first = api.get("/api/v1/status").json()["events"]
        b0 = _lag_buckets(api.get("/metrics").text)
        while time.monotonic() - t_start < seconds:
            time.sleep(5.0)
            ev = api.get("/api/v1/status").json()["events"]
            samples.append({"t": round(time.monotonic() - t_start, 1),
                            "ingested": ev["ingested"] + ev["duplicates"],
                            "lag_p99_s": ev["lag_p99_s"], "backlog": ev["backlog"],
                            "rss_mb": round(_rss_mb(daemon.pid), 1)})
        b1 = _lag_buckets(api.get("/metrics").text)
        last = api.get("/api/v1/status").json()
        elapsed = samples[-1]["t"]
        seen = samples[-1]["ingested"] - (first["ingested"] + first["duplicates"])
        total = b1["+Inf"] - b0["+Inf"]
        within = {le: round((b1[le] - b0[le]) / total, 5) for le in ("0.25", "0.5", "1")}
        p99s = sorted(s["lag_p99_s"] for s in samples if s["lag_p99_s"] is not None)
        rss = [s["rss_mb"] for s in samples]
        agents = {a["name"]: a["runs"] for a in last["agents"]}
        emit("sustained", rate=rate, seconds=elapsed, events_per_s=round(seen / elapsed),
             share_within_s=within, lag_p99_s_median=p99s[len(p99s) // 2],
             lag_p99_s_max=p99s[-1], rss_mb_first=rss[0], rss_mb_last=rss[-1],
             rss_mb_max=max(rss), backlog_max=max(s["backlog"] for s in samples),
             dead_lettered=last["events"]["dead_lettered"], agent_runs=agents,
             samples=samples)
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.terminate()
            daemon.wait(30)
        server.terminate()
        server.wait(30)


FAMILIES: dict[str, Callable[[], None]] = {
    "atomize": bench_atomize, "ingest": bench_ingest, "simulate": bench_simulate,
    "baselines": bench_baselines, "sustained": bench_sustained,
}
DEFAULT_FAMILIES = ("atomize", "ingest", "simulate", "baselines")
"""``sustained`` runs 11 minutes and needs both cores: only when asked for."""


def _bench_decide() -> None:
    from campaignd.bench_decide import bench_decide
    bench_decide()


FAMILIES["decide"] = _bench_decide


def receiver_server(port: int, directory: str) -> None:
    """The receiver alone on ``port`` with its spool in ``directory`` (``bench receiver``'s
    server process)."""
    import anyio

    from campaignd.pipeline.spool import Spool
    from campaignd.web.receiver import create_receiver_app
    from campaignd.web.server import bind_socket, serve_http

    spool = Spool(directory)
    spool.open()
    sock = bind_socket("127.0.0.1", port)
    anyio.run(serve_http, create_receiver_app(spool, token="bench-token"), sock)


def bench_receiver(batches: int = 200, batch: int = 1000, connections: int = 4) -> None:
    """Beeswax's push into the receiver over loopback: ``batches`` POSTs of ``batch`` messages
    (JSON lines, ~830 bytes each) from ``connections`` concurrent clients, each answered after
    the spool's fsync; then the feed's read of the spool alone (batches of 5,000)."""
    import subprocess
    import tempfile
    from datetime import UTC, datetime

    import anyio
    import httpx

    from campaignd.domain.campaign import atomize, load_spec
    from campaignd.pipeline.spool import Spool
    from campaignd.testing import free_port

    cells = atomize(load_spec(ROOT / "config" / "campaigns" / "madhive_12345.toml"))
    raws = _messages(batch * 20, len(cells), int(datetime.now(UTC).timestamp() * 1_000_000))
    bodies = [b"\n".join(raws[i:i + batch]) for i in range(0, len(raws), batch)]
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:  # on the project's disk, not tmpfs
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "campaignd.bench", "receiver-server",
                                   str(port), tmp])
        try:
            async def push() -> tuple[float, list[float]]:
                url = f"http://127.0.0.1:{port}/beeswax/events"
                headers = {"authorization": "Bearer bench-token"}
                latencies: list[float] = []
                async with httpx.AsyncClient(trust_env=False, timeout=30) as client:
                    for _ in range(200):
                        try:
                            await client.get(f"http://127.0.0.1:{port}/healthz")
                            break
                        except httpx.TransportError:
                            await anyio.sleep(0.05)
                    todo = list(range(batches))

                    async def worker() -> None:
                        while todo:
                            i = todo.pop()
                            t = time.perf_counter()
                            r = await client.post(url, content=bodies[i % len(bodies)],
                                                  headers=headers)
                            r.raise_for_status()
                            latencies.append(time.perf_counter() - t)

                    t0 = time.perf_counter()
                    async with anyio.create_task_group() as tg:
                        for _ in range(connections):
                            tg.start_soon(worker)
                    return time.perf_counter() - t0, latencies

            wall, lat = anyio.run(push)
        finally:
            server.terminate()
            server.wait(10)
        spool = Spool(tmp)
        spool.open()
        t0 = time.perf_counter()
        cursor, n = None, 0
        while True:
            b = spool.read(cursor, 5000)
            if not b.messages:
                break
            n += len(b.messages)
            cursor = int(b.next_cursor)
        read_s = time.perf_counter() - t0
        lat.sort()
        emit("receiver", messages=batches * batch, batch=batch, connections=connections,
             spool_bytes=spool.bytes, pushed_messages_per_s=round(batches * batch / wall),
             request_ms_p50=round(lat[len(lat) // 2] * 1000, 1),
             request_ms_p99=round(lat[int(len(lat) * 0.99)] * 1000, 1),
             spool_read_messages_per_s=round(n / read_s))


FAMILIES["receiver"] = bench_receiver


def bench_redis_memory() -> None:
    """What Redis holds per unit, through the real pipeline and store: bytes of ``used_memory``
    per dedupe mark (200,000 events of the seed campaign, with their stream positions), and per
    hot bucket key (every one of the seed's 432 cells busy in each of 120 seconds, all 12
    metrics set: the worst case of a bucket's size). Sizing: marks × the events of
    ``pipeline.dedupe_window_s``, bucket keys × up to 3,240 a busy cell (30 min of seconds,
    24 h of minutes)."""
    import os
    import uuid
    from datetime import UTC, datetime

    import anyio

    from campaignd.clock import SystemClock
    from campaignd.domain.campaign import atomize, load_spec
    from campaignd.domain.cells import METRICS
    from campaignd.pipeline.ingest import Pipeline
    from campaignd.pipeline.registry import Registry
    from campaignd.stores.redis import RedisHotStore

    url = os.environ.get("CAMPAIGND_BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
    spec = load_spec(ROOT / "config" / "campaigns" / "madhive_12345.toml")
    cells = atomize(spec)

    async def run() -> None:
        hot = RedisHotStore.from_url(url, prefix=f"campaignd:bench:{uuid.uuid4().hex[:8]}:")

        async def used() -> int:
            return int((await hot._r.info("memory"))["used_memory"])

        try:
            registry = Registry()
            registry.add_campaign(spec, cells)
            registry.register(spec.id, {i + 1: c.cell_id for i, c in enumerate(cells)})
            pipe = Pipeline(registry, hot, clock=SystemClock())
            raws = _messages(200_000, len(cells), int(datetime.now(UTC).timestamp() * 1e6))
            base = await used()
            await pipe.ingest_batches((raws[i:i + 5000], range(i, min(i + 5000, len(raws))))
                                      for i in range(0, len(raws), 5000))
            marks = pipe.stats.duplicates + sum(pipe.stats.ingested.values())
            marks_bytes = await used() - base
            await _drop_prefix(hot)
            base = await used()
            t0 = int(time.time()) - 200
            for s in range(120):
                await hot.add_buckets(spec.id, {t0 + s: {
                    c.cell_id: {m: 1_000 + s for m in METRICS} for c in cells}})
            buckets_bytes = await used() - base
            keys = len([k async for k in hot._r.scan_iter(match=f"{hot.prefix}*", count=5000)])
            emit("redis-memory", dedupe_marks=marks, bytes_per_mark=round(marks_bytes / marks),
                 bucket_keys=keys, bytes_per_bucket_key=round(buckets_bytes / keys),
                 bytes_per_busy_cell=round(buckets_bytes / keys * 3_240))
        finally:
            await _drop_prefix(hot)
            await hot.close()

    try:
        anyio.run(run)
    except Exception as exc:  # no Redis here: say so, do not invent a figure
        emit("redis-memory", skipped=f"{type(exc).__name__}: {exc}")


FAMILIES["redis-memory"] = bench_redis_memory


def main(argv: list[str]) -> int:
    if argv[:1] == ["receiver-server"]:
        receiver_server(int(argv[1]), argv[2])
        return 0
    if argv[:1] == ["load-server"]:
        load_server(int(argv[1]), float(argv[2]), argv[3] if len(argv) > 3 else None)
        return 0
    if argv[:1] == ["sustained"] and len(argv) > 1:
        bench_sustained(*(float(a) for a in argv[1:4]))
        return 0
    names = argv or list(DEFAULT_FAMILIES)
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        sys.stderr.write(f"unknown benchmark(s) {unknown}; choose from {list(FAMILIES)}\n")
        return 2
    import timeit
    emit("machine", python=platform.python_version(), machine=platform.machine(),
         processor=platform.processor() or "unknown",
         calibration_us=round(min(timeit.repeat("sum(range(1000))", number=20_000,
                                                repeat=5)) / 20_000 * 1e6, 2))
    for n in names:
        FAMILIES[n]()
    return 0


if __name__ == "__main__":
    from campaignd.cli import limit_math_threads
    limit_math_threads()
    raise SystemExit(main(sys.argv[1:]))
