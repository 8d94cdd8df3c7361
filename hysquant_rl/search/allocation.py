"""Bit allocation over the (w, a) grid 2..8 x 2..8 with an additive per-layer proxy.

Three pieces every search method shares:

* :func:`proxy_grid` extends a LUT column measured at a few configurations (e.g. W4A4, W4A8, W8A4, W8A8) to
  every pair: per layer ``v(w, a) ~ alpha_w * 4^(8 - w) + alpha_a * 4^(8 - a)`` (min-max quantization noise
  power scales as Delta^2 ~ 4^-bits), fitted by non-negative least squares; measured pairs keep their
  measured values, and the grid is made monotone (fewer bits never look better).
* :func:`solve_ilp`: the multiple-choice knapsack (one pair per layer, every budget a constraint, the proxy
  summed as objective) with scipy's MILP solver (HiGHS). Costs are divided by their limits so the solver's
  absolute tolerances are relative to the budget (in seconds they would be larger than the budget itself).
* :func:`project`: lower bits until every budget holds, each time on the layer whose proxy increase per unit
  of (normalised) cost saved is smallest: HAQ's budget wall made sensitivity-aware.

Arrays: ``(L, GRID, GRID)`` over layers x w in 2..8 x a in 2..8 (:mod:`hysquant_rl.bits`); a policy is an
``(L, 2)`` int array of bits.
Costs are additive: inside a fully quantized policy a layer's cost does not depend on its neighbours
(see :meth:`hysquant_rl.hardware.cost.CostModel.quantized_grid`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp, nnls
from scipy.sparse import csr_array

from hysquant_rl.bits import GRID, GRID_BITS, MAX_BITS, grid_sum, to_bits, to_index


def proxy_grid(configs: Sequence[tuple[int, int]], values: np.ndarray) -> np.ndarray:
    """Extend ``values`` (L, C) measured at ``configs`` (C pairs in 2..8) to the full (L, GRID, GRID) grid."""
    configs = [(int(w), int(a)) for w, a in configs]
    values = np.clip(np.asarray(values, dtype=np.float64), 0.0, None)
    feats = np.array([[4.0 ** (MAX_BITS - w), 4.0 ** (MAX_BITS - a)] for w, a in configs])
    norm = feats.max(axis=0)
    feats_n = feats / norm  # conditioning: 4^6 spans too many orders for a plain lstsq
    wf, af = 4.0 ** (MAX_BITS - GRID_BITS) / norm[0], 4.0 ** (MAX_BITS - GRID_BITS) / norm[1]
    grid = np.empty((len(values), GRID, GRID))
    for l, row in enumerate(values):
        (aw, aa), _ = nnls(feats_n, row)
        grid[l] = aw * wf[:, None] + aa * af[None, :]
    for (w, a), col in zip(configs, values.T):
        grid[:, to_index(w), to_index(a)] = col
    # monotone: a pair never looks better than any pair with more bits on both operands
    grid = np.maximum.accumulate(grid[:, ::-1, :], axis=1)[:, ::-1, :]
    return np.maximum.accumulate(grid[:, :, ::-1], axis=2)[:, :, ::-1]


def lowest_costs(grid: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Each unit's lowest cost (L,) over its pairs allowed by ``mask`` (L, GRID, GRID) in ``grid`` (L, GRID, GRID):
    the lowest bits where costs fall with bits, another pair where they do not (the ``cpu`` profile's clipped
    sub-8-bit codes)."""
    return np.where(mask, grid, np.inf).min(axis=(1, 2))


def richest(mask: np.ndarray) -> np.ndarray:
    """The all-maximum-bits policy (L, 2)."""
    w = GRID - 1 - np.argmax(mask.any(axis=2)[:, ::-1], axis=1)
    a = GRID - 1 - np.argmax(mask.any(axis=1)[:, ::-1], axis=1)
    return to_bits(np.stack([w, a], axis=1))


def uniform_frontier(fits: Callable[[int, int], bool]) -> list[tuple[int, int]]:
    """Uniform pairs (w, a) in 2..8 that ``fits`` with no fitting pair above them on either operand: the only
    candidates for the best uniform policy, since more bits never hurt accuracy."""
    ok = {(w, a) for w in GRID_BITS.tolist() for a in GRID_BITS.tolist() if fits(w, a)}
    return sorted((w, a) for w, a in ok if (w + 1, a) not in ok and (w, a + 1) not in ok)


MIP_REL_GAP = 1e-6  # the ILP's optimality gap, relative to its optimum


@contextmanager
def _quiet_stdout() -> Iterator[None]:
    """File descriptor 1 to /dev/null: HiGHS prints notes of its own search straight there (not through Python,
    and whatever its ``disp`` option says)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def solve_ilp(
    objective: np.ndarray,
    mask: np.ndarray,
    costs: Mapping[str, np.ndarray],
    limits: Mapping[str, float],
    time_limit_s: float = 60.0,
) -> np.ndarray | None:
    """Minimise the summed ``objective`` (L, GRID, GRID) over one allowed pair per layer subject to
    ``sum costs[k] <= limits[k]`` for every budget ``k``. Returns the policy (L, 2), or None if infeasible.

    A solution is re-checked against the exact sums; if the solver's tolerance let one overshoot, its limit is
    tightened by the overshoot and the problem solved again. The objective is divided by a lower bound of its
    optimum (each layer at its best allowed pair): HiGHS stops at an absolute gap of 1e-6, which is several
    percent of a KL sum of 1e-4 nats; scaled, the gap that remains is the relative ``MIP_REL_GAP``.
    """
    cells = np.argwhere(mask)  # (K, 3): layer, w index, a index
    n_layers = mask.shape[0]
    c = objective[mask]
    floor = sum(float(objective[l][mask[l]].min()) for l in range(n_layers))
    c = c / max(floor, float(np.abs(c).max()) * 1e-6, 1e-300)
    pick = csr_array((np.ones(len(cells)), (cells[:, 0], np.arange(len(cells)))), shape=(n_layers, len(cells)))
    names = [k for k in limits if k in costs]
    scaled = {k: float(limits[k]) for k in names}
    for _ in range(4):
        constraints = [LinearConstraint(pick, 1, 1)]
        if names:
            rows = np.stack([costs[k][mask] / scaled[k] if scaled[k] > 0 else costs[k][mask] for k in names])
            constraints.append(LinearConstraint(rows, -np.inf, [1.0 if scaled[k] > 0 else 0.0 for k in names]))
        with _quiet_stdout():
            res = milp(
                c,
                constraints=constraints,
                integrality=np.ones(len(cells)),
                bounds=Bounds(0, 1),
                options={"time_limit": time_limit_s, "mip_rel_gap": MIP_REL_GAP},
            )
        if res.x is None:
            return None
        chosen = cells[res.x > 0.5]
        chosen = chosen[np.argsort(chosen[:, 0])]
        bits = to_bits(chosen[:, 1:])
        over = {k: grid_sum(costs[k], bits) / float(limits[k]) for k in names if float(limits[k]) > 0}
        worst = max(over.values(), default=0.0)
        if worst <= 1.0:
            return bits
        for k, ratio in over.items():
            if ratio > 1.0:
                scaled[k] /= ratio * (1 + 1e-9)
    return None


def project(
    bits: np.ndarray,
    objective: np.ndarray,
    mask: np.ndarray,
    costs: Mapping[str, np.ndarray],
    limits: Mapping[str, float],
) -> np.ndarray | None:
    """Lower bits of ``bits`` (L, 2) one step at a time until every ``sum costs[k] <= limits[k]``; each step
    lowers w or a of the layer with the smallest objective increase per unit of normalised cost saved on the
    budgets still exceeded. Returns the projected policy, or None when even the cheapest policy misses."""
    idx = to_index(bits).copy()
    n = len(idx)
    rows = np.arange(n)
    names = [k for k in limits if k in costs]
    totals = {k: float(costs[k][rows, idx[:, 0], idx[:, 1]].sum()) for k in names}
    while True:
        over = [k for k in names if totals[k] > limits[k]]
        if not over:
            return to_bits(idx)
        best = None
        for axis in (0, 1):  # lower w, or lower a
            new = idx.copy()
            new[:, axis] -= 1
            ok = new[:, axis] >= 0
            ok[ok] = mask[rows[ok], new[ok, 0], new[ok, 1]]
            if not ok.any():
                continue
            r, cur, nxt = rows[ok], idx[ok], new[ok]
            saved = sum(
                (costs[k][r, cur[:, 0], cur[:, 1]] - costs[k][r, nxt[:, 0], nxt[:, 1]]) / max(limits[k], 1e-300)
                for k in over
            )
            rise = objective[r, nxt[:, 0], nxt[:, 1]] - objective[r, cur[:, 0], cur[:, 1]]
            ratio = np.where(saved > 0, (np.maximum(rise, 0) + 1e-12) / np.where(saved > 0, saved, 1), np.inf)
            j = int(np.argmin(ratio))
            if np.isfinite(ratio[j]) and (best is None or ratio[j] < best[0]):
                best = (ratio[j], int(r[j]), axis)
        if best is None:
            return None
        _, layer, axis = best
        old = idx[layer].copy()
        idx[layer, axis] -= 1
        for k in names:
            totals[k] += float(costs[k][layer, idx[layer, 0], idx[layer, 1]] - costs[k][layer, old[0], old[1]])
