"""The methods the field already uses, as ``search.method`` choices beside ``rl``. Each evaluates its
policies through the same :class:`envs.HySquantEnv` episode end (budget projection, reward, evaluation cache)
and records them like the agent's episodes, so every method writes the same outputs.

* ``uniform``: the best single (w, a) pair that meets every budget;
* ``greedy``: from the highest allowed bits, lower the layer with the smallest LUT sensitivity per unit of
  cost saved until every budget holds (AIMET AMP's walk; :func:`hysquant_rl.allocation.project`);
* ``ilp``: the multiple-choice knapsack over the LUT's ``search.proxy`` column (KL or top-1 drop) (HAWQ-V3, ModelOpt, MCT style), also the RL
  search's warm start;
* ``random``: ``search.episodes`` random policies in the pruned space, each made feasible by the same
  budget projection the environment uses (plain sampling almost never fits a tight budget).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from envs import HySquantEnv, SearchProblem
from hysquant_rl.allocation import grid_sum, richest, solve_ilp, uniform_frontier


class Baseline:
    """``run(limits)`` returns the best policy (L, 2) the method finds within ``limits``, or None."""

    def __init__(self, cfg: Any, pipe: Any, problem: SearchProblem, recorder: Any, out: Path) -> None:
        self.cfg, self.pipe, self.problem, self.recorder = cfg, pipe, problem, recorder
        self.env = HySquantEnv(problem)

    def layer_limits(self) -> dict[str, float]:
        return self.problem.layer_limits()

    def evaluate(self, bits: np.ndarray) -> dict[str, Any]:
        info = self.env.finish(np.asarray(bits, dtype=np.int64))
        self.recorder.record(info)
        return info

    def candidates(self) -> list[np.ndarray]:
        raise NotImplementedError

    def run(self, limits: dict[str, float], round_index: int = 0) -> np.ndarray | None:
        self.problem.limits = dict(limits)
        for bits in tqdm(self.candidates(), desc=f"{self.cfg.search.method} search", unit="policy", disable=None):
            self.evaluate(bits)
        return self.recorder.best_within(limits)


class UniformSearch(Baseline):
    def candidates(self) -> list[np.ndarray]:
        p, n = self.problem, self.problem.num_layers
        limits = self.layer_limits()

        def fits(w: int, a: int) -> bool:
            bits = np.full((n, 2), (w, a))
            inside = p.mask[:, w - 2, a - 2].all()
            return inside and all(grid_sum(p.costs[k], bits) <= v for k, v in limits.items())

        return [np.full((n, 2), pair) for pair in uniform_frontier(fits)]


class GreedySearch(Baseline):
    def candidates(self) -> list[np.ndarray]:
        return [richest(self.problem.mask)]  # the episode end projects it onto the budgets greedily


class ILPSearch(Baseline):
    def candidates(self) -> list[np.ndarray]:
        p = self.problem
        bits = solve_ilp(p.proxy, p.mask, p.costs, self.layer_limits())
        return [] if bits is None else [bits]


class RandomSearch(Baseline):
    def candidates(self) -> list[np.ndarray]:
        rng = np.random.default_rng(int(self.cfg.search.seed))
        cells = [np.argwhere(m) + 2 for m in self.problem.mask]
        episodes = int(self.cfg.search.episodes)
        return [np.stack([c[rng.integers(len(c))] for c in cells]) for _ in range(episodes)]


BASELINES: dict[str, type[Baseline]] = {
    "uniform": UniformSearch, "greedy": GreedySearch, "ilp": ILPSearch, "random": RandomSearch,
}
