"""Bit allocation over the (w, a) grid 2..8 x 2..8 with an additive per-layer proxy.

Three pieces every search method shares:

* :func:`proxy_grid` extends a LUT column measured at a few configurations (e.g. W4A4, W4A8, W8A4, W8A8) to
  every pair: per layer ``v(w, a) ~ alpha_w * 4^(8 - w) + alpha_a * 4^(8 - a)`` (min-max quantization noise
  power scales as Delta^2 ~ 4^-bits; an FP32 operand adds none), fitted by non-negative least squares; measured
  pairs keep their measured values, FP32 on both operands is 0, and the grid is made monotone (fewer bits never
  look better).
* :func:`solve_ilp`: the multiple-choice knapsack (one pair per layer, every budget a constraint, the proxy
  summed as objective) with scipy's MILP solver (HiGHS). Costs are divided by their limits so the solver's
  absolute tolerances are relative to the budget (in seconds they would be larger than the budget itself).
* :func:`project`: move units to cheaper cells until every budget holds, each time the move whose proxy increase
  per unit of (normalised) cost saved is smallest: HAQ's budget wall made sensitivity-aware. A move goes to a
  neighbouring allowed cell (:func:`hysquant_rl.space.neighbours`): one bit fewer on a box of integer bits,
  and on a runtime's executable space W8A8 <-> FP32, whichever way saves cost.

Arrays: ``(L, GRID, GRID)`` over units x w x a in 2..8 and FP32 (:mod:`hysquant_rl.bits`); a policy is an
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

from hysquant_rl.bits import CHOICES, FP32_INDEX, GRID, INT_BITS, MAX_BITS, grid_sum, to_bits, to_index
from hysquant_rl.hardware.cost import Boundaries
from hysquant_rl.space import neighbours


def proxy_grid(configs: Sequence[tuple[int, int]], values: np.ndarray) -> np.ndarray:
    """Extend ``values`` (L, C) measured at ``configs`` (C integer pairs in 2..8) to the full (L, GRID, GRID) grid."""
    configs = [(int(w), int(a)) for w, a in configs]
    values = np.clip(np.asarray(values, dtype=np.float64), 0.0, None)
    feats = np.array([[4.0 ** (MAX_BITS - w), 4.0 ** (MAX_BITS - a)] for w, a in configs])
    norm = feats.max(axis=0)
    feats_n = feats / norm  # conditioning: 4^6 spans too many orders for a plain lstsq
    noise = np.append(4.0 ** (MAX_BITS - INT_BITS), 0.0)  # per grid index; an FP32 operand adds no noise
    wf, af = noise / norm[0], noise / norm[1]
    grid = np.empty((len(values), GRID, GRID))
    for l, row in enumerate(values):
        (aw, aa), _ = nnls(feats_n, row)
        grid[l] = aw * wf[:, None] + aa * af[None, :]
    for (w, a), col in zip(configs, values.T):
        grid[:, to_index(w), to_index(a)] = col
    # an FP32 operand never looks worse than the same operand at 8 bits (the fit extrapolates it; noise in the
    # measured pairs could put it above them), and FP32 on both is exact
    eight = FP32_INDEX - 1
    grid[:, FP32_INDEX, :] = np.minimum(grid[:, FP32_INDEX, :], grid[:, eight, :])
    grid[:, :, FP32_INDEX] = np.minimum(grid[:, :, FP32_INDEX], grid[:, :, eight])
    grid[:, FP32_INDEX, FP32_INDEX] = 0.0
    # monotone: a pair never looks better than any pair with more bits on both operands
    grid = np.maximum.accumulate(grid[:, ::-1, :], axis=1)[:, ::-1, :]
    return np.maximum.accumulate(grid[:, :, ::-1], axis=2)[:, :, ::-1]


def lowest_costs(grid: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Each unit's lowest cost (L,) over its pairs allowed by ``mask`` (L, GRID, GRID) in ``grid`` (L, GRID, GRID):
    the lowest bits where costs fall with bits, another pair where they do not (FP32 where a runtime runs a unit's
    float kernel faster than its integer one)."""
    return np.where(mask, grid, np.inf).min(axis=(1, 2))


def richest(mask: np.ndarray) -> np.ndarray:
    """The policy (L, 2) of each unit's richest allowed cell: the most bits on w, then on a (FP32 where allowed)."""
    flat = mask.reshape(len(mask), -1)
    last = flat.shape[1] - 1 - np.argmax(flat[:, ::-1], axis=1)  # row-major: the highest w, then the highest a
    return to_bits(np.stack(np.unravel_index(last, mask.shape[1:]), axis=1))


def uniform_frontier(fits: Callable[[int, int], bool]) -> list[tuple[int, int]]:
    """Uniform pairs (w, a), bits 2..8 or FP32, that ``fits`` with no fitting pair above them on either operand: the
    only candidates for the best uniform policy, since more bits never hurt accuracy."""
    ok = {(i, j) for i, w in enumerate(CHOICES) for j, a in enumerate(CHOICES) if fits(w, a)}
    return sorted((CHOICES[i], CHOICES[j]) for i, j in ok if (i + 1, j) not in ok and (i, j + 1) not in ok)


MIP_REL_GAP = 1e-6  # the ILP's optimality gap, relative to its optimum
TOLERANCE = 1e-9
"""Relative: a total this close above its budget still meets it. Totals summed in another order differ in their last
bits (FP32 at ``budget.latency_ratio=1.0`` of FP32 summed unit by unit); every comparison of a cost with a budget
(:func:`solve_ilp`, :func:`project`, :func:`hysquant_rl.search.budget.within`) allows this, and nothing more."""


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
    boundaries: Mapping[str, Boundaries] | None = None,
) -> np.ndarray | None:
    """Minimise the summed ``objective`` (L, GRID, GRID) over one allowed pair per layer subject to
    ``sum costs[k] (+ boundaries[k]) <= limits[k]`` for every budget ``k``. Returns the policy (L, 2), or None if
    infeasible.

    ``boundaries`` add pairwise terms to a budget (:class:`Boundaries`): one continuous variable per edge and
    direction, bounded below by the difference of the two units' integer indicators, so that a boundary is paid
    exactly where the policy has one. A solution is re-checked against the exact sums; if the solver's tolerance let
    one overshoot, its limit is tightened by the overshoot and the problem solved again. The objective is divided by
    a lower bound of its optimum (each layer at its best allowed pair): HiGHS stops at an absolute gap of 1e-6, which
    is several percent of a KL sum of 1e-4 nats; scaled, the gap that remains is the relative ``MIP_REL_GAP``.
    """
    boundaries = {k: b for k, b in (boundaries or {}).items() if k in limits and len(b.edges)}
    cells = np.argwhere(mask)  # (K, 3): layer, w index, a index
    n_units, k_cells = mask.shape[0], len(cells)
    c = objective[mask]
    floor = sum(float(objective[l][mask[l]].min()) for l in range(n_units))
    c = c / max(floor, float(np.abs(c).max()) * 1e-6, 1e-300)
    # boundary variables: per budget with boundaries, (to_float, to_int) per edge, after the cells
    extra = {k: (k_cells + 2 * i * len(b.edges), b) for i, (k, b) in enumerate(boundaries.items())}
    n_vars = k_cells + 2 * sum(len(b.edges) for b in boundaries.values())
    c = np.concatenate([c, np.zeros(n_vars - k_cells)])
    pick = csr_array((np.ones(k_cells), (cells[:, 0], np.arange(k_cells))), shape=(n_units, n_vars))
    integer = cells[:, 2] != FP32_INDEX  # a cell whose activations are quantized runs integer kernels
    names = [k for k in limits if k in costs]
    scaled = {k: float(limits[k]) for k in names}
    link = _boundary_links(extra, cells, integer, n_vars)
    for _ in range(4):
        constraints = [LinearConstraint(pick, 1, 1), *link]
        if names:
            rows = np.zeros((len(names), n_vars))
            for r, k in enumerate(names):
                rows[r, :k_cells] = costs[k][mask]
                if k in extra:
                    start, b = extra[k]
                    e = len(b.edges)
                    rows[r, start : start + e], rows[r, start + e : start + 2 * e] = b.to_float, b.to_int
                rows[r] /= scaled[k] if scaled[k] > 0 else 1.0
            constraints.append(LinearConstraint(rows, -np.inf, [1.0 if scaled[k] > 0 else 0.0 for k in names]))
        with _quiet_stdout():
            res = milp(
                c,
                constraints=constraints,
                integrality=np.concatenate([np.ones(k_cells), np.zeros(n_vars - k_cells)]),
                bounds=Bounds(0, 1),
                options={"time_limit": time_limit_s, "mip_rel_gap": MIP_REL_GAP},
            )
        if res.x is None:
            return None
        chosen = cells[res.x[:k_cells] > 0.5]
        chosen = chosen[np.argsort(chosen[:, 0])]
        bits = to_bits(chosen[:, 1:])
        over = {
            k: (grid_sum(costs[k], bits) + (boundaries[k].total(bits) if k in boundaries else 0.0)) / float(limits[k])
            for k in names
            if float(limits[k]) > 0
        }
        worst = max(over.values(), default=0.0)
        if worst <= 1.0 + TOLERANCE:
            return bits
        for k, ratio in over.items():
            if ratio > 1.0 + TOLERANCE:
                scaled[k] /= ratio * (1 + TOLERANCE)
    return None


def _boundary_links(
    extra: Mapping[str, tuple[int, Boundaries]], cells: np.ndarray, integer: np.ndarray, n_vars: int
) -> list[LinearConstraint]:
    """to_float[e] >= int(u) - int(v) and to_int[e] >= int(v) - int(u) for every edge e = (u, v), where int(l) is
    the sum of unit l's integer cells."""
    rows, n = [], 0
    for start, b in extra.values():
        for e, (u, v) in enumerate(b.edges):
            for var, (plus, minus) in ((start + e, (u, v)), (start + len(b.edges) + e, (v, u))):
                row = np.zeros(n_vars)
                row[: len(cells)] = integer * ((cells[:, 0] == plus).astype(float) - (cells[:, 0] == minus))
                row[var] = -1.0
                rows.append(row)
                n += 1
    if not rows:
        return []
    return [LinearConstraint(csr_array(np.array(rows)), -np.inf, np.zeros(n))]


def project(
    bits: np.ndarray,
    objective: np.ndarray,
    mask: np.ndarray,
    costs: Mapping[str, np.ndarray],
    limits: Mapping[str, float],
    moves: np.ndarray | None = None,
) -> np.ndarray | None:
    """Move units of ``bits`` (L, 2) to neighbouring allowed cells until every ``sum costs[k] <= limits[k]``;
    ``moves`` are :func:`~hysquant_rl.space.neighbours` of ``mask`` (computed when not given). Each step takes
    the move with the smallest objective increase per unit of normalised cost saved on the budgets still exceeded (a
    move that saves nothing is never taken). Returns the projected policy, or None when no move helps and a budget
    is still missed."""
    moves = neighbours(mask) if moves is None else moves
    idx = to_index(bits).copy()
    n = len(idx)
    rows = np.arange(n)
    names = [k for k in limits if k in costs]
    totals = {k: float(costs[k][rows, idx[:, 0], idx[:, 1]].sum()) for k in names}
    while True:
        over = [k for k in names if totals[k] > limits[k] * (1 + TOLERANCE)]  # float summation: as budget.within
        if not over:
            return to_bits(idx)
        nxt = moves[rows, idx[:, 0], idx[:, 1]]  # (n, 4 directions, 2)
        ok = nxt[..., 0] >= 0
        r, d = np.nonzero(ok)
        if not len(r):
            return None
        cur, new = idx[r], nxt[r, d]
        saved = sum(
            (costs[k][r, cur[:, 0], cur[:, 1]] - costs[k][r, new[:, 0], new[:, 1]]) / max(limits[k], 1e-300)
            for k in over
        )
        rise = objective[r, new[:, 0], new[:, 1]] - objective[r, cur[:, 0], cur[:, 1]]
        ratio = np.where(saved > 0, (np.maximum(rise, 0) + 1e-12) / np.where(saved > 0, saved, 1), np.inf)
        j = int(np.argmin(ratio))
        if not np.isfinite(ratio[j]):
            return None
        unit, old = int(r[j]), idx[r[j]].copy()
        idx[unit] = new[j]
        for k in names:
            totals[k] += float(costs[k][unit, idx[unit, 0], idx[unit, 1]] - costs[k][unit, old[0], old[1]])
