"""Prometheus metrics, one registry per daemon (so tests can run several in one process)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events_ingested = Counter("campaignd_events_ingested_total",
                                       "Events accepted into the registry", ["kind"], registry=r)
        self.events_duplicate = Counter("campaignd_events_duplicate_total",
                                        "Events dropped as at-least-once duplicates", registry=r)
        self.events_dead = Counter("campaignd_events_dead_lettered_total",
                                   "Events sent to the dead letter", ["reason"], registry=r)
        self.event_lag = Gauge("campaignd_event_lag_seconds",
                               "Age of the newest ingested event when it was ingested",
                               registry=r)
        self.agent_runs = Counter("campaignd_agent_runs_total", "Agent and job runs",
                                  ["agent", "outcome"], registry=r)
        self.agent_duration = Histogram("campaignd_agent_duration_seconds", "Run duration",
                                        ["agent"], registry=r,
                                        buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
                                                 10, 30))
        self.cells = Gauge("campaignd_cells", "Cells per campaign and status",
                           ["campaign", "status"], registry=r)
        self.spend_micros = Gauge("campaignd_spend_micros", "Ingested spend per campaign",
                                  ["campaign"], registry=r)
        self.dsp_healthy = Gauge("campaignd_dsp_healthy", "1 when the DSP adapter is healthy",
                                 registry=r)
        self.up = Gauge("campaignd_up", "1 while the daemon runs", registry=r)
        self.healthy = Gauge("campaignd_healthy",
                             "1 while campaignd status says healthy (no problem stands)",
                             registry=r)
        self.problems = Gauge("campaignd_problems",
                              "Problems campaignd status lists now (each says what to do)",
                              registry=r)
        self.job_failing = Gauge("campaignd_job_failing",
                                 "1 while a job's alarm stands (three failed runs in a row; "
                                 "cleared after two good runs in a row)", ["job"], registry=r)
        self.decisions_held = Gauge("campaignd_decisions_held",
                                    "1 while decisions and changes to the DSP wait because the "
                                    "counts are not current (feed or store failing, most "
                                    "events refused)", registry=r)
        self.feed_refused_share = Gauge("campaignd_feed_refused_share",
                                        "Share of the events read recently that were refused "
                                        "(the refused-feed problem stands above 0.5, until "
                                        "below 0.2)", registry=r)
        self.actions = Counter("campaignd_actions_total",
                               "Line-item actions the executor finished, by kind and outcome "
                               "(applied, failed, refused)", ["kind", "outcome"], registry=r)
        self.actions_decided = Counter("campaignd_actions_decided_total",
                                       "Line-item actions recorded by the decision engine, by "
                                       "decision mode", ["mode"], registry=r)
        self.decisions_skipped = Counter("campaignd_decisions_skipped_total",
                                         "Recommendation changes the decision engine did not "
                                         "take, by reason", ["reason"], registry=r)

        self.receiver_messages = Counter("campaignd_receiver_messages_total",
                                         "Pushed log messages the receiver spooled", registry=r)
        self.receiver_refused = Counter("campaignd_receiver_refused_total",
                                        "Push requests the receiver refused, by reason",
                                        ["reason"], registry=r)
        self.spool_bytes = Gauge("campaignd_spool_bytes",
                                 "Bytes held by the receiver's spool (not yet released)",
                                 registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def add_lag_histogram(self, read: Callable[[], Any]) -> None:
        """Export the pipeline's event-to-registry lag (``read()`` gives its ``LagStats``) as
        the histogram ``campaignd_event_lag_seconds_hist`` (collected when scraped: the hot
        path only adds numpy counts)."""
        self.registry.register(_LagCollector(read))


class _LagCollector(Collector):
    def __init__(self, read: Callable[[], Any]) -> None:
        self._read = read

    def collect(self) -> Iterator[HistogramMetricFamily]:
        lag = self._read()
        h = HistogramMetricFamily("campaignd_event_lag_seconds_hist",
                                  "Event-to-registry lag (event time to counted), real seconds")
        if lag is not None:
            cum = lag.counts.cumsum()
            buckets = [(f"{edge:g}", float(c)) for edge, c in zip(lag.edges, cum[:-1],
                                                                     strict=True)]
            buckets.append(("+Inf", float(cum[-1])))
            h.add_metric([], buckets, lag.total_s)
        yield h
