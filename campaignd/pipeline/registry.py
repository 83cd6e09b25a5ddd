"""The registry: every campaign's ``CellTable``, and the routes from DSP line items to cells.

Cells of all campaigns share one "slot" space (campaign after campaign, in atomization order), so
a batch of events is aggregated with one ``np.add.at`` over slots and then split per campaign.
A line item routes to one slot (several line items may route to the same cell: a re-created line
item); the route also carries what the enrichment step checks an impression against — the
cell's audience ZIP codes, its daypart's hours of week, its platform's app bundles and device
types — and the campaign's ZIP series keys.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from campaignd.domain.budget_day import BudgetDay
from campaignd.domain.campaign import CampaignSpec, Cell
from campaignd.domain.cells import CellTable


@dataclass(frozen=True, slots=True)
class Route:
    """Where a line item's events go, and what its impressions should look like."""

    slot: int
    campaign: int
    """Ordinal of the campaign in the registry."""
    zips: frozenset[str]
    hours_of_week: frozenset[int]
    bundles: frozenset[str]
    device_types: frozenset[int]
    """OpenRTB device types of the cell's platform (3 = connected TV)."""
    zip_keys: Mapping[str, int]
    """ZIP → the campaign's ZIP series key; anything else is ``other_zip``."""
    other_zip: int


class Registry:
    def __init__(self, budget_day: BudgetDay | None = None) -> None:
        self.budget_day = budget_day if budget_day is not None else BudgetDay("UTC")
        """The DSP account's day: what "today" means in every campaign's table."""
        self.tables: list[CellTable] = []
        self.specs: list[CampaignSpec] = []
        self._by_id: dict[str, int] = {}
        self._bases: list[int] = []
        self.n_slots = 0
        self.routes: dict[str, Route] = {}
        """DSP line item id, as the decimal string the logs carry → route."""
        self.ours: set[str] = set()
        """Line items campaignd made that are not routed now (cells removed from a spec,
        campaigns no longer loaded), as the logs' decimal strings: their events are kept whole
        when refused, never sampled like those of line items campaignd never managed."""
        self._cell_facts: list[list[tuple[frozenset[str], frozenset[int], frozenset[str],
                                          frozenset[int]]]] = []

    def __len__(self) -> int:
        return len(self.tables)

    def __iter__(self) -> Iterator[CellTable]:
        return iter(self.tables)

    def add_campaign(self, spec: CampaignSpec, cells: list[Cell]) -> CellTable:
        """Register a campaign (once; a second call returns the existing table)."""
        if spec.id in self._by_id:
            return self.tables[self._by_id[spec.id]]
        zips = {z for a in spec.audiences for z in a.zips}
        table = CellTable(spec.id, cells, zips=zips, budget_day=self.budget_day)
        self._by_id[spec.id] = len(self.tables)
        self.tables.append(table)
        self.specs.append(spec)
        self._bases.append(self.n_slots)
        self.n_slots += len(cells)
        facts = []
        aud = {a.id: frozenset(a.zips) for a in spec.audiences}
        day = {d.id: frozenset(d.hours_of_week()) for d in spec.dayparts}
        plat = {p.id: (frozenset(p.app_bundles), frozenset(p.device_types))
                for p in spec.platforms}
        for c in cells:
            facts.append((aud[c.audience], day[c.daypart], *plat[c.platform]))
        self._cell_facts.append(facts)
        return table

    def table(self, campaign_id: str) -> CellTable:
        return self.tables[self._by_id[campaign_id]]

    def has(self, campaign_id: str) -> bool:
        return campaign_id in self._by_id

    def base(self, campaign_id: str) -> int:
        return self._bases[self._by_id[campaign_id]]

    def register(self, campaign_id: str, line_items: Mapping[int | str, str]) -> None:
        """Route these DSP line items (id → cell id) to the campaign's cells."""
        k = self._by_id[campaign_id]
        table = self.tables[k]
        base = self._bases[k]
        zip_keys = table.by_zip.key_index
        other = table.zip_key(None)
        for li, cell_id in line_items.items():
            pos = table.index[cell_id]
            zips, hours, bundles, devices = self._cell_facts[k][pos]
            self.routes[str(int(li))] = Route(base + pos, k, zips, hours, bundles, devices,
                                              zip_keys, other)

    def know(self, line_item_ids: Iterable[int | str]) -> None:
        """Line items campaignd made (see ``ours``)."""
        self.ours.update(str(int(li)) for li in line_item_ids)

    def managed(self, line_item_id: str) -> bool:
        """Whether campaignd made this line item (routed now or not)."""
        return line_item_id in self.routes or line_item_id in self.ours

    def slot_of(self, campaign_id: str, cell_id: str) -> int:
        k = self._by_id[campaign_id]
        return self._bases[k] + self.tables[k].index[cell_id]

    def locate(self, slots: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """Split global ``slots`` by campaign: ``[(campaign ordinal, mask, positions)]``."""
        out = []
        bases = np.asarray([*self._bases, self.n_slots], dtype=np.int64)
        camp = np.searchsorted(bases, slots, side="right") - 1
        for k in np.unique(camp):
            mask = camp == k
            out.append((int(k), mask, slots[mask] - bases[k]))
        return out

    def cell_of_slot(self, slot: int) -> tuple[str, str]:
        """(campaign id, cell id) of a slot."""
        k = int(np.searchsorted(np.asarray(self._bases), slot, side="right") - 1)
        table = self.tables[k]
        return table.campaign_id, table.cell_ids[slot - self._bases[k]]


__all__ = ["Registry", "Route"]
