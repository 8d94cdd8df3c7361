"""The search problem every method solves: the units, their costs and allowed bits, the budgets, and one episode
end (budget projection -> cached PTQ evaluation on search-val -> reward).

Every search method (the RL agent through the Gymnasium adapter in ``envs/``, and each baseline) evaluates its
policies through :meth:`SearchProblem.finish`, so they share the projection, the reward and the evaluation cache.

Reward (HAQ-style, paper section 3.3)::

    reward = reward_scale * (score - FP32 score) - penalties,   score = top1 [%], -KL or -loss [nats]

``budget_mode``: ``project`` lowers bits where the LUT says it hurts least until every budget holds; ``penalty``
keeps the policy and subtracts ``penalty_weight`` x the relative excess per budget.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from hysquant_rl.bits import FP32_BITS, grid_sum
from hysquant_rl.search.allocation import project, proxy_grid
from hysquant_rl.search.budget import UNITS, Budgets, within
from hysquant_rl.units import LayerInfo

if TYPE_CHECKING:
    from hysquant_rl.lut.table import LUT
    from hysquant_rl.pipeline import Pipeline
    from hysquant_rl.settings import SearchSettings

BUDGETS = tuple(UNITS)  # latency_ms, energy_mj, size_mb


def policy_key(bits: Any) -> bytes:
    """The cache key of a policy (L, 2): its bit-widths as bytes."""
    return np.asarray(bits).astype(np.int8).tobytes()


@dataclass
class SearchProblem:
    """Everything an episode needs, computed once per search.

    Cost arrays are (L, GRID, GRID) over w, a in 2..8, additive over layers; ``fixed`` is each budget's
    policy-independent part (attention matmuls that are not units), so a policy's total is ``sum + fixed``.
    An activation-only unit's rows do not depend on w; its policies are kept in :meth:`canonical` form.
    """

    layers: list[LayerInfo]
    lut_features: np.ndarray  # (L, 2C) raw: top-1 drop per config, then KL per config
    mask: np.ndarray  # (L, GRID, GRID) bool: allowed pairs (pruning rules)
    proxy: np.ndarray  # (L, GRID, GRID) additive sensitivity proxy (KL), the projection's guide
    costs: dict[str, np.ndarray]  # BUDGETS -> (L, GRID, GRID)
    fixed: dict[str, float]  # BUDGETS -> policy-independent part
    reference: dict[str, float]  # BUDGETS -> uniform W8A8 total (normalises state features)
    limits: dict[str, float]  # the budgets in force (totals incl. fixed); absent = no budget
    evaluate: Callable[[np.ndarray], dict[str, float]]  # (L, 2) bits -> metrics on search-val
    fp32: dict[str, float]  # FP32 metrics on search-val
    warm_start: np.ndarray | None = None  # (L, 2): actions are offsets around it when set
    offset_range: int = 2  # bits an action can move away from the warm-start policy
    reward_metric: str = "kl"
    reward_scale: float = 1.0
    budget_mode: str = "project"
    penalty_weight: float = 10.0
    min_top1: float | None = None
    identity: dict[str, Any] = field(default_factory=dict)  # what the evaluations depend on: weights, LUT, budgets
    cache: dict[bytes, dict[str, float]] = field(default_factory=dict)
    worst_reward: float | None = None  # stands in for a NaN evaluation's reward, so the buffer stays finite
    eval_time_s: float = 0.0  # spent in ``evaluate`` (PTQ forward passes), to price the search's own overhead

    def __post_init__(self) -> None:
        self.weighted = np.array([layer.weighted for layer in self.layers])  # (L,) False: activation-only unit
        # an activation-only unit's proxy is read at (a, a) for every w, as its costs are
        weightless = ~self.weighted
        if weightless.any():
            steps = np.arange(self.proxy.shape[1])
            self.proxy = self.proxy.copy()
            self.proxy[weightless] = self.proxy[weightless][:, steps, steps][:, None, :]

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def canonical(self, bits: np.ndarray) -> np.ndarray:
        """``bits`` (L, 2) with every activation-only unit's w set to its a: its w changes neither accuracy nor
        cost, so policies that differ only there are one policy (one evaluation, one cache entry)."""
        bits = np.array(bits, dtype=np.int64)
        bits[~self.weighted, 0] = bits[~self.weighted, 1]
        return bits

    def totals(self, bits: np.ndarray) -> dict[str, float]:
        """Every budget's total (fixed part included) of a fully quantized policy ``bits`` (L, 2)."""
        return {k: grid_sum(self.costs[k], bits) + self.fixed[k] for k in BUDGETS}

    def metrics(self, bits: np.ndarray) -> dict[str, float]:
        """Search-val metrics of ``bits`` (L, 2), evaluated once per policy."""
        bits = self.canonical(bits)
        key = policy_key(bits)
        if key not in self.cache:
            start = time.perf_counter()
            self.cache[key] = dict(self.evaluate(bits))
            self.eval_time_s += time.perf_counter() - start
        return self.cache[key]

    def layer_limits(self, limits: dict[str, float] | None = None) -> dict[str, float]:
        """Budgets on the summed per-layer costs (the fixed part taken off) of ``limits`` (default: in force)."""
        return {k: v - self.fixed[k] for k, v in (self.limits if limits is None else limits).items()}

    def score(self, metrics: dict[str, float]) -> float:
        m = metrics[self.reward_metric]
        return m if self.reward_metric == "top1" else -m

    def reward(self, metrics: dict[str, float], totals: dict[str, float]) -> tuple[float, float]:
        """(reward, penalty) of an evaluated policy; penalty = weighted relative budget excess (penalty mode)
        plus the relative shortfall under the accuracy floor."""
        penalty = 0.0
        if self.budget_mode == "penalty":
            penalty += self.penalty_weight * sum(max(totals[k] / v - 1.0, 0.0) for k, v in self.limits.items())
        if self.min_top1 is not None and metrics["top1"] < self.min_top1:
            penalty += self.penalty_weight * (self.min_top1 - metrics["top1"]) / 100.0
        return self.reward_scale * (self.score(metrics) - self.score(self.fp32)) - penalty, penalty

    def finish(self, chosen: np.ndarray) -> dict[str, Any]:
        """The end of an episode: fit ``chosen`` (L, 2) to the budgets, evaluate it (cached by policy), and
        reward it. Returns the episode's record: bits, chosen, metrics, totals, reward, penalty, feasible,
        cached, skipped (a NaN evaluation)."""
        bits = chosen = self.canonical(chosen)
        if self.budget_mode == "project" and self.limits:
            projected = project(chosen, self.proxy, self.mask, self.costs, self.layer_limits())
            if projected is not None:
                bits = self.canonical(projected)
        cached = policy_key(bits) in self.cache
        metrics = self.metrics(bits)
        totals = self.totals(bits)
        reward, penalty = self.reward(metrics, totals)
        skipped = not np.isfinite(reward)
        if skipped:  # a NaN evaluation: logged and skipped by the recorder, never a best policy
            reward = -abs(self.reward_scale) if self.worst_reward is None else self.worst_reward
        else:
            self.worst_reward = reward if self.worst_reward is None else min(self.worst_reward, reward)
        feasible = all(within(totals, self.limits).values())
        return {
            "bits": bits,
            "chosen": chosen,
            "metrics": metrics,
            "totals": totals,
            "reward": reward,
            "penalty": penalty,
            "feasible": feasible and not skipped,
            "cached": cached,
            "skipped": skipped,
        }


def build_problem(search: SearchSettings, pipe: Pipeline, lut: LUT, budgets: Budgets) -> SearchProblem:
    """The :class:`SearchProblem` of a run: the pipeline's units and modelled costs, the pruned LUT (state
    features, allowed pairs, the ``search.proxy`` column as the projection's guide), the budgets, and the
    evaluation on search-val."""
    grids, fixed = pipe.cost.budget_grids()
    n = len(pipe.layers)

    return SearchProblem(
        layers=pipe.layers,
        lut_features=np.concatenate([lut.matrix("top1_drop"), lut.matrix("kl")], axis=1),
        mask=lut.mask(),
        proxy=proxy_grid(lut.configs, lut.matrix(search.proxy)),
        costs=grids,
        fixed=fixed,
        reference=budgets.reference,
        limits=dict(budgets.limits),
        evaluate=lambda bits: pipe.evaluator.evaluate(bits, "search_val").to_dict(),
        fp32=pipe.evaluator.evaluate([(FP32_BITS, FP32_BITS)] * n, "search_val").to_dict(),
        offset_range=search.offset_range,
        reward_metric=search.reward_metric,
        reward_scale=search.reward_scale,
        budget_mode=search.budget.mode,
        penalty_weight=search.budget.penalty_weight,
        min_top1=budgets.min_top1,
        identity={
            "model weights": pipe.weights_sha256,
            "data and LUT": lut.meta.get("key_sha256"),
            "budgets": {**budgets.limits, "min_top1": budgets.min_top1},
        },
    )
