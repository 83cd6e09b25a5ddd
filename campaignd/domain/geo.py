"""US ZIP code facts (timezone, state, coordinates) from the ``zipcodes`` package's bundled data.

Loaded once, lazily, into a dict; lookups are O(1). Pure data: no network, no files of ours.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True, slots=True)
class ZipInfo:
    zip: str
    state: str
    timezone: str
    lat: float
    lon: float
    active: bool


@lru_cache(maxsize=1)
def _zip_table() -> dict[str, ZipInfo]:
    import zipcodes

    table: dict[str, ZipInfo] = {}
    for row in zipcodes.list_all():
        tz = row.get("timezone") or ""
        try:
            lat, lon = float(row.get("lat") or 0.0), float(row.get("long") or 0.0)
        except ValueError:
            lat, lon = 0.0, 0.0
        table[row["zip_code"]] = ZipInfo(row["zip_code"], row.get("state") or "", tz, lat, lon,
                                         bool(row.get("active", True)))
    return table


def zip_info(zip_code: str) -> ZipInfo | None:
    """Facts about a 5-digit US ZIP code, or None if it is not a real ZIP code."""
    return _zip_table().get(zip_code)


def is_real_zip(zip_code: str) -> bool:
    return isinstance(zip_code, str) and len(zip_code) == 5 and zip_code in _zip_table()


def zip_timezone(zip_code: str, default: str = "America/New_York") -> str:
    info = _zip_table().get(zip_code)
    return info.timezone if info and info.timezone else default


def all_zips() -> list[str]:
    return sorted(_zip_table())
