"""The honest controls for the RL agent (``local``, ``ilp-refine``) on small synthetic problems whose true metric is
an analytic formula: checked against brute force over every allowed policy, not against the methods' own pieces."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import numpy as np
import pytest

from hysquant_rl.bits import GRID, GRID_BITS, grid_sum, to_bits, to_index
from hysquant_rl.errors import HySquantError
from hysquant_rl.prune import box_mask
from hysquant_rl.search.baselines import METHODS
from hysquant_rl.search.budget import within
from hysquant_rl.search.problem import SearchProblem
from hysquant_rl.units import UnitInfo
from tests.conftest import search_settings

BITS = GRID_BITS  # 2..8 and FP32 (32: no quantization noise); the puzzles below use integer bits only (fp32=False)


def q(bits):
    """Quantization noise power of ``bits``, 1 at 5 bits (Delta^2 ~ 4^-bits)."""
    return 4.0 ** (5 - np.asarray(bits, dtype=np.float64))


def unit(i: int, weighted: bool = True) -> UnitInfo:
    kind = "conv" if weighted else "layernorm-in"
    op = "conv2d" if weighted else "layernorm"
    return UnitInfo(i, f"u{i}", op, kind, "cnn", 1, 1, (1, 1), (1, 1), 1, (1,), (1,), 1, 1 if weighted else 0, 1)


class Log:
    """What a method needs of the recorder: ``record`` every episode's record, ``best_within`` the best-rewarded
    feasible policy (no accuracy floor here)."""

    def __init__(self) -> None:
        self.history: list[dict] = []

    def record(self, info: dict) -> None:
        self.history.append(info)

    def best_within(self, limits: dict[str, float]) -> np.ndarray | None:
        ok = [e for e in self.history if not e["skipped"] and all(within(e["totals"], limits).values())]
        return None if not ok else np.asarray(max(ok, key=lambda e: e["reward"])["bits"])


def synthetic(lut_sens, true, mask, cost, limit, weighted=None, proxy_metric="kl") -> SearchProblem:
    """A problem over ``len(lut_sens)`` units: the LUT's additive proxy ``lut_sens[l] * (q(w) + q(a))``, one
    additive energy cost ``cost`` (L, GRID, GRID) under ``limit``, and search-val metrics from ``true`` (a policy
    (L, 2) -> KL): top-1 = 100 - 10 KL, so both proxy columns rank alike."""
    n = len(lut_sens)
    weighted = [True] * n if weighted is None else weighted
    grid = np.asarray(lut_sens, dtype=np.float64)[:, None, None] * (q(BITS)[:, None] + q(BITS)[None, :])[None]
    if proxy_metric == "top1_drop":
        grid = 10.0 * grid

    def evaluate(bits):
        kl = float(true(np.asarray(bits)))
        return {"top1": 100.0 - 10.0 * kl, "top5": 100.0, "kl": kl, "loss": kl}

    zero = np.zeros_like(cost)
    return SearchProblem(
        units=[unit(i, w) for i, w in enumerate(weighted)],
        lut_features=np.zeros((n, 8)),
        mask=mask,
        proxy=grid,
        costs={"latency_ms": zero, "energy_mj": cost, "size_mb": zero},
        fixed={"latency_ms": 0.0, "energy_mj": 0.0, "size_mb": 0.0},
        reference={"latency_ms": 1.0, "energy_mj": 1.0, "size_mb": 1.0},
        limits={"energy_mj": float(limit)},
        evaluate=evaluate,
        fp32={"top1": 100.0, "top5": 100.0, "kl": 0.0, "loss": 0.0},
    )


def allowed_policies(problem: SearchProblem) -> np.ndarray:
    """Every allowed policy in canonical form (an activation-only unit's w is its a): (N, L, 2)."""
    cells = []
    for l, m in enumerate(problem.mask):
        pairs = to_bits(np.argwhere(m))
        if not problem.weighted[l]:
            pairs = np.unique(np.stack([pairs[:, 1], pairs[:, 1]], axis=1), axis=0)
        cells.append(pairs)
    picks = np.array(list(itertools.product(*[range(len(c)) for c in cells])))
    return np.stack([cells[l][picks[:, l]] for l in range(len(cells))], axis=1)


def brute_force(problem: SearchProblem, objective) -> tuple[float, np.ndarray]:
    """The lowest ``objective`` (policies (N, L, 2) -> (N,)) over every allowed policy within the energy limit,
    and that policy."""
    bits = allowed_policies(problem)
    i, rows = to_index(bits), np.arange(problem.num_units)
    cost = problem.costs["energy_mj"][rows, i[..., 0], i[..., 1]].sum(axis=1)
    bits = bits[cost <= problem.limits["energy_mj"] * (1 + 1e-9)]
    values = objective(bits)
    return float(values.min()), bits[int(np.argmin(values))]


def proxy_sum(problem: SearchProblem):
    rows = np.arange(problem.num_units)
    return lambda bits: problem.proxy[rows, to_index(bits)[..., 0], to_index(bits)[..., 1]].sum(axis=-1)


def run(problem: SearchProblem, method: str, **settings) -> tuple[Log, np.ndarray | None]:
    """``method`` run once on ``problem`` with ``conf/search.yaml``'s settings, ``settings`` replacing some."""
    search = dataclasses.replace(SETTINGS, method=method, **settings)
    log = Log()
    best = METHODS.get(method)(search, problem, log, Path("unused")).run(dict(problem.limits))
    return log, best


SETTINGS = search_settings()


def test_controls_are_registered_with_their_settings():
    assert {"local", "ilp-refine"} <= set(METHODS.names())
    assert SETTINGS.refine_groups == 16
    assert search_settings(["search.method=ilp-refine", "search.refine_groups=3"]).refine_groups == 3
    with pytest.raises(HySquantError, match="search.refine_groups"):
        search_settings(["search.refine_groups=0"])


# -- local -------------------------------------------------------------------------------------------------------
def interacting():
    """5 units, w in 3..8 and a in 7..8 (unit 4 activation-only, a in 6..8), cost w + a/2 per unit; the LUT sees
    every unit alike, the truth adds an interaction between units 0 and 1 that an additive proxy cannot see."""
    n = 5
    w_rng, a_rng = [(3, 8)] * 4 + [(2, 8)], [(7, 8)] * 4 + [(6, 8)]
    cost = np.zeros((n, GRID, GRID))
    cost[:] = BITS[:, None] + BITS[None, :] / 2
    cost[4] = (BITS / 2)[None, :]  # activation-only: its w costs nothing

    def true(bits):  # (..., L, 2) -> (...)
        w, a = bits[..., 0], bits[..., 1]
        noise = q(w[..., :4]).sum(-1) + q(a).sum(-1)
        return 1e-3 * (noise + 20.0 * q(w[..., 0]) * q(w[..., 1]))

    mask = box_mask(w_rng, a_rng, fp32=False)
    return synthetic([1e-3] * n, true, mask, cost, 4 * (5 + 4) + 4, weighted=[True] * 4 + [False]), true


def incumbents(history):
    """The incumbent before each episode, as the hill climber defines it: the latest feasible episode whose
    reward is at least every earlier feasible one's."""
    out, bits, best = [], None, -np.inf
    for e in history:
        out.append(bits)
        if e["feasible"] and e["reward"] >= best:
            bits, best = np.asarray(e["bits"]), e["reward"]
    return out


def test_local_search_climbs_from_the_ilp_policy_to_the_brute_force_optimum():
    p, true = interacting()
    log, best = run(p, "local", episodes=60, seed=3)
    h = log.history
    assert len(h) == 60
    # episode 0 is the ILP policy: optimal for the LUT's additive proxy (brute force)
    proxy_best, _ = brute_force(p, proxy_sum(p))
    assert grid_sum(p.proxy, h[0]["bits"]) == pytest.approx(proxy_best, rel=1e-9)
    assert np.array_equal(h[0]["bits"], h[0]["chosen"])
    # every episode is a new evaluation (the space holds thousands of feasible policies): no repeats proposed
    assert len({np.asarray(e["bits"]).tobytes() for e in h}) == len(p.cache) == 60
    # the interaction makes the ILP policy wrong; the climber finds the true optimum
    true_best, _ = brute_force(p, true)
    assert -h[0]["reward"] > true_best * 1.05
    assert max(e["reward"] for e in h if e["feasible"]) == pytest.approx(-true_best, rel=1e-9)
    assert best is not None and true(best) == pytest.approx(true_best, rel=1e-9)
    # proposals are mutations of the incumbent: small moves of a few bits
    moves = [np.abs(e["chosen"] - inc).sum() for e, inc in zip(h[1:], incumbents(h)[1:])]
    assert np.median(moves) <= 3 and min(moves) > 0


def test_local_search_is_seeded_and_never_leaves_the_allowed_pairs():
    def episodes(seed):
        p, _ = interacting()
        log, _ = run(p, "local", episodes=25, seed=seed)
        return p, [np.asarray(e["bits"]) for e in log.history]

    p, first = episodes(7)
    assert all(np.array_equal(a, b) for a, b in zip(first, episodes(7)[1]))
    assert not all(np.array_equal(a, b) for a, b in zip(first, episodes(8)[1]))
    for bits in first:
        i = to_index(bits)
        assert p.mask[np.arange(p.num_units), i[:, 0], i[:, 1]].all()
        assert bits[4, 0] == bits[4, 1]  # the activation-only unit in canonical form


@pytest.mark.parametrize("seed", range(4))
def test_local_search_repeats_only_when_it_must(seed):
    """One activation-only unit whose a may be 6, 7 or 8, no binding budget: 3 policies. 5 episodes evaluate all
    3 (with no exploration noise: sigma widens on repeats), then repeat, as they must."""
    mask = box_mask([(2, 8)], [(6, 8)], fp32=False)
    p = synthetic([1.0], lambda b: q(b[..., 1]).sum(), mask, np.zeros((1, GRID, GRID)), 1.0, weighted=[False])
    log, best = run(p, "local", episodes=5, seed=seed, warm_start_noise_bits=0.0)
    assert len(log.history) == 5 and len(p.cache) == 3
    assert log.history[0]["bits"].tolist() == [[8, 8]] and best.tolist() == [[8, 8]]


# -- ilp-refine ----------------------------------------------------------------------------------------------------
def misjudged(proxy_metric="kl"):
    """6 units, w in 3..8 (a fixed at 8), cost w per unit, budget 30 (5 bits each). The truth is additive, as the
    LUT, but units 2 and 3 (group 1 of 3) are 10x as sensitive as the LUT says. By hand (q(4), q(5), q(6), q(7)
    = 4, 1, 1/4, 1/16): the ILP keeps every unit at 5 bits; the optimum gives units 2 and 3 six bits from units 0
    and 1 (10 x 3/4 = 7.5 > 1.1 x 3 = 3.3 > 10 x 3/16 = 1.875: one bit each, no more)."""
    n = 6
    mask = box_mask([(3, 8)] * n, [(8, 8)] * n, fp32=False)
    cost = np.zeros((n, GRID, GRID))
    cost[:] = BITS[:, None]
    lut = np.array([1.0, 1.1, 1.0, 1.0, 1.2, 1.3])
    sens = lut * [1, 1, 10, 10, 1, 1]

    def true(bits):
        return 1e-3 * (sens * (q(bits[..., 0]) + q(bits[..., 1]))).sum(-1)

    return synthetic(1e-3 * lut, true, mask, cost, 5 * n, proxy_metric=proxy_metric), true


@pytest.mark.parametrize("proxy", ["kl", "top1_drop"])
def test_ilp_refine_moves_bits_to_the_group_the_lut_underrates(proxy):
    p, true = misjudged(proxy)
    log, best = run(p, "ilp-refine", episodes=40, refine_groups=3, proxy=proxy)
    h = log.history
    assert h[0]["bits"][:, 0].tolist() == [5] * 6  # the ILP policy first
    assert best[:, 0].tolist() == [4, 4, 6, 6, 5, 5]
    assert true(best) == pytest.approx(brute_force(p, true)[0], rel=1e-12)
    # round 0 measures 3 groups and re-solves (better); round 1 measures 3 more and re-solves to the same policy
    # (not better): stop. 1 + 3 + 1 + 3 evaluations, 3 episodes.
    assert len(h) == 3 and len(p.cache) == 8
    assert h[1]["reward"] > h[0]["reward"] and np.array_equal(h[2]["bits"], h[1]["bits"])


@pytest.mark.parametrize(("episodes", "evaluations", "recorded"), [(1, 1, 1), (4, 1, 1), (5, 5, 2), (8, 5, 2)])
def test_ilp_refine_stays_within_its_evaluations(episodes, evaluations, recorded):
    """A round costs its measurements and a re-solve (3 + 1 here): it is not started unless all would fit."""
    p, _ = misjudged()
    log, _ = run(p, "ilp-refine", episodes=episodes, refine_groups=3)
    assert len(p.cache) == evaluations <= episodes and len(log.history) == recorded


def test_ilp_refine_stops_when_the_lut_was_right():
    """The truth is the LUT: the measured gains confirm it, the re-solve returns the ILP policy, and the search
    stops after one round; more groups than units leaves one unit per group."""
    n = 6
    mask = box_mask([(3, 8)] * n, [(8, 8)] * n, fp32=False)
    cost = np.zeros((n, GRID, GRID))
    cost[:] = BITS[:, None]
    p = synthetic([1e-3] * n, lambda b: 1e-3 * (q(b[..., 0]) + q(b[..., 1])).sum(-1), mask, cost, 5 * n)
    log, best = run(p, "ilp-refine", episodes=200, refine_groups=16)
    assert len(log.history) == 2 and np.array_equal(log.history[1]["bits"], log.history[0]["bits"])
    assert len(p.cache) == 1 + n and best[:, 0].tolist() == [5] * n
