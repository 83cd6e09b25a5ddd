"""The sandbox's true world as values: a ``Scenario`` (base rates, supply, auction, conversion
value and delay, fatigue, journeys, pacing, level effects, interactions, ZIP clusters, drift),
as ``campaignd.dsp.sandbox.scenarios`` reads and validates it from TOML (the file layout is
documented there) and the market simulates it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from campaignd.domain.campaign import CampaignSpec

METRICS: tuple[str, ...] = ("ctr", "completion", "viewability", "conversion")
"""Outcome rates with logit effects, in the market's array order."""

DEFAULT_HOURLY: tuple[float, ...] = (
    0.35, 0.22, 0.15, 0.10, 0.08, 0.10, 0.30, 0.55, 0.65, 0.70, 0.75, 0.80,
    0.85, 0.85, 0.85, 0.90, 1.00, 1.20, 1.60, 2.00, 2.20, 2.10, 1.60, 0.90,
)


# --- values ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Deltas:
    """Additive logit effects on the four outcome rates."""

    ctr: float = 0.0
    completion: float = 0.0
    viewability: float = 0.0
    conversion: float = 0.0

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.ctr, self.completion, self.viewability, self.conversion)

    def __bool__(self) -> bool:
        return any(v != 0.0 for v in self.as_tuple())


@dataclass(frozen=True, slots=True)
class BaseRates:
    ctr: float = 0.002
    completion: float = 0.9
    viewability: float = 0.93
    conversion: float = 0.0025
    measurable: float = 0.97
    """Share of impressions measured for viewability."""
    start: float = 0.995
    """Share of impressions whose video starts."""

    def logits(self) -> tuple[float, float, float, float]:
        return tuple(logit(getattr(self, m)) for m in METRICS)  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class LevelEffect:
    """The effect of one campaign level (``dimension``, ``level``)."""

    dimension: str
    level: str
    deltas: Deltas


@dataclass(frozen=True, slots=True)
class Interaction:
    """An effect that applies only when every named level holds at once."""

    levels: tuple[tuple[str, str], ...]
    deltas: Deltas


@dataclass(frozen=True, slots=True)
class ZipCluster:
    """A hidden group of ZIPs sharing an attribute (a list, a state, or a radius around a ZIP)."""

    name: str
    deltas: Deltas
    zips: frozenset[str] = frozenset()
    state: str | None = None
    near: str | None = None
    radius_km: float = 0.0


@dataclass(frozen=True, slots=True)
class Drift:
    """From ``at_day`` days after the market start on, ``deltas`` are added where all of
    ``levels`` hold (the same matching as an interaction; one level is a level effect)."""

    at_day: float
    levels: tuple[tuple[str, str], ...]
    deltas: Deltas


@dataclass(frozen=True, slots=True)
class Supply:
    per_zip_hour: tuple[tuple[str, float], ...]
    """Impressions per hour per ZIP, by platform level id, at an hourly factor of 1."""
    default_per_zip_hour: float = 50.0
    """For app bundles of no campaign platform."""
    hourly: tuple[float, ...] = DEFAULT_HOURLY
    """Factor by viewer local hour 0-23 (normalised to mean 1 when loaded)."""
    zip_sigma: float = 0.3
    """Log-normal spread of supply between ZIPs (fixed by ``world_seed``)."""
    segment_reach: float = 0.35
    """Share of a ZIP's viewers in a segment, for segments not in ``segment_reach_by``."""
    segment_reach_by: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, slots=True)
class Auction:
    floor_cpm_micros: tuple[tuple[str, int], ...]
    """Centre of the competing-bid distribution by platform level id (CPM, micros)."""
    default_floor_cpm_micros: int = 20_000_000
    width_cpm_micros: int = 4_000_000
    """Scale of the logistic competing-bid distribution (CPM, micros)."""
    reserve_fraction: float = 0.5
    """The exchange reserve price as a fraction of the floor: the lowest possible clearing price."""


@dataclass(frozen=True, slots=True)
class ConversionValue:
    distribution: str = "fixed"
    mean_micros: int = 45_000_000
    sigma: float = 0.0


@dataclass(frozen=True, slots=True)
class ConversionDelay:
    distribution: str = "exponential"
    mean_hours: float = 4.0
    sigma: float = 1.0
    max_hours: float = 72.0


@dataclass(frozen=True, slots=True)
class Fatigue:
    half_life_impressions: float | None = None
    """Cumulative impressions of one creative to one audience after which the affected rates
    are halved (towards ``floor``); ``None`` means no fatigue."""
    floor: float = 0.0
    """Fraction of the rate that never fatigues."""
    metrics: tuple[str, ...] = ("ctr", "conversion")


@dataclass(frozen=True, slots=True)
class Journeys:
    extra_touches_mean: float = 0.0
    """Mean number of other touches (line items) a converting user saw after the causal one."""
    max_touches: int = 5


@dataclass(frozen=True, slots=True)
class Pacing:
    mode: str = "supply"
    """``supply``: the elapsed fraction of the UTC day is weighted by the line item's own
    expected supply (a DSP's even pacing over available inventory); ``time``: by clock time."""
    catch_up: float = 0.05


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    path: Path | None
    campaign_path: Path
    campaign: CampaignSpec
    base: BaseRates
    supply: Supply
    auction: Auction
    conversion_value: ConversionValue = field(default_factory=ConversionValue)
    conversion_delay: ConversionDelay = field(default_factory=ConversionDelay)
    fatigue: Fatigue = field(default_factory=Fatigue)
    journeys: Journeys = field(default_factory=Journeys)
    pacing: Pacing = field(default_factory=Pacing)
    effects: tuple[LevelEffect, ...] = ()
    interactions: tuple[Interaction, ...] = ()
    zip_clusters: tuple[ZipCluster, ...] = ()
    drift: tuple[Drift, ...] = ()
    zip_sigma: float = 0.0
    """Random per-ZIP conversion logit spread (fixed by ``world_seed``)."""
    signal_share: float = 0.3
    world_seed: int = 7
    start: datetime | None = None
    description: str = ""
    account_timezone: str = "UTC"
    """The simulated DSP account's time zone: its daily budgets and pacing reset at its
    midnight. The daemon's sandbox mode uses ``dsp.account_timezone`` instead (the market
    stands in for the user's own account)."""

    @property
    def default_start(self) -> datetime:
        return self.start or self.campaign.flight_start

    def effect(self, dimension: str, level: str) -> Deltas:
        for e in self.effects:
            if e.dimension == dimension and e.level == level:
                return e.deltas
        return Deltas()


def logit(p: float) -> float:
    """log(p / (1 - p)): a probability on the logit scale."""
    return math.log(p / (1.0 - p))


__all__ = ["DEFAULT_HOURLY", "METRICS", "Auction", "BaseRates", "ConversionDelay",
           "ConversionValue", "Deltas", "Drift", "Fatigue", "Interaction", "Journeys",
           "LevelEffect", "Pacing", "Scenario", "Supply", "ZipCluster", "logit"]
