"""The additive-proxy allocators: the ILP against brute force, the budget projection, the proxy grid."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from hysquant_rl.bits import GRID_BITS as BITS
from hysquant_rl.bits import grid_sum
from hysquant_rl.lut.prune import box_mask
from hysquant_rl.search.allocation import lowest_costs, project, proxy_grid, richest, solve_ilp


def synthetic(seed: int, layers: int = 4):
    rng = np.random.default_rng(seed)
    w = 4.0 ** (8 - BITS)
    objective = (
        rng.uniform(0.1, 1, (layers, 1, 1)) * w[None, :, None] + rng.uniform(0.1, 1, (layers, 1, 1)) * w[None, None, :]
    )
    lat = (
        rng.uniform(1, 3, (layers, 1, 1)) * BITS[None, :, None]
        + rng.uniform(1, 3, (layers, 1, 1)) * BITS[None, None, :]
    )
    size = rng.uniform(1, 5, (layers, 1, 1)) * BITS[None, :, None] + 0 * BITS[None, None, :]
    ranges_w = [tuple(sorted(rng.choice(BITS, 2, replace=False))) for _ in range(layers)]
    ranges_a = [tuple(sorted(rng.choice(BITS, 2, replace=False))) for _ in range(layers)]
    mask = box_mask(ranges_w, ranges_a)
    return objective, mask, {"latency": lat, "size": size}


def lowest(costs, mask):
    """Each budget's lowest reachable total over the policies ``mask`` allows."""
    return {k: float(lowest_costs(v, mask).sum()) for k, v in costs.items()}


@pytest.mark.parametrize("seed", range(6))
def test_ilp_equals_brute_force(seed):
    objective, mask, costs = synthetic(seed)
    lo = lowest(costs, mask)
    hi = {k: grid_sum(v, richest(mask)) for k, v in costs.items()}
    limits = {k: lo[k] + 0.4 * (hi[k] - lo[k]) for k in costs}
    cells = [np.argwhere(m) + 2 for m in mask]
    best, best_bits = np.inf, None
    for combo in itertools.product(*cells):
        bits = np.array(combo)
        if all(grid_sum(costs[k], bits) <= limits[k] for k in costs):
            v = grid_sum(objective, bits)
            if v < best:
                best, best_bits = v, bits
    bits = solve_ilp(objective, mask, costs, limits)
    assert bits is not None and best_bits is not None
    assert grid_sum(objective, bits) == pytest.approx(best, rel=1e-9)
    assert all(grid_sum(costs[k], bits) <= limits[k] for k in costs)
    assert mask[np.arange(len(bits)), bits[:, 0] - 2, bits[:, 1] - 2].all()


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
    objective, mask, costs = synthetic(3, layers=12)
    top = richest(mask)
    lo = lowest(costs, mask)
    hi = {k: grid_sum(v, top) for k, v in costs.items()}
    limits = {"latency": lo["latency"] + 0.3 * (hi["latency"] - lo["latency"])}
    bits = project(top, objective, mask, costs, limits)
    assert grid_sum(costs["latency"], bits) <= limits["latency"]
    assert (bits <= top).all() and mask[np.arange(12), bits[:, 0] - 2, bits[:, 1] - 2].all()
    assert np.array_equal(project(bits, objective, mask, costs, limits), bits)  # already feasible: unchanged
    assert project(top, objective, mask, costs, {"latency": 0.5 * lo["latency"]}) is None
    # sensitivity-aware: beats lowering blindly from the last layer backwards (HAQ's wall)
    blind = top.copy()
    floor = np.stack([np.argmax(mask.any(axis=2), axis=1), np.argmax(mask.any(axis=1), axis=1)], axis=1) + BITS[0]
    while grid_sum(costs["latency"], blind) > limits["latency"]:
        for l in reversed(range(12)):
            if blind[l, 0] > floor[l, 0] or blind[l, 1] > floor[l, 1]:
                axis = 0 if blind[l, 0] > floor[l, 0] else 1
                blind[l, axis] -= 1
                break
    assert grid_sum(objective, bits) < grid_sum(objective, blind)


def test_proxy_grid():
    configs = [(4, 4), (4, 8), (8, 4), (8, 8)]
    aw, aa = np.array([0.5, 2.0]), np.array([1.0, 0.1])
    truth = aw[:, None, None] * 4.0 ** (8 - BITS)[None, :, None] + aa[:, None, None] * 4.0 ** (8 - BITS)[None, None, :]
    values = np.stack([truth[:, w - 2, a - 2] for w, a in configs], axis=1)
    grid = proxy_grid(configs, values)
    assert np.allclose(grid, truth, rtol=1e-6)  # data that follows the noise model is recovered
    noisy = values * np.array([1.0, 1.3, 0.7, 2.0])
    grid = proxy_grid(configs, noisy)
    measured = np.stack([grid[:, w - 2, a - 2] for w, a in configs], axis=1)
    assert np.allclose(measured[0], noisy[0])  # layer 0's noisy values are still monotone: kept as measured
    assert (measured[1] >= noisy[1] - 1e-12).all() and measured[1, 0] == pytest.approx(noisy[1, 1])  # W4A4 >= W4A8
    assert (np.diff(grid, axis=1) <= 1e-12).all() and (np.diff(grid, axis=2) <= 1e-12).all()  # monotone
