"""The knapsacks behind Thompson allocation, per posterior draw: fill a budget into cells by
value per money unit, each up to its room (``greedy_fill``), and the multiple-choice form where
the cells of a group buy the same inventory (``group_fill``). Pure numpy."""

from __future__ import annotations

import numpy as np


def greedy_fill(value: np.ndarray, room: np.ndarray, budget: float | np.ndarray) -> np.ndarray:
    """Per row (draw): fill ``budget`` into the cells in decreasing ``value``, each up to its
    ``room``."""
    order = np.argsort(-value, axis=1)
    r = np.take_along_axis(room, order, axis=1)
    before = np.cumsum(r, axis=1) - r
    b = np.asarray(budget, dtype=float).reshape(-1, 1) if np.ndim(budget) else budget
    take = np.clip(b - before, 0.0, r)
    out = np.zeros_like(take)
    np.put_along_axis(out, order, take, axis=1)
    return out


def group_fill(vpd: np.ndarray, room: np.ndarray, groups: np.ndarray, rest: float,
                iterations: int = 10) -> np.ndarray:
    """Per-draw fills when the cells of a group buy the same inventory (a multiple-choice
    knapsack); the group's spend is at most the largest room among its cells.

    For a marginal value per money unit ``lam`` every group funds the one cell that adds most
    value net of what the money would earn elsewhere, ``room x (v - lam)`` (a cheap cell with
    little room can lose to a dearer one that buys more), if positive; ``lam`` is the largest
    for which those cells can take ``rest`` (bisection, per draw: the Lagrangian solution of
    the LP relaxation). They are filled by value; money left then goes, by value, to the
    next best cell of each group, within what the group's room has left."""
    k = vpd.shape[0]
    perm = np.argsort(groups, kind="stable")
    g_sorted = groups[perm]
    starts = np.flatnonzero(np.r_[True, g_sorted[1:] != g_sorted[:-1]])
    slot_p = np.searchsorted(g_sorted[starts], g_sorted)  # group slot per permuted column
    vp = vpd[:, perm]
    rp = np.broadcast_to(room[perm], vp.shape)

    def chosen(lam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        score = rp * (vp - lam[:, None])
        gmax = np.maximum.reduceat(score, starts, axis=1)
        pick = (score >= gmax[:, slot_p]) & (score > 0)
        return pick, (pick * rp).sum(axis=1)

    lo = np.zeros(k)
    hi = vpd.max(axis=1)
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        _, spend = chosen(mid)
        ok = spend >= rest
        lo = np.where(ok, mid, lo)
        hi = np.where(ok, hi, mid)
    pick, _ = chosen(lo)
    # ties could pick two cells of a group: keep the first
    cs = np.cumsum(pick, axis=1)
    before_group = (cs - pick)[:, starts]
    first = pick & (cs - before_group[:, slot_p] == 1)
    fill = greedy_fill(vp, np.where(first, rp, 0.0), rest)
    left = rest - fill.sum(axis=1)
    if np.any(left > rest * 1e-9):
        gcap = np.maximum.reduceat(room[perm], starts)
        used = np.add.reduceat(fill, starts, axis=1)
        second_v = np.where(first, -np.inf, vp)
        gbest = np.maximum.reduceat(second_v, starts, axis=1)
        second = (second_v >= gbest[:, slot_p]) & np.isfinite(second_v) & ~first
        room2 = np.where(second, np.minimum(rp, (gcap[None, :] - used)[:, slot_p]), 0.0)
        fill += greedy_fill(vp, np.maximum(room2, 0.0), left)
    out = np.empty_like(fill)
    out[:, perm] = fill
    return out


__all__ = ["greedy_fill", "group_fill"]
