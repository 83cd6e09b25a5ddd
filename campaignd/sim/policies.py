"""Budget policies: what decides per-cell daily budgets, in the simulator and (later) live.

A policy is an object with ``decide(observations, now) -> budgets`` where ``budgets`` is an int64
array of per-cell daily budgets in micros, aligned with ``observations.cell_ids``. It is built
from a ``PolicyContext`` (the campaign, its cells, its lifetime and daily budget). The caller
(the simulator's driver, or the live decision engine) enforces the campaign's caps on whatever a
policy returns, so a policy cannot overspend; a well-behaved policy keeps the sum of its budgets
within the campaign's daily budget anyway.

Policies here:

- ``uniform``: an equal, static split of the daily budget.
- ``seed``: the seed's rule. Every decision (2 minutes), rank cells on the observed rate of the
  campaign's objective per impression, cut the bottom 20 % of cells' budgets by 50 % and share
  the freed budget equally among the top 20 %. Ties (e.g. cells with no conversion yet) are
  broken by a seeded random order, so the same seed makes the same decisions.
- ``thompson``: the Bayesian allocator (``campaignd.domain.allocation``) on the observed counts,
  with delivery capacity learned from what each cell could buy (``campaignd.sim.thompson``).

What a policy is (``PolicyContext``, ``Observations``, ``Policy``) lives in ``campaignd.sim.base``
and is re-exported here; so is ``ThompsonPolicy``. The registry (``POLICIES``, ``make_policy``)
and the parsing of a policy's ``-o KEY=VALUE`` options are here.
"""

from __future__ import annotations

import inspect
import math
import re
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from campaignd.sim.base import Observations, Policy, PolicyContext, budget_today, equal_split
from campaignd.sim.thompson import ThompsonPolicy


class UniformPolicy:
    """An equal split of the day's budget (paced over the flight: ``budget_today``)."""

    name = "uniform"

    def __init__(self, ctx: PolicyContext) -> None:
        self._ctx = ctx

    def decide(self, observations: Observations, now: datetime) -> np.ndarray:
        return equal_split(budget_today(self._ctx, observations), len(self._ctx.cells))


class SeedPolicy:
    """The seed's rule: cut the bottom 20 % by 50 %, give the freed budget to the top 20 %."""

    name = "seed"

    def __init__(self, ctx: PolicyContext, *, fraction: float = 0.2, cut: float = 0.5) -> None:
        self._ctx = ctx
        self._budgets: np.ndarray | None = None
        self._fraction = fraction
        self._cut = cut
        self._tiebreak = np.random.default_rng([ctx.seed, 7]).permutation(len(ctx.cells))

    def decide(self, observations: Observations, now: datetime) -> np.ndarray:
        n = len(self._ctx.cells)
        today = budget_today(self._ctx, observations)
        if self._budgets is None:
            self._budgets = equal_split(today, n)
            return self._budgets.copy()
        total = int(self._budgets.sum())
        if total != today and total > 0:  # the day's budget moved: the same shares of it
            self._budgets = (self._budgets.astype(object) * today // total).astype(np.int64)
        k = int(n * self._fraction)
        if k == 0:
            return self._budgets.copy()
        obj = observations.objective(self._ctx.objective).astype(float)
        imps = observations.impressions
        rate = np.where(imps > 0, obj / np.maximum(imps, 1), 0.0)
        order = np.lexsort((self._tiebreak, rate))  # ascending rate, seeded tie-break
        bottom, top = order[:k], order[-k:]
        b = self._budgets
        cut = (b[bottom] * self._cut).astype(np.int64)
        b[bottom] -= cut
        b[top] += equal_split(int(cut.sum()), k)
        return b.copy()


POLICIES: dict[str, Callable[[PolicyContext], Policy]] = {
    "uniform": UniformPolicy,
    "seed": SeedPolicy,
    "thompson": ThompsonPolicy,
}


def policy_options(name: str) -> tuple[str, ...]:
    """The keyword options a named policy takes."""
    factory = POLICIES.get(name)
    if factory is None:
        return ()
    return tuple(k for k, p in inspect.signature(factory).parameters.items()
                 if p.kind is inspect.Parameter.KEYWORD_ONLY)


@dataclass(frozen=True, slots=True)
class OptionType:
    """What one policy option takes: ``base`` (bool, int, float or str), whether it may be
    ``None`` (``optional``: off, no limit or automatic, as the option says), and its
    default."""

    base: type
    optional: bool
    default: Any

    def describe(self) -> str:
        kind = {bool: "true or false", int: "a whole number", float: "a number"}.get(
            self.base, "text")
        return kind + (" or none" if self.optional else "")

    def example(self) -> str:
        d = self.default
        if self.base is bool:
            return "false" if d else "true"
        if d is None:
            return {int: "10", float: "0.2"}.get(self.base, "text")
        return f"{d:g}" if isinstance(d, float) else str(d)


_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def option_types(name: str) -> dict[str, OptionType]:
    """The keyword options a named policy takes, with their types (from its signature)."""
    factory = POLICIES.get(name)
    if factory is None:
        return {}
    out = {}
    for key, p in inspect.signature(factory, eval_str=True).parameters.items():
        if p.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        ann = p.annotation
        args = ann.__args__ if isinstance(ann, types.UnionType) else (ann,)
        base = next((a for a in args if a is not type(None)), str)
        out[key] = OptionType(base if base in (bool, int, float) else str,
                              type(None) in args, p.default)
    return out


def _bad_option(key: str, t: OptionType, value: Any) -> Any:
    from campaignd.errors import BadInput

    return BadInput(f"must be {t.describe()}", field=key, value=value,
                    fix=f"e.g. {key}={t.example()}")


def parse_policy_options(name: str, raw: Mapping[str, str]) -> dict[str, Any]:
    """Options given as text (``campaignd simulate -o KEY=VALUE``), each read as its option's
    type: ``true``/``false`` for a switch (nothing else: "maybe" is not true), ASCII digits
    for a whole number, a decimal or exponent number (finite) for a number, ``none``/``null``
    where the option can be turned off. ``BadInput`` names the option, the type it takes and
    an example. A policy that takes no options (or an unknown one) gets ``raw`` as it is, for
    ``make_policy`` to refuse."""
    from campaignd.errors import BadInput

    known = option_types(name)
    out: dict[str, Any] = {}
    for key, text in raw.items():
        t = known.get(key)
        if t is None:
            if known:
                raise BadInput(f"is not an option of the {name} policy", field=key,
                               fix=f"use one of {', '.join(known)}")
            out[key] = text
            continue
        low = text.strip().lower()
        if low in ("none", "null"):
            if not t.optional:
                raise _bad_option(key, t, text)
            out[key] = None
        elif t.base is bool:
            if low not in ("true", "false"):
                raise _bad_option(key, t, text)
            out[key] = low == "true"
        elif t.base is int:
            if not _INT.fullmatch(text.strip()):
                raise _bad_option(key, t, text)
            out[key] = int(text)
        elif t.base is float:
            if not _FLOAT.fullmatch(text.strip()) or not math.isfinite(float(text)):
                raise _bad_option(key, t, text)
            out[key] = float(text)
        else:
            out[key] = text
    return out


def _check_option(key: str, t: OptionType, value: Any) -> None:
    """``value`` (already typed: settings, code) is of the option's type: an int is a number,
    a bool is not."""
    if value is None:
        ok = t.optional
    elif t.base is bool:
        ok = isinstance(value, bool)
    elif t.base is int:
        ok = isinstance(value, int | np.integer) and not isinstance(value, bool)
    elif t.base is float:
        ok = (isinstance(value, int | float | np.integer | np.floating)
              and not isinstance(value, bool) and math.isfinite(value))
    else:
        ok = isinstance(value, str)
    if not ok:
        raise _bad_option(key, t, value)


def make_policy(name: str, ctx: PolicyContext, **options: Any) -> Policy:
    """Build a named policy (``options``: its keyword options); ``oracle`` is built by the
    driver (it needs the market's truth). An unknown policy or option, or a bad option value,
    raises ``BadInput`` naming it."""
    from campaignd.errors import BadInput

    try:
        factory = POLICIES[name]
    except KeyError:
        raise BadInput("is not a known policy", field="policy", value=name,
                       fix=f"use one of {', '.join([*POLICIES, 'oracle'])}") from None
    known = option_types(name)
    for key, value in options.items():
        if key not in known:
            raise BadInput(f"is not an option of the {name} policy", field=key,
                           fix=f"use one of {', '.join(known)}" if known
                           else f"the {name} policy takes no options")
        _check_option(key, known[key], value)
    try:
        return factory(ctx, **options)
    except (TypeError, ValueError) as e:
        # the checks' messages start with the option's name ("draws must be >= 1, got 0")
        first, _, rest = str(e).partition(" ")
        named = first in known and rest.startswith("must")
        raise BadInput(rest if named else str(e),
                       field=first if named else f"{name} policy options",
                       fix="see the option's description in README.md, 'Budget allocation'"
                       ) from None


__all__ = ["POLICIES", "Observations", "OptionType", "Policy", "PolicyContext", "SeedPolicy",
           "ThompsonPolicy", "UniformPolicy", "equal_split", "make_policy", "option_types",
           "parse_policy_options", "policy_options"]
