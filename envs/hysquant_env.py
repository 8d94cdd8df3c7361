"""The bit-width allocation MDP (HAQ-style, paper section 3.3).

One episode walks the L quantizable layers in forward order. At step l the agent sees layer l's state and
answers with an action in [0, 1]^2 that becomes (w_bits, a_bits) inside the layer's allowed range (from the
LUT's pruning rules). After the last layer the policy is made to fit the budgets (``budget_mode``:
``project`` lowers bits where the LUT says it hurts least; ``penalty`` leaves it and subtracts a weighted
relative excess), evaluated with PTQ on search-val, and rewarded:

    reward = reward_scale * (score - FP32 score) - penalties,   score = top1 [%], -KL or -loss [nats]

Intermediate steps return reward 0; the terminal reward is what an agent learns from (the SB3 callback
copies it onto every transition of the episode, as HAQ does).

Observation (all in [0, 1], F = 29 + 2 C for C LUT configurations):
    0      layer index / L
    1-9    kind one-hot (conv, depthwise, pointwise, attention-qkv, attention-proj, mlp-fc1, mlp-fc2,
           classifier, other)
    10     transformer-family flag
    11-12  log in / out channels       (min-max normalised over the model's layers, as HAQ)
    13-14  kernel size, stride         (normalised)
    15     depthwise flag
    16     log feature-map size or token count (normalised)
    17-18  log params, log MACs        (normalised)
    19..   LUT row: top-1 drop per configuration, then KL per configuration (normalised per column)
    +0,+1  the layer's share of the model's W8A8 latency and energy
    +2,+3  previous action (w, a)
    +4..   per budget (latency, energy, size): cost committed so far / limit, and the cheapest possible
           cost of the remaining layers / limit (clipped to [0, 1]); 0, 0 when that budget is not set
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from hysquant_rl.allocation import cheapest, project, to_index
from hysquant_rl.layers import KINDS, LayerInfo

BUDGETS = ("latency_ms", "energy_mj", "size_mb")
SCORES = ("top1", "kl", "loss")


def policy_key(bits: np.ndarray) -> bytes:
    """The cache key of a policy (L, 2): its bit-widths as bytes."""
    return np.asarray(bits).astype(np.int8).tobytes()


@dataclass
class SearchProblem:
    """Everything an episode needs, computed once per search.

    Cost arrays are (L, 7, 7) over w, a in 2..8, additive over layers; ``fixed`` is each budget's
    policy-independent part (attention matmuls), so a policy's total is ``sum + fixed``.
    """

    layers: list[LayerInfo]
    lut_features: np.ndarray  # (L, 2C) raw: top-1 drop per config, then KL per config
    mask: np.ndarray  # (L, 7, 7) bool: allowed pairs (pruning rules)
    proxy: np.ndarray  # (L, 7, 7) additive sensitivity proxy (KL), the projection's guide
    costs: dict[str, np.ndarray]  # BUDGETS -> (L, 7, 7)
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
    cache: dict[bytes, dict[str, float]] = field(default_factory=dict)
    worst_reward: float | None = None  # stands in for a NaN evaluation's reward, so the buffer stays finite
    eval_time_s: float = 0.0  # spent in ``evaluate`` (PTQ forward passes), to price the search's own overhead

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def totals(self, bits: np.ndarray) -> dict[str, float]:
        i = to_index(bits)
        rows = np.arange(len(i))
        return {k: float(self.costs[k][rows, i[:, 0], i[:, 1]].sum()) + self.fixed[k] for k in BUDGETS}

    def metrics(self, bits: np.ndarray) -> dict[str, float]:
        """Search-val metrics of ``bits`` (L, 2), evaluated once per policy."""
        key = policy_key(bits)
        if key not in self.cache:
            start = time.perf_counter()
            self.cache[key] = dict(self.evaluate(bits))
            self.eval_time_s += time.perf_counter() - start
        return self.cache[key]

    def layer_limits(self) -> dict[str, float]:
        """Budgets on the summed per-layer costs (the fixed part taken off)."""
        return {k: v - self.fixed[k] for k, v in self.limits.items()}

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


def _minmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    lo, hi = x.min(axis=0), x.max(axis=0)
    return (x - lo) / np.where(hi > lo, hi - lo, 1.0)


class HySquantEnv(gym.Env):
    """See the module docstring. ``info`` of the terminal step carries every metric of the episode."""

    metadata = {"render_modes": []}

    def __init__(self, problem: SearchProblem) -> None:
        super().__init__()
        self.problem = p = problem
        n = p.num_layers
        layers = p.layers
        kind = np.zeros((n, len(KINDS)))
        kind[np.arange(n), [KINDS.index(l.kind) for l in layers]] = 1.0
        fmap = [l.tokens for l in layers]
        static = np.column_stack([
            np.log([l.in_channels for l in layers]), np.log([l.out_channels for l in layers]),
            [l.kernel[0] for l in layers], [l.stride[0] for l in layers],
        ])
        logs = np.log(np.column_stack([fmap, [max(l.params, 1) for l in layers], [max(l.macs, 1) for l in layers]]))
        w8a8 = {k: p.costs[k][:, 6, 6] for k in ("latency_ms", "energy_mj")}
        share = np.column_stack([w8a8[k] / max(w8a8[k].sum(), 1e-300) for k in ("latency_ms", "energy_mj")])
        self._static = np.column_stack([
            np.arange(n) / n, kind, [l.family == "transformer" for l in layers], _minmax(static[:, :2]),
            _minmax(static[:, 2:]), [l.kind == "depthwise" for l in layers], _minmax(logs[:, :1]),
            _minmax(logs[:, 1:]), _minmax(p.lut_features), share,
        ]).astype(np.float32)
        lo = cheapest(p.mask)
        self._min_cost = {k: p.costs[k][np.arange(n), lo[:, 0] - 2, lo[:, 1] - 2] for k in BUDGETS}
        self._w_range = np.stack([np.argmax(p.mask.any(2), 1), 6 - np.argmax(p.mask.any(2)[:, ::-1], 1)], 1) + 2
        self._a_range = np.stack([np.argmax(p.mask.any(1), 1), 6 - np.argmax(p.mask.any(1)[:, ::-1], 1)], 1) + 2
        dim = self._static.shape[1] + 2 + 2 * len(BUDGETS)
        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(dim,), dtype=np.float32)
        self.action_space = gym.spaces.Box(0.0, 1.0, shape=(2,), dtype=np.float32)
        self._bits = np.zeros((n, 2), dtype=np.int64)
        self._step = 0
        self._prev = np.zeros(2, dtype=np.float32)
        self._used = dict(p.fixed)

    # -- action -> bits ----------------------------------------------------------------------------------
    def to_bits(self, layer: int, action: np.ndarray) -> np.ndarray:
        """(w, a) for ``action`` in [0, 1]^2: HAQ's round((bmax - bmin + 1) * a + bmin - 0.5) inside the
        layer's allowed range; with a warm start, an offset of up to ``offset_range`` bits around it
        (action 0.5 = the warm-start bits)."""
        action = np.clip(np.asarray(action, dtype=np.float64), 0.0, 1.0)
        lo = np.array([self._w_range[layer, 0], self._a_range[layer, 0]])
        hi = np.array([self._w_range[layer, 1], self._a_range[layer, 1]])
        p = self.problem
        if p.warm_start is None:
            bits = np.round((hi - lo + 1) * action + lo - 0.5)
        else:
            bits = p.warm_start[layer] + np.round((action - 0.5) * 2 * (p.offset_range + 0.5))
        return np.clip(bits, lo, hi).astype(np.int64)

    def to_action(self, layer: int, bits: np.ndarray) -> np.ndarray:
        """An action that :meth:`to_bits` maps to ``bits`` (inverse, for seeding a replay buffer)."""
        lo = np.array([self._w_range[layer, 0], self._a_range[layer, 0]])
        hi = np.array([self._w_range[layer, 1], self._a_range[layer, 1]])
        p = self.problem
        if p.warm_start is None:
            action = (np.asarray(bits) - lo + 0.5) / (hi - lo + 1)
        else:
            action = 0.5 + (np.asarray(bits) - p.warm_start[layer]) / (2 * (p.offset_range + 0.5))
        return np.clip(action, 0.0, 1.0).astype(np.float32)

    # -- gymnasium API -----------------------------------------------------------------------------------
    def _obs(self) -> np.ndarray:
        p, l = self.problem, self._step
        budget = []
        for k in BUDGETS:
            if k in p.limits:
                limit = p.limits[k]
                rest = self._min_cost[k][l:].sum()
                budget += [min(self._used[k] / limit, 1.0), min(rest / limit, 1.0)]
            else:
                budget += [0.0, 0.0]
        return np.concatenate([self._static[l], self._prev, np.asarray(budget, dtype=np.float32)]).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._step = 0
        self._bits[:] = 0
        self._prev = np.zeros(2, dtype=np.float32)
        self._used = dict(self.problem.fixed)  # cost committed so far, per budget
        return self._obs(), {}

    def step(self, action: np.ndarray):
        l = self._step
        self._bits[l] = self.to_bits(l, action)
        for k in BUDGETS:
            self._used[k] += self.problem.costs[k][l, self._bits[l, 0] - 2, self._bits[l, 1] - 2]
        self._prev = np.clip(np.asarray(action, dtype=np.float32), 0.0, 1.0)
        self._step += 1
        if self._step < self.problem.num_layers:
            return self._obs(), 0.0, False, False, {}
        info = self.finish(self._bits.copy())
        self._step = self.problem.num_layers - 1  # the terminal observation repeats the last layer's
        obs = self._obs()
        return obs, float(info["reward"]), True, False, info

    def finish(self, chosen: np.ndarray) -> dict[str, Any]:
        """Fit ``chosen`` (L, 2) to the budgets, evaluate it (cached by policy), and reward it."""
        p = self.problem
        bits = chosen
        if p.budget_mode == "project" and p.limits:
            projected = project(chosen, p.proxy, p.mask, p.costs, p.layer_limits())
            if projected is not None:
                bits = projected
        cached = policy_key(bits) in p.cache
        metrics = p.metrics(bits)
        totals = p.totals(bits)
        reward, penalty = p.reward(metrics, totals)
        skipped = not np.isfinite(reward)
        if skipped:  # a NaN evaluation: logged and skipped by the recorder, never a best policy
            reward = -abs(p.reward_scale) if p.worst_reward is None else p.worst_reward
        else:
            p.worst_reward = reward if p.worst_reward is None else min(p.worst_reward, reward)
        feasible = all(totals[k] <= v * (1 + 1e-9) for k, v in p.limits.items())
        return {
            "bits": bits, "chosen": chosen, "metrics": metrics, "totals": totals, "reward": reward,
            "penalty": penalty, "feasible": feasible and not skipped, "cached": cached, "skipped": skipped,
        }
