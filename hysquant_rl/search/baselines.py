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

Two controls for the RL agent, each given its ``search.episodes`` PTQ evaluations and no learning, so a benchmark
can tell what the agent's learning adds:

* ``local``: a hill climber from the ILP policy with the warm-started agent's exploration noise
  (``search.warm_start_noise_bits``, decayed by ``agent.noise_decay``), never re-proposing an evaluated policy;
* ``ilp-refine``: the ILP re-solved while its proxy is corrected by gains measured in the context of the best
  policy so far (``search.refine_groups`` groups of units), until a re-solve stops improving the reward.

A method is a class with ``run(limits, round_index) -> policy (L, 2) | None``, built as
``cls(search_settings, problem, recorder, out)``; the RL agent (``agents/rl.py``) has the same shape.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from hysquant_rl.bits import FP32_BITS, GRID, to_bits, to_index
from hysquant_rl.registry import Registry
from hysquant_rl.search.allocation import richest, uniform_frontier
from hysquant_rl.search.budget import within
from hysquant_rl.search.problem import SearchProblem, policy_key
from hysquant_rl.search.recorder import Recorder
from hysquant_rl.settings import SearchSettings

log = logging.getLogger(__name__)


def uniform_candidates(problem: SearchProblem, limits: dict[str, float]) -> list[np.ndarray]:
    """The uniform policies (L, 2) that can be the best one within ``limits``: pairs every unit allows (the pruned
    space; a unit whose space is FP32 alone, such as a LayerNorm input on a runtime, stays FP32) that meet every
    budget, with no such pair above them on either operand (more bits never hurt accuracy). The one rule for "best
    uniform within budget"."""
    float_only = problem.mask.sum(axis=(1, 2)) == 1  # the FP32 cell alone

    def uniform(w: int, a: int) -> np.ndarray:
        return problem.canonical(np.where(float_only[:, None], FP32_BITS, np.array([w, a])))

    def fits(w: int, a: int) -> bool:
        bits = uniform(w, a)
        i = to_index(bits)
        inside = problem.mask[np.arange(len(bits)), i[:, 0], i[:, 1]].all()
        return bool(inside) and all(within(problem.totals(bits), limits).values())

    return [uniform(*pair) for pair in uniform_frontier(fits)]


METHODS: Registry[Any] = Registry("search method", "search.method")
"""Search methods by ``search.method``: the baselines and controls here, registered where they are defined; the
agents' methods (``rl``, ``rl-cond``), which live above the library, are named lazily by the app."""


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


@METHODS.register("uniform")
class UniformSearch(Baseline):
    def candidates(self) -> list[np.ndarray]:
        return uniform_candidates(self.problem, self.problem.limits)


@METHODS.register("greedy")
class GreedySearch(Baseline):
    def candidates(self) -> list[np.ndarray]:
        return [richest(self.problem.mask)]  # the episode end projects it onto the budgets greedily


@METHODS.register("ilp")
class ILPSearch(Baseline):
    def candidates(self) -> list[np.ndarray]:
        p = self.problem
        bits = p.ilp()
        return [] if bits is None else [bits]


@METHODS.register("random")
class RandomSearch(Baseline):
    def candidates(self) -> list[np.ndarray]:
        rng = np.random.default_rng(self.search.seed)
        cells = [to_bits(np.argwhere(m)) for m in self.problem.mask]
        return [np.stack([c[rng.integers(len(c))] for c in cells]) for _ in range(self.search.episodes)]


@METHODS.register("local")
class LocalSearch(Baseline):
    """A hill climber from the ILP policy (or a given ``start``) with the RL agent's exploration and no learning:
    each episode mutates the incumbent (the best feasible episode so far) by round(N(0, sigma)) bits per operand,
    sigma ``search.warm_start_noise_bits`` decayed by ``agent.noise_decay`` per episode as the agent's. A mutant
    already evaluated is drawn again (up to :attr:`TRIES` times, sigma widening) so episodes are new evaluations."""

    TRIES = 50
    WIDEN = 1.1  # sigma grows by this factor per repeated draw ...
    MIN_SIGMA, MAX_SIGMA = 0.25, 2.0  # ... from at least MIN_SIGMA up to MAX_SIGMA bits

    def __init__(
        self,
        search: SearchSettings,
        problem: SearchProblem,
        recorder: Recorder,
        out: Path,
        start: np.ndarray | None = None,
    ) -> None:
        super().__init__(search, problem, recorder, out)
        self.rng = np.random.default_rng(search.seed)
        self.episode = 0  # across hardware rounds, as the agent's noise decay
        self.start = start  # (L, 2): the policy the climb starts from; None: the ILP's

    def initial(self) -> np.ndarray | None:
        """The climb's first policy: ``start`` fitted to the budgets when given, else the ILP's (None: none fits)."""
        return self.problem.ilp() if self.start is None else self.problem.fitted(self.start)

    def mutate(self, bits: np.ndarray, sigma: float) -> np.ndarray:
        """``bits`` (L, 2) with every w and a moved by round(N(0, sigma)) grid steps (FP32 is the step above 8 bits;
        a tied unit moves by its a's draw); a unit whose moved pair is not allowed keeps its pair."""
        p = self.problem
        idx = to_index(bits) + np.rint(self.rng.normal(0.0, sigma, size=bits.shape)).astype(np.int64)
        idx[p.tied, 0] = idx[p.tied, 1]
        ok = ((idx >= 0) & (idx < GRID)).all(axis=1)
        ok[ok] = p.mask[np.flatnonzero(ok), idx[ok, 0], idx[ok, 1]]
        return p.canonical(np.where(ok[:, None], to_bits(np.clip(idx, 0, GRID - 1)), bits))

    def propose(self, incumbent: np.ndarray) -> np.ndarray:
        sigma = self.search.warm_start_noise_bits * self.search.agent.noise_decay**self.episode
        for t in range(self.TRIES):
            s = sigma if t == 0 else min(max(sigma, self.MIN_SIGMA) * self.WIDEN**t, max(sigma, self.MAX_SIGMA))
            bits = self.mutate(incumbent, s)
            if policy_key(self.problem.fitted(bits)) not in self.problem.cache:
                break
        return bits  # after TRIES repeats: the last one, a repeat (no new evaluation)

    def run(self, limits: dict[str, float], round_index: int = 0) -> np.ndarray | None:
        p = self.problem
        p.limits = dict(limits)
        start = self.initial()
        if start is None:
            return self.recorder.best_within(limits)
        incumbent, best = p.canonical(start), -np.inf
        for e in tqdm(range(self.search.episodes), desc="local search", unit="policy", disable=None):
            info = p.finish(incumbent if e == 0 else self.propose(incumbent))
            self.recorder.record(info)
            self.episode += 1
            if info["feasible"] and info["reward"] >= best:
                incumbent, best = np.asarray(info["bits"]), info["reward"]
        return self.recorder.best_within(limits)


@METHODS.register("ilp-refine")
class ILPRefineSearch(Baseline):
    """The ILP re-solved with its proxy corrected in context, until that stops paying. From the ILP policy P, a
    round raises every unit of one of ``search.refine_groups`` contiguous groups to its richest allowed pair,
    measures the gain (a measurement, not an episode: it may miss the budgets), scales the group's proxy rows so
    the LUT predicts that gain (clipped to 0.1..10x, cumulative), re-solves the ILP and records its policy. It
    becomes P when it improves the reward; where it does not, the correction is damped (its square root, then its
    fourth root) and the ILP re-solved again; the search stops when no step improves, or before a round would
    spend more than ``search.episodes`` PTQ evaluations (the ILP episode, measurements and re-solves together)."""

    SCALE = (0.1, 10.0)
    STEPS = (1.0, 0.5, 0.25)  # exponents of the measured correction tried in turn until one improves

    def measured(self, metrics: dict[str, float]) -> float:
        """The metric the proxy column predicts (lower is better): KL, or minus top-1 for ``top1_drop``."""
        return metrics["kl"] if self.search.proxy == "kl" else -metrics["top1"]

    def run(self, limits: dict[str, float], round_index: int = 0) -> np.ndarray | None:
        p = self.problem
        p.limits = dict(limits)
        proxy = p.proxy.copy()  # scaled round by round; the episode end keeps the LUT's
        bits = p.ilp(proxy)
        if bits is None:
            return self.recorder.best_within(limits)
        n, budget, first = p.num_units, self.search.episodes, len(p.cache)

        def used() -> int:  # PTQ evaluations of this round so far (a cached policy costs none)
            return len(p.cache) - first

        info = p.finish(bits)
        self.recorder.record(info)
        incumbent = info
        top = p.canonical(richest(p.mask))
        top_i = to_index(top)
        groups = [g for g in np.array_split(np.arange(n), min(self.search.refine_groups, n)) if len(g)]
        rnd = 0
        while incumbent["feasible"]:
            P = np.asarray(incumbent["bits"])
            open_groups = [g for g in groups if (P[g] != top[g]).any()]
            if not open_groups or used() + len(open_groups) + 1 > budget:
                log.info(
                    "ilp-refine stops before round %d: %d/%d evaluations used, the round needs %d",
                    rnd,
                    used(),
                    budget,
                    len(open_groups) + 1 if open_groups else 0,
                )
                break
            base = self.measured(incumbent["metrics"])
            P_i = to_index(P)
            scales = np.ones(n)
            for g in open_groups:
                Q = P.copy()
                Q[g] = top[g]
                s = base - self.measured(p.metrics(Q))
                t = float((proxy[g, P_i[g, 0], P_i[g, 1]] - proxy[g, top_i[g, 0], top_i[g, 1]]).sum())
                scales[g] = float(np.clip(s / t, *self.SCALE)) if t > 1e-12 and np.isfinite(s) else 1.0
            # a damped step: the full correction first, then halved (in log scale) while the re-solve does not improve
            improved, tried = False, set()
            for step in self.STEPS:
                if used() + 1 > budget:
                    break
                trial = proxy * (scales**step)[:, None, None]
                new = p.ilp(trial)
                if new is None or policy_key(p.fitted(new)) in tried:  # a damped step that changes nothing
                    continue
                tried.add(policy_key(p.fitted(new)))
                info = p.finish(new)
                self.recorder.record(info)
                improved = info["feasible"] and info["reward"] > incumbent["reward"]
                log.info(
                    "ilp-refine round %d, step %g: %d/%d evaluations, %d groups re-measured, reward %.6g (%s)",
                    rnd,
                    step,
                    used(),
                    budget,
                    len(open_groups),
                    info["reward"],
                    "improved" if improved else f"best stays {incumbent['reward']:.6g}",
                )
                if improved:
                    proxy = trial
                    break
            if not improved:
                break
            incumbent, rnd = info, rnd + 1
        return self.recorder.best_within(limits)
