"""The additive-proxy allocators: the ILP against brute force, the budget projection, the proxy grid."""

from __future__ import annotations

import numpy as np
import pytest

from hysquant_rl.bits import FP32_INDEX, INT_BITS, grid_sum, to_bits, to_index
from hysquant_rl.bits import GRID_BITS as BITS
from hysquant_rl.hardware.cost import Boundaries
from hysquant_rl.prune import box_mask
from hysquant_rl.search.allocation import lowest_costs, project, proxy_grid, richest, solve_ilp


def synthetic(seed: int, units: int = 4):
    rng = np.random.default_rng(seed)
    w = 4.0 ** (8 - BITS)
    objective = (
        rng.uniform(0.1, 1, (units, 1, 1)) * w[None, :, None] + rng.uniform(0.1, 1, (units, 1, 1)) * w[None, None, :]
    )
    lat = (
        rng.uniform(1, 3, (units, 1, 1)) * BITS[None, :, None] + rng.uniform(1, 3, (units, 1, 1)) * BITS[None, None, :]
    )
    size = rng.uniform(1, 5, (units, 1, 1)) * BITS[None, :, None] + 0 * BITS[None, None, :]
    ranges_w = [tuple(sorted(rng.choice(INT_BITS, 2, replace=False))) for _ in range(units)]
    ranges_a = [tuple(sorted(rng.choice(INT_BITS, 2, replace=False))) for _ in range(units)]
    mask = box_mask(ranges_w, ranges_a)
    return objective, mask, {"latency": lat, "size": size}


def lowest(costs, mask):
    """Each budget's lowest reachable total over the policies ``mask`` allows."""
    return {k: float(lowest_costs(v, mask).sum()) for k, v in costs.items()}


@pytest.mark.parametrize("seed", range(6))
def test_ilp_equals_brute_force(seed):
    objective, mask, costs = synthetic(seed, units=3)
    lo = lowest(costs, mask)
    hi = {k: grid_sum(v, richest(mask)) for k, v in costs.items()}
    limits = {k: lo[k] + 0.4 * (hi[k] - lo[k]) for k in costs}
    # every policy at once: per unit its allowed cells, summed over units by broadcasting
    cells = [np.argwhere(m) for m in mask]
    grids = np.meshgrid(*[np.arange(len(c)) for c in cells], indexing="ij")

    def total(table):
        picked = [cells[l][grids[l]] for l in range(len(cells))]  # (..., 2) cell of unit l in every policy
        return sum(table[l][c[..., 0], c[..., 1]] for l, c in enumerate(picked))

    ok = np.all([total(costs[k]) <= limits[k] for k in costs], axis=0)
    value = np.where(ok, total(objective), np.inf)
    pick = np.unravel_index(np.argmin(value), value.shape)
    best = float(value[pick])
    best_bits = to_bits(np.stack([cells[l][pick[l]] for l in range(len(cells))]))
    bits = solve_ilp(objective, mask, costs, limits)
    assert bits is not None and best_bits is not None
    assert grid_sum(objective, bits) == pytest.approx(best, rel=1e-9)
    assert all(grid_sum(costs[k], bits) <= limits[k] for k in costs)
    i = to_index(bits)
    assert mask[np.arange(len(bits)), i[:, 0], i[:, 1]].all()


def test_ilp_infeasible_and_tiny_costs():
    objective, mask, costs = synthetic(0)
    lo = lowest(costs, mask)
    assert solve_ilp(objective, mask, costs, {k: 0.99 * lo[k] for k in costs}) is None
    # costs in seconds (1e-7 scale) must not overshoot through solver tolerances
    tiny = {k: v * 1e-9 for k, v in costs.items()}
    limits = {k: 1.0001 * lo[k] * 1e-9 for k in costs}
    bits = solve_ilp(objective, mask, tiny, limits)
    assert bits is not None and all(grid_sum(tiny[k], bits) <= limits[k] for k in costs)


def test_project_meets_budget_and_keeps_feasible():
    objective, mask, costs = synthetic(3, units=12)
    top = richest(mask)
    lo = lowest(costs, mask)
    hi = {k: grid_sum(v, top) for k, v in costs.items()}
    limits = {"latency": lo["latency"] + 0.3 * (hi["latency"] - lo["latency"])}
    bits = project(top, objective, mask, costs, limits)
    assert grid_sum(costs["latency"], bits) <= limits["latency"]
    i = to_index(bits)
    assert (bits <= top).all() and mask[np.arange(12), i[:, 0], i[:, 1]].all()
    assert np.array_equal(project(bits, objective, mask, costs, limits), bits)  # already feasible: unchanged
    assert project(top, objective, mask, costs, {"latency": 0.5 * lo["latency"]}) is None
    # sensitivity-aware: beats lowering blindly from the last layer backwards (HAQ's wall)
    blind = top.copy()
    floor = np.stack([np.argmax(mask.any(axis=2), axis=1), np.argmax(mask.any(axis=1), axis=1)], axis=1)
    while grid_sum(costs["latency"], blind) > limits["latency"]:
        i = to_index(blind)
        for l in reversed(range(12)):
            if i[l, 0] > floor[l, 0] or i[l, 1] > floor[l, 1]:
                axis = 0 if i[l, 0] > floor[l, 0] else 1
                i[l, axis] -= 1
                blind = to_bits(i)
                break
    assert grid_sum(objective, bits) < grid_sum(objective, blind)


def test_proxy_grid():
    configs = [(4, 4), (4, 8), (8, 4), (8, 8)]
    aw, aa = np.array([0.5, 2.0]), np.array([1.0, 0.1])
    truth = aw[:, None, None] * 4.0 ** (8 - BITS)[None, :, None] + aa[:, None, None] * 4.0 ** (8 - BITS)[None, None, :]
    values = np.stack([truth[:, w - 2, a - 2] for w, a in configs], axis=1)
    grid = proxy_grid(configs, values)
    assert np.allclose(grid, truth, rtol=1e-6, atol=1e-12)  # data that follows the noise model is recovered
    assert (grid[:, FP32_INDEX, FP32_INDEX] == 0).all()  # FP32 on both operands: no quantization noise
    assert np.allclose(grid[:, FP32_INDEX, :-1], aa[:, None] * 4.0 ** (8 - INT_BITS)[None, :])  # FP32 weights: a's
    noisy = values * np.array([1.0, 1.3, 0.7, 2.0])
    grid = proxy_grid(configs, noisy)
    measured = np.stack([grid[:, w - 2, a - 2] for w, a in configs], axis=1)
    assert np.allclose(measured[0], noisy[0])  # layer 0's noisy values are still monotone: kept as measured
    assert (measured[1] >= noisy[1] - 1e-12).all() and measured[1, 0] == pytest.approx(noisy[1, 1])  # W4A4 >= W4A8
    assert (np.diff(grid, axis=1) <= 1e-12).all() and (np.diff(grid, axis=2) <= 1e-12).all()  # monotone


@pytest.mark.parametrize("seed", range(3))
def test_ilp_with_boundaries_equals_brute_force(seed):
    """Units that run int8 or FP32 (a runtime's space) with a pairwise cost where neighbours differ (the Q/DQ of an
    int8/float boundary): the integer program pays a boundary exactly where the policy has one, so its optimum is the
    brute-force optimum over all 2^n policies."""
    rng = np.random.default_rng(seed)
    n, i8, f = 7, to_index(8), FP32_INDEX
    mask = np.zeros((n, 8, 8), dtype=bool)
    mask[:, i8, i8] = mask[:, f, f] = True
    latency, objective = np.zeros((n, 8, 8)), np.zeros((n, 8, 8))
    latency[:, i8, i8], latency[:, f, f] = rng.uniform(1, 2, n), rng.uniform(1, 2, n)
    objective[:, i8, i8] = rng.uniform(0.1, 1, n)
    edges = np.array([[l, l + 1] for l in range(n - 1)] + [[0, 3], [2, 6]])
    b = Boundaries(edges, rng.uniform(0.2, 0.6, len(edges)), rng.uniform(0.2, 0.6, len(edges)))

    def total(int8):  # int8: (n,) bool
        bits = np.where(int8[:, None], [8, 8], [32, 32])
        return grid_sum(latency, bits) + b.total(bits), grid_sum(objective, bits)

    policies = [np.array([c >> l & 1 for l in range(n)], dtype=bool) for c in range(2**n)]
    lat = np.array([total(p)[0] for p in policies])
    limit = float(np.quantile(lat, 0.3))
    best = min(total(p)[1] for p, t in zip(policies, lat) if t <= limit)
    bits = solve_ilp(objective, mask, {"latency": latency}, {"latency": limit}, boundaries={"latency": b})
    assert bits is not None
    assert grid_sum(latency, bits) + b.total(bits) <= limit * (1 + 1e-9)
    assert grid_sum(objective, bits) == pytest.approx(best, abs=1e-9)
