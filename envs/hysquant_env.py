"""The bit-width allocation MDP (HAQ-style, paper section 3.3) as a Gymnasium environment: a thin adapter over
:class:`hysquant_rl.search.problem.SearchProblem`, which owns the costs, budgets, evaluation cache and reward.

One episode walks the L quantizable layers in forward order. At step l the agent sees layer l's state and
answers with an action in [0, 1]^2 that becomes (w_bits, a_bits) inside the layer's allowed cells (the search
space's, after the LUT's pruning rules): grid steps over 2..8 and FP32 (:mod:`hysquant_rl.bits`), the nearest
allowed cell where the space is not a box (:func:`hysquant_rl.space.snap`); a tied unit (W8A8 or FP32 on a
runtime) reads its ``a`` action for both operands. After the last layer the problem ends the episode
(:meth:`SearchProblem.finish`: budget projection, cached PTQ evaluation on search-val, reward).

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

With ``condition=True`` (the budget-conditioned agent, :mod:`agents.conditioned`) the observation goes on with the
target it answers (:data:`CONDITION_FEATURES` more, all in [0, 1]):

    +0..2  per budget (latency, energy, size): its limit as a fraction of the way from the cheapest allowed policy
           to the problem's reference (uniform W8A8 in the simulated space), clipped; 0 when that budget is not set
    +3..5  the device profile's cost scale: log10 of the reference's latency [ms], energy [mJ] and size [MB],
           mapped by (log10 x + 3) / 6 (1 us .. 1 s, 1 uJ .. 1 J, 1 kB .. 1 GB onto [0, 1]), clipped
    +6,+7  the warm start's (w, a) at this unit as grid indices / 7 (the centre of the offsets); 0, 0 without one
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from hysquant_rl.bits import GRID, MAX_BITS, to_index, uniform_slice
from hysquant_rl.bits import to_bits as index_to_bits
from hysquant_rl.budget_kinds import ENERGY, LATENCY
from hysquant_rl.budget_kinds import KEYS as BUDGETS
from hysquant_rl.search.allocation import lowest_costs
from hysquant_rl.search.problem import SearchProblem
from hysquant_rl.search.ranking import SCORE
from hysquant_rl.space import index_ranges, snap
from hysquant_rl.units import KINDS

CONDITION_FEATURES = 2 * len(BUDGETS) + 2  # the conditioned observation's extra features (module docstring)


def _minmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    lo, hi = x.min(axis=0), x.max(axis=0)
    return (x - lo) / np.where(hi > lo, hi - lo, 1.0)


class HySquantEnv(gym.Env):
    """See the module docstring. ``info`` of the terminal step carries every metric of the episode."""

    metadata = {"render_modes": []}

    def __init__(self, problem: SearchProblem, condition: bool = False) -> None:
        super().__init__()
        self.problem = p = problem
        self.condition = condition
        n = p.num_units
        units = p.units
        kind = np.zeros((n, len(KINDS)))
        kind[np.arange(n), [KINDS.index(l.kind) for l in units]] = 1.0
        fmap = [l.tokens for l in units]
        static = np.column_stack(
            [
                np.log([l.in_channels for l in units]),
                np.log([l.out_channels for l in units]),
                [l.kernel[0] for l in units],
                [l.stride[0] for l in units],
            ]
        )
        logs = np.log(np.column_stack([fmap, [max(l.params, 1) for l in units], [max(l.macs, 1) for l in units]]))
        w8a8 = {k: uniform_slice(p.costs[k], MAX_BITS, MAX_BITS) for k in (LATENCY, ENERGY)}
        share = np.column_stack([w8a8[k] / max(w8a8[k].sum(), 1e-300) for k in (LATENCY, ENERGY)])
        self._static = np.column_stack(
            [
                np.arange(n) / n,
                kind,
                [l.family == "transformer" for l in units],
                _minmax(static[:, :2]),
                _minmax(static[:, 2:]),
                [l.kind == "depthwise" for l in units],
                _minmax(logs[:, :1]),
                _minmax(logs[:, 1:]),
                _minmax(p.lut_features),
                share,
            ]
        ).astype(np.float32)
        self._min_cost = {k: lowest_costs(p.costs[k], p.mask) for k in BUDGETS}
        # the cheapest possible cost of units l..L-1 (L,) per budget, and the cheapest policy's total
        self._rest = {k: np.array([self._min_cost[k][l:].sum() for l in range(n)]) for k in BUDGETS}
        self._low = {k: float(self._min_cost[k].sum()) + p.fixed[k] for k in BUDGETS}
        self._w_range, self._a_range = index_ranges(p.mask)  # (L, 2) each: lowest and highest allowed grid index
        self._lo = np.stack([self._w_range[:, 0], self._a_range[:, 0]], axis=1)  # (L, 2): lowest allowed index
        self._hi = np.stack([self._w_range[:, 1], self._a_range[:, 1]], axis=1)  # (L, 2): highest
        dim = self._static.shape[1] + 2 + 2 * len(BUDGETS) + (CONDITION_FEATURES if condition else 0)
        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(dim,), dtype=np.float32)
        self.action_space = gym.spaces.Box(0.0, 1.0, shape=(2,), dtype=np.float32)
        self._bits = np.zeros((n, 2), dtype=np.int64)
        self._step = 0
        self._prev = np.zeros(2, dtype=np.float32)
        self._used = dict(p.fixed)
        self.final: np.ndarray | None = None  # the policy this episode evaluates, when chosen for it (novelty)
        self.score: float | None = None  # the critic's score of ``final`` when it picked it (parallel.py)
        self.proposed_repeat = False  # the policy the actor and its noise chose had been evaluated already

    # -- action -> bits ----------------------------------------------------------------------------------
    def _bounds(self, unit: int) -> tuple[np.ndarray, np.ndarray]:
        return self._lo[unit], self._hi[unit]

    def to_bits(self, unit: int, action: np.ndarray) -> np.ndarray:
        """(w, a) for ``action`` in [0, 1]^2: HAQ's round((bmax - bmin + 1) * a + bmin - 0.5) over the layer's allowed
        grid indices; with a warm start, an offset of up to ``offset_range`` grid steps around it (action 0.5 = the
        warm-start bits). A tied unit takes its a for both; a cell the space does not allow becomes the nearest one
        it does."""
        action = np.clip(np.asarray(action, dtype=np.float64), 0.0, 1.0)
        lo, hi = self._bounds(unit)
        p = self.problem
        if p.warm_start is None:
            idx = np.round((hi - lo + 1) * action + lo - 0.5)
        else:
            idx = to_index(p.warm_start[unit]) + np.round((action - 0.5) * 2 * (p.offset_range + 0.5))
        if p.tied[unit]:
            idx[0] = idx[1]
        idx = np.clip(idx, lo, hi).astype(np.int64)
        if not p.mask[unit, idx[0], idx[1]]:
            idx = np.array(snap(p.mask[unit], *idx))
        return index_to_bits(idx).astype(np.int64)

    def bits_to_action(self, bits: float) -> float:
        """A distance of ``bits`` grid steps (bit-widths) in action units around a warm start: one step is
        ``1 / (2 offset_range + 1)`` (see :meth:`to_bits`)."""
        return bits / (2 * self.problem.offset_range + 1)

    def _actions(self, bits: np.ndarray, units: np.ndarray) -> np.ndarray:
        """Actions that :meth:`to_bits` maps to the pairs ``bits`` (R, 2) of units ``layers`` (R,) (its inverse, for
        the replay buffer's trajectories): (R, 2) float32."""
        p = self.problem
        idx = to_index(bits)
        if p.warm_start is None:
            lo, hi = self._lo[units], self._hi[units]
            action = (idx - lo + 0.5) / (hi - lo + 1)
        else:
            action = 0.5 + (idx - to_index(p.warm_start[units])) / (2 * (p.offset_range + 0.5))
        return np.clip(action, 0.0, 1.0).astype(np.float32)

    # -- gymnasium API -----------------------------------------------------------------------------------
    def _obs(self) -> np.ndarray:
        used = {k: np.array([self._used[k]]) for k in BUDGETS}
        return self._rows(np.array([self._step]), self._prev[None], used)[0]

    def _rows(self, steps: np.ndarray, prev: np.ndarray, used: dict[str, np.ndarray]) -> np.ndarray:
        """Observations (R, D) float32 at units ``steps`` (R,) with the previous actions ``prev`` (R, 2) and the cost
        committed before each (budget -> (R,), fixed part included): the one place the features are assembled, for
        a step and for a whole trajectory alike."""
        p = self.problem
        cols = [self._static[steps], prev]
        for k in BUDGETS:
            if k in p.limits:
                limit = p.limits[k]
                cols += [
                    np.minimum(used[k] / limit, 1.0)[:, None],
                    np.minimum(self._rest[k][steps] / limit, 1.0)[:, None],
                ]
            else:
                cols.append(np.zeros((len(steps), 2)))
        if self.condition:
            cols.append(self._conditioning(steps))
        return np.concatenate(cols, axis=1).astype(np.float32)

    def fraction(self, key: str, limit: float) -> float:
        """A budget ``key`` <= ``limit`` as a fraction of the way from the cheapest allowed policy's total to the
        problem's reference (uniform W8A8 in the simulated space), clipped to [0, 1]; 0 where the two coincide."""
        low, ref = self._low[key], float(self.problem.reference.get(key, 0.0))
        return float(np.clip((limit - low) / (ref - low), 0.0, 1.0)) if ref > low else 0.0

    def _conditioning(self, steps: np.ndarray) -> np.ndarray:
        """The conditioned observation's extra features (R, :data:`CONDITION_FEATURES`) at units ``steps`` (R,)."""
        p = self.problem
        target = [self.fraction(k, p.limits[k]) if k in p.limits else 0.0 for k in BUDGETS]
        scale = []
        for k in BUDGETS:
            ref = float(p.reference.get(k, 0.0))
            scale.append(float(np.clip((np.log10(ref) + 3.0) / 6.0, 0.0, 1.0)) if ref > 0 else 0.0)
        centre = np.zeros((len(steps), 2)) if p.warm_start is None else to_index(p.warm_start[steps]) / (GRID - 1)
        return np.column_stack([np.tile(target + scale, (len(steps), 1)), centre])

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
        if self._step != self.problem.num_units - 1:
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
        if self._step < self.problem.num_units:
            return self._obs(), 0.0, False, False, {}
        info = self.problem.finish(self._bits.copy(), self.final)
        info["proposed_repeat"], self.proposed_repeat, self.final = self.proposed_repeat, False, None
        info[SCORE], self.score = self.score, None
        self._step = self.problem.num_units - 1  # the terminal observation repeats the last layer's
        obs = self._obs()
        return obs, float(info["reward"]), True, False, info

    def trajectory(self, bits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(observations, next observations, actions) of an episode that chose ``bits`` (L, 2) itself: (L, D),
        (L, D), (L, 2). The replay buffer stores these for the policy an episode evaluated (after the budget
        projection and any novelty step), so the critic learns the reward of what was evaluated; the critic scores
        candidates on them. Computed at once, without stepping (the same features as :meth:`step`'s, from
        :meth:`_rows`); the environment's own episode is left as it is."""
        p = self.problem
        n = p.num_units
        bits = np.asarray(bits)
        units = np.arange(n)
        actions = self._actions(bits, units)
        idx = to_index(bits)
        # row r = 0..L: the observation before unit r's choice; row L, the terminal one, repeats the last unit's
        steps = np.minimum(np.arange(n + 1), n - 1)
        prev = np.concatenate([np.zeros((1, 2), dtype=np.float32), actions])
        used = {  # the cost committed before each row, added up unit by unit as step() does
            k: np.cumsum(np.concatenate([[float(p.fixed[k])], p.costs[k][units, idx[:, 0], idx[:, 1]]]))
            for k in BUDGETS
        }
        rows = self._rows(steps, prev, used)
        return rows[:-1], rows[1:], actions
