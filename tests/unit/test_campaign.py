"""Campaign specs: parsing, validation errors that name the field, and atomization."""

from __future__ import annotations

import copy
import tomllib
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from campaignd.domain.campaign import (
    DIMENSIONS,
    atomize,
    cell_id_for,
    count_cells,
    from_micros,
    load_spec,
    parse_spec,
    to_micros,
)
from campaignd.errors import SpecError, SpecErrors

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "config" / "campaigns" / "madhive_12345.toml"


@pytest.fixture
def seed_data() -> dict:
    return tomllib.loads(SEED.read_text())


def test_seed_campaign_has_432_cells() -> None:
    spec = load_spec(SEED)
    cells = atomize(spec)
    assert spec.dimension_counts() == {"audience": 3, "creative": 3, "bid_strategy": 3,
                                       "daypart": 4, "platform": 4}
    assert len(cells) == 3 * 3 * 3 * 4 * 4 == 432
    assert len({c.cell_id for c in cells}) == 432
    assert spec.lifetime_budget == Decimal("150000.00")
    assert spec.lifetime_budget_micros == 150_000_000_000


def test_atomization_is_deterministic_and_stable() -> None:
    a = atomize(load_spec(SEED))
    b = atomize(load_spec(SEED))
    assert a == b
    # The id depends only on the campaign and the levels, not on order in the file.
    c = a[17]
    assert c.cell_id == cell_id_for(c.campaign_id, c.levels())


def test_reordering_levels_keeps_cell_ids(seed_data: dict) -> None:
    reordered = copy.deepcopy(seed_data)
    reordered["platforms"].reverse()
    reordered["audiences"].reverse()
    ids1 = {c.cell_id for c in atomize(parse_spec(seed_data))}
    ids2 = {c.cell_id for c in atomize(parse_spec(reordered))}
    assert ids1 == ids2


def test_exclusions_remove_cells(seed_data: dict) -> None:
    seed_data["exclusions"] = [{"platform": "disney+", "daypart": "late_night"}]
    spec = parse_spec(seed_data)
    cells = atomize(spec)
    assert len(cells) == 432 - 3 * 3 * 3
    assert not any(c.platform == "disney+" and c.daypart == "late_night" for c in cells)
    assert count_cells(spec) == len(cells)


def _problems(data: dict) -> list[SpecError]:
    with pytest.raises(SpecErrors) as info:
        parse_spec(data)
    return info.value.errors  # type: ignore[return-value]


@pytest.mark.parametrize(("mutate", "field", "needle"), [
    (lambda d: d["audiences"][0].update(zips=["00000", "10001"]), "audiences[0].zips",
     "invalid US ZIP"),
    (lambda d: d["creatives"].append(dict(d["creatives"][0])), "creatives[3].id", "duplicate"),
    (lambda d: d.update(platforms=[]), "platforms", "at least one level"),
    (lambda d: d["dayparts"][1].update(hours=[11, 12]), "dayparts", "overlap"),
    (lambda d: d["budget"].update(daily="0"), "budget.daily", "greater than 0"),
    (lambda d: d["budget"].update(lifetime="-5"), "budget.lifetime", "greater than 0"),
    (lambda d: d.update(objective="likes"), "objective", "conversions"),
    (lambda d: d["bid_strategies"][0].update(strategy="cpm"), "bid_strategies[0].strategy",
     "case-sensitive"),
    (lambda d: d.update(exclusions=[{"platform": "tiktok"}]), "exclusions[0].platform",
     "unknown platform"),
    (lambda d: d.update(exclusions=[{"platform": ["hulu"]}]), "exclusions[0].platform",
     "must be one platform id"),
    (lambda d: d.update(exclusions=[{"platform": {"a": 1}}]), "exclusions[0].platform",
     "must be one platform id"),
    (lambda d: d["flight"].update(start="0001-01-01T00:00:00+01:00"), "flight.start",
     "outside the years"),
    (lambda d: d["flight"].update(end="9999-12-31T23:59:59-05:00"), "flight.end",
     "outside the years"),
    (lambda d: d["flight"].update(end="2207-01-01T00:00:00Z"), "flight.end", "outside the years"),
    (lambda d: d.update(max_cells=100), "max_cells", "432 cells"),
    (lambda d: d["flight"].update(end="2026-01-01T00:00:00Z"), "flight.end", "after"),
    (lambda d: d.update(colour="blue"), "colour", "not a known setting"),
    (lambda d: d["audiences"][0].update(id="has space"), "audiences[0].id", "valid id"),
    (lambda d: d["audiences"][0].update(id="urban\n"), "audiences[0].id", "valid id"),
    (lambda d: d.update(id="madhive_12345\n"), "id", "valid id"),
    (lambda d: d.update(currency="JPY"), "currency", "USD only"),
    (lambda d: d.update(currency="EUR"), "currency", 'write currency = "USD"'),
    (lambda d: d.update(currency="usd"), "currency", "ISO 4217"),
])
def test_validation_names_the_field(seed_data: dict, mutate, field: str, needle: str) -> None:
    mutate(seed_data)
    problems = _problems(seed_data)
    fields = [p.field for p in problems]
    assert field in fields, fields
    text = str(next(p for p in problems if p.field == field))
    assert needle in text


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda d: d["budget"].update(lifetime="99999999999999999999999.99",
                                  daily="99999999999999999999999.99"), "budget.lifetime"),
    (lambda d: d["budget"].update(lifetime="99999999999999.99", daily="99999999999999.99"),
     "budget.daily"),
    (lambda d: d["budget"].update(lifetime="1000000000.01"), "budget.lifetime"),
    (lambda d: d["bid_strategies"][0].update(cpm_bid="1000000.01"), "bid_strategies[0].cpm_bid"),
    (lambda d: d["bid_strategies"][0].update(cpc_goal=1e30), "bid_strategies[0].cpc_goal"),
    (lambda d: d.update(conversion_value="5000000"), "conversion_value"),
])
def test_money_has_an_upper_bound(seed_data: dict, mutate, field: str) -> None:
    """Micros must fit a signed 64-bit SQL BIGINT with room for sums: a huge amount is a spec
    problem naming the field, never an overflow when the campaign is stored."""
    mutate(seed_data)
    problems = _problems(seed_data)
    text = str(next(p for p in problems if p.field == field))
    assert "is too large (at most" in text, text


def test_the_largest_amounts_are_accepted_and_fit_a_bigint(seed_data: dict) -> None:
    seed_data["budget"].update(lifetime="1000000000", daily="1000000000.00")
    seed_data["bid_strategies"][0]["cpm_bid"] = "1000000"
    seed_data["conversion_value"] = "1000000.000000"
    spec = parse_spec(seed_data)
    assert spec.lifetime_budget_micros == spec.daily_budget_micros == 10**15
    assert 9_000 * spec.lifetime_budget_micros < 2**63 - 1  # room for sums


def test_all_problems_are_reported_at_once(seed_data: dict) -> None:
    seed_data["budget"]["daily"] = "abc"
    seed_data["objective"] = "nope"
    seed_data["audiences"][1]["zips"] = ["99999"]
    problems = _problems(seed_data)
    assert {"budget.daily", "objective", "audiences[1].zips"} <= {p.field for p in problems}


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="file not found"):
        load_spec(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("id = \n")
    with pytest.raises(SpecError, match="not valid TOML"):
        load_spec(bad)


def test_currency_defaults_to_usd(seed_data: dict) -> None:
    del seed_data["currency"]
    assert parse_spec(seed_data).currency == "USD"


def test_money_is_exact() -> None:
    assert to_micros(Decimal("0.1")) * 3 == to_micros(Decimal("0.3"))
    assert from_micros(to_micros(Decimal("2500.123456"))) == Decimal("2500.123456")


def test_daypart_hours_of_week() -> None:
    spec = load_spec(SEED)
    late = spec.level("daypart", "late_night")
    how = late.hours_of_week()  # type: ignore[union-attr]
    assert len(how) == 4 * 7
    assert 0 in how and 23 in how  # Sunday 00:00 and Sunday 23:00
    assert all(0 <= h < 168 for h in how)


@settings(max_examples=60, deadline=None)
@given(counts=st.tuples(*[st.integers(1, 4) for _ in DIMENSIONS]),
       excluded=st.lists(st.tuples(st.sampled_from(DIMENSIONS), st.integers(0, 3)), max_size=3))
def test_atomization_counts_property(counts: tuple[int, ...], excluded: list) -> None:
    """Cells = product of level counts minus exactly the excluded combinations; ids unique."""
    data = tomllib.loads(SEED.read_text())
    tables = {"audience": "audiences", "creative": "creatives", "bid_strategy": "bid_strategies",
              "daypart": "dayparts", "platform": "platforms"}
    for dim, n in zip(DIMENSIONS, counts, strict=True):
        levels = data[tables[dim]]
        while len(levels) < n:
            extra = dict(levels[0])
            extra["id"] = f"{dim}_{len(levels)}"
            if dim == "daypart":
                extra["hours"] = [3 + len(levels)]
            levels.append(extra)
        data[tables[dim]] = levels[:n]
    rules = []
    for dim, i in excluded:
        ids = [lvl["id"] for lvl in data[tables[dim]]]
        rules.append({dim: ids[i % len(ids)]})
    data["exclusions"] = rules
    data["max_cells"] = 10_000
    expected_total = 1
    for n in counts:
        expected_total *= n
    if rules:
        try:
            spec = parse_spec(data)
        except SpecErrors as exc:  # every cell excluded
            assert "exclude every cell" in str(exc)
            return
    else:
        spec = parse_spec(data)
    cells = atomize(spec)
    assert len({c.cell_id for c in cells}) == len(cells)
    for c in cells:
        assert not any(ex.excludes(c.levels()) for ex in spec.exclusions)
    if not rules:
        assert len(cells) == expected_total
    else:
        assert len(cells) < expected_total
