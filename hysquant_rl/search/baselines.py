"""The methods the field already uses, as ``search.method`` choices beside ``rl``. Each evaluates its
policies through the same :meth:`SearchProblem.finish` episode end (budget projection, reward, evaluation cache)
and records them like the agent's episodes, so every method writes the same outputs.

* ``uniform``: the best single (w, a) pair that meets every budget;
* ``greedy``: from the highest allowed bits, lower the layer with the smallest LUT sensitivity per unit of
  cost saved until every budget holds (AIMET AMP's walk; :func:`hysquant_rl.search.allocation.project`);
* ``ilp``: the multiple-choice knapsack over the LUT's ``search.proxy`` column (KL or top-1 drop) (HAWQ-V3,
  ModelOpt, MCT style), also the RL search's warm start;
* ``random``: ``search.episodes`` random policies in the pruned space, each made feasible by the same
  budget projection the episode end uses (plain sampling almost never fits a tight budget).

A method is a class with ``run(limits, round_index) -> policy (L, 2) | None``, built as
``cls(search_settings, problem, recorder, out)``; the RL agent (``agents/rl.py``) has the same shape.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from hysquant_rl.bits import grid_sum, to_bits, to_index
from hysquant_rl.search.allocation import richest, solve_ilp, uniform_frontier
from hysquant_rl.search.problem import SearchProblem
from hysquant_rl.search.recorder import Recorder
from hysquant_rl.settings import SearchSettings


def uniform_candidates(problem: SearchProblem, limits: dict[str, float]) -> list[np.ndarray]:
    """The uniform policies (L, 2) that can be the best one within ``limits``: pairs every layer allows (the
    pruned space) that meet every budget, with no such pair above them on either operand (more bits never hurt
    accuracy). The one rule for "best uniform within budget"."""
    n = problem.num_layers
    layer_limits = problem.layer_limits(limits)

    def fits(w: int, a: int) -> bool:
        bits = np.full((n, 2), (w, a))
        inside = problem.mask[:, to_index(w), to_index(a)].all()
        return bool(inside) and all(grid_sum(problem.costs[k], bits) <= v for k, v in layer_limits.items())

    return [np.full((n, 2), pair) for pair in uniform_frontier(fits)]


class Baseline:
    """``run(limits)`` evaluates :meth:`candidates` and returns the best policy (L, 2) within ``limits``, or None."""

    def __init__(self, search: SearchSettings, problem: SearchProblem, recorder: Recorder, out: Path) -> None:
        self.search, self.problem, self.recorder = search, problem, recorder

    def candidates(self) -> list[np.ndarray]:
        raise NotImplementedError

    def run(self, limits: dict[str, float], round_index: int = 0) -> np.ndarray | None:
        self.problem.limits = dict(limits)
        for bits in tqdm(self.candidates(), desc=f"{self.search.method} search", unit="policy", disable=None):
            self.recorder.record(self.problem.finish(np.asarray(bits, dtype=np.int64)))
        return self.recorder.best_within(limits)


class UniformSearch(Baseline):
    def candidates(self) -> list[np.ndarray]:
        return uniform_candidates(self.problem, self.problem.limits)


class GreedySearch(Baseline):
    def candidates(self) -> list[np.ndarray]:
        return [richest(self.problem.mask)]  # the episode end projects it onto the budgets greedily


class ILPSearch(Baseline):
    def candidates(self) -> list[np.ndarray]:
        p = self.problem
        bits = solve_ilp(p.proxy, p.mask, p.costs, p.layer_limits())
        return [] if bits is None else [bits]


class RandomSearch(Baseline):
    def candidates(self) -> list[np.ndarray]:
        rng = np.random.default_rng(self.search.seed)
        cells = [to_bits(np.argwhere(m)) for m in self.problem.mask]
        return [np.stack([c[rng.integers(len(c))] for c in cells]) for _ in range(self.search.episodes)]


BASELINES: dict[str, type[Baseline]] = {
    "uniform": UniformSearch,
    "greedy": GreedySearch,
    "ilp": ILPSearch,
    "random": RandomSearch,
}
