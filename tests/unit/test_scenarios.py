"""Scenario files: the shipped ones load; bad values are reported with the field and the fix."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from campaignd.domain.campaign import atomize
from campaignd.dsp.sandbox.scenarios import load_scenario, parse_scenario
from campaignd.errors import SpecError, SpecErrors

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "config" / "scenarios"
SHIPPED = ["seed", "sparse", "fatigue", "drift", "discovery", "large"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_scenarios_load(name: str) -> None:
    sc = load_scenario(SCENARIOS / f"{name}.toml")
    assert sc.name == name
    assert sc.campaign_path.exists()
    assert sc.base.conversion < 0.01
    assert all(x > 0 for x in sc.supply.hourly)
    assert abs(sum(sc.supply.hourly) / 24 - 1) < 1e-9


def test_scenario_features() -> None:
    assert load_scenario(SCENARIOS / "seed.toml").campaign.id == "madhive_12345"
    assert len(atomize(load_scenario(SCENARIOS / "seed.toml").campaign)) == 432
    assert load_scenario(SCENARIOS / "sparse.toml").base.conversion == pytest.approx(0.0004)
    fat = load_scenario(SCENARIOS / "fatigue.toml").fatigue
    assert fat.half_life_impressions is not None and fat.half_life_impressions <= 20_000
    assert load_scenario(SCENARIOS / "drift.toml").drift
    assert load_scenario(SCENARIOS / "discovery.toml").zip_clusters
    large = load_scenario(SCENARIOS / "large.toml")
    assert len(atomize(large.campaign)) >= 10_000


def _seed_data() -> dict[str, Any]:
    return tomllib.loads((SCENARIOS / "seed.toml").read_text())


def _errors(data: dict[str, Any]) -> SpecErrors:
    with pytest.raises(SpecErrors) as info:
        parse_scenario(data, base_dir=SCENARIOS)
    return info.value


@pytest.mark.parametrize(("mutate", "field", "hint"), [
    (lambda d: d["base"].update(ctr=1.5), "base.ctr", "(0.0, 1.0)"),
    (lambda d: d["base"].update(conversion="high"), "base.conversion", "number"),
    (lambda d: d["supply"]["per_zip_hour"].update(netflix=100), "supply.per_zip_hour.netflix",
     "known"),
    (lambda d: d["supply"].update(hourly=[1.0] * 23), "supply.hourly", "24"),
    (lambda d: d["auction"].update(width_cpm="-3"), "auction.width_cpm", "positive"),
    (lambda d: d["conversion_delay"].update(distribution="weibull"),
     "conversion_delay.distribution", "exponential"),
    (lambda d: d["pacing"].update(mode="asap"), "pacing.mode", "supply"),
    (lambda d: d["effects"][0].update(audience="nobody"), "effects[0].audience", "known"),
    (lambda d: d["effects"][0].update(platform="hulu"), "effects[0]", "exactly one"),
    (lambda d: d["effects"][1].update(conversion=50), "effects[1].conversion", "range"),
    (lambda d: d["interactions"][0].pop("platform"), "interactions[0]", "two dimensions"),
    (lambda d: d["zip_clusters"][0].update(radius_km=None) or d["zip_clusters"][0].pop(
        "radius_km"), "zip_clusters[0].radius_km", "radius"),
    (lambda d: d["zip_clusters"].append({"state": "ZZ", "conversion": 1.0}),
     "zip_clusters[1].state", "state"),
    (lambda d: d["zip_clusters"].append({"zips": ["00000"]}), "zip_clusters[1].zips", "ZIP"),
    (lambda d: d.setdefault("drift", []).append({"platform": "hulu", "conversion": -1.0}),
     "drift[0].at_day", "at_day"),
    (lambda d: d.update(colour="blue"), "colour", "allowed"),
    (lambda d: d.update(account_timezone="Eastern"), "account_timezone", "America/New_York"),
    (lambda d: d["fatigue"].update(metrics=["happiness"]), "fatigue.metrics", "ctr"),
])
def test_bad_values_name_the_field_and_the_fix(mutate: Any, field: str, hint: str) -> None:
    data = _seed_data()
    mutate(data)
    err = _errors(data)
    fields = [e.field for e in err.errors]
    assert field in fields, str(err)
    assert hint in str(err)


def test_missing_campaign_and_base() -> None:
    err = _errors({"name": "x"})
    assert err.errors[0].field == "campaign"
    assert "campaign =" in str(err)
    data = _seed_data()
    del data["base"]
    assert "base" in [e.field for e in _errors(data).errors]
    data = _seed_data()
    data["campaign"] = "../campaigns/nope.toml"
    assert "campaign" in [e.field for e in _errors(data).errors]


def test_all_problems_reported_at_once() -> None:
    data = _seed_data()
    data["base"]["ctr"] = 2
    data["pacing"]["mode"] = "asap"
    data["effects"][0]["audience"] = "nobody"
    assert len(_errors(data).errors) == 3


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="not found"):
        load_scenario(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [")
    with pytest.raises(SpecError, match="TOML"):
        load_scenario(bad)
