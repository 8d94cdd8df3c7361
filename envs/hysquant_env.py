"""The bit-width allocation MDP (HAQ-style, paper section 3.3) as a Gymnasium environment: a thin adapter over
:class:`hysquant_rl.search.problem.SearchProblem`, which owns the costs, budgets, evaluation cache and reward.

One episode walks the L quantizable layers in forward order. At step l the agent sees layer l's state and
answers with an action in [0, 1]^2 that becomes (w_bits, a_bits) inside the layer's allowed range (from the
LUT's pruning rules). After the last layer the problem ends the episode (:meth:`SearchProblem.finish`: budget
projection, cached PTQ evaluation on search-val, reward).

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

from typing import Any

import gymnasium as gym
import numpy as np

from hysquant_rl.bits import GRID, MAX_BITS, to_index, uniform_slice
from hysquant_rl.bits import to_bits as index_to_bits
from hysquant_rl.search.allocation import lowest_costs
from hysquant_rl.search.problem import BUDGETS, SearchProblem
from hysquant_rl.units import KINDS


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
        static = np.column_stack(
            [
                np.log([l.in_channels for l in layers]),
                np.log([l.out_channels for l in layers]),
                [l.kernel[0] for l in layers],
                [l.stride[0] for l in layers],
            ]
        )
        logs = np.log(np.column_stack([fmap, [max(l.params, 1) for l in layers], [max(l.macs, 1) for l in layers]]))
        w8a8 = {k: uniform_slice(p.costs[k], MAX_BITS, MAX_BITS) for k in ("latency_ms", "energy_mj")}
        share = np.column_stack([w8a8[k] / max(w8a8[k].sum(), 1e-300) for k in ("latency_ms", "energy_mj")])
        self._static = np.column_stack(
            [
                np.arange(n) / n,
                kind,
                [l.family == "transformer" for l in layers],
                _minmax(static[:, :2]),
                _minmax(static[:, 2:]),
                [l.kind == "depthwise" for l in layers],
                _minmax(logs[:, :1]),
                _minmax(logs[:, 1:]),
                _minmax(p.lut_features),
                share,
            ]
        ).astype(np.float32)
        self._min_cost = {k: lowest_costs(p.costs[k], p.mask) for k in BUDGETS}
        top = GRID - 1
        self._w_range = index_to_bits(
            np.stack([np.argmax(p.mask.any(2), 1), top - np.argmax(p.mask.any(2)[:, ::-1], 1)], 1)
        )
        self._a_range = index_to_bits(
            np.stack([np.argmax(p.mask.any(1), 1), top - np.argmax(p.mask.any(1)[:, ::-1], 1)], 1)
        )
        dim = self._static.shape[1] + 2 + 2 * len(BUDGETS)
        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(dim,), dtype=np.float32)
        self.action_space = gym.spaces.Box(0.0, 1.0, shape=(2,), dtype=np.float32)
        self._bits = np.zeros((n, 2), dtype=np.int64)
        self._step = 0
        self._prev = np.zeros(2, dtype=np.float32)
        self._used = dict(p.fixed)
        self.final: np.ndarray | None = None  # the policy this episode evaluates, when chosen for it (novelty)
        self.proposed_repeat = False  # the policy the actor and its noise chose had been evaluated already

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

    def bits_to_action(self, bits: float) -> float:
        """A distance of ``bits`` bit-widths in action units around a warm start: one bit is
        ``1 / (2 offset_range + 1)`` (see :meth:`to_bits`)."""
        return bits / (2 * self.problem.offset_range + 1)

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

    def ending(self, action: np.ndarray) -> np.ndarray | None:
        """The policy (L, 2) this episode ends with if ``action`` is its last, else None (parallel episodes
        evaluate all ending policies at once before they step)."""
        if self._step != self.problem.num_layers - 1:
            return None
        bits = self._bits.copy()
        bits[self._step] = self.to_bits(self._step, action)
        return bits

    def _commit(self, bits: np.ndarray, action: np.ndarray) -> None:
        """The current unit takes ``bits`` (w, a), chosen by ``action``: its costs are committed, the action becomes
        the previous-action feature, and the episode moves to the next unit."""
        l = self._step
        self._bits[l] = bits
        for k in BUDGETS:
            self._used[k] += self.problem.costs[k][(l, *to_index(bits))]
        self._prev = np.clip(np.asarray(action, dtype=np.float32), 0.0, 1.0)
        self._step += 1

    def step(self, action: np.ndarray):
        self._commit(self.to_bits(self._step, action), action)
        if self._step < self.problem.num_layers:
            return self._obs(), 0.0, False, False, {}
        info = self.problem.finish(self._bits.copy(), self.final)
        info["proposed_repeat"], self.proposed_repeat, self.final = self.proposed_repeat, False, None
        self._step = self.problem.num_layers - 1  # the terminal observation repeats the last layer's
        obs = self._obs()
        return obs, float(info["reward"]), True, False, info

    def finish(self, chosen: np.ndarray) -> dict[str, Any]:
        """The episode end of :meth:`SearchProblem.finish` (projection, cached evaluation, reward)."""
        return self.problem.finish(chosen)

    def trajectory(self, bits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(observations, next observations, actions) of an episode that chose ``bits`` (L, 2) itself: (L, D),
        (L, D), (L, 2). The replay buffer stores these for the policy an episode evaluated (after the budget
        projection and any novelty step), so the critic learns the reward of what was evaluated. Leaves this
        environment reset."""
        n = self.problem.num_layers
        obs = np.zeros((n + 1, self.observation_space.shape[0]), dtype=np.float32)
        actions = np.stack([self.to_action(l, bits[l]) for l in range(n)])
        obs[0], _ = self.reset()
        for l in range(n):  # step's bookkeeping without the episode end (no evaluation)
            self._commit(bits[l], actions[l])
            self._step = min(self._step, n - 1)  # the terminal observation repeats the last layer's
            obs[l + 1] = self._obs()
        self.reset()
        return obs[:-1], obs[1:], actions
