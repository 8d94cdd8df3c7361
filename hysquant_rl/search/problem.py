"""The search problem every method solves: the units, their costs and allowed bits, the budgets, and one episode
end (budget projection -> cached PTQ evaluation on search-val -> reward).

Every search method (the RL agent through the Gymnasium adapter in ``envs/``, and each baseline) evaluates its
policies through :meth:`SearchProblem.finish`, so they share the projection, the reward and the evaluation cache.

Reward (HAQ-style, paper section 3.3)::

    reward = reward_scale * (score - FP32 score) - penalties,   score = top1 [%], -KL or -loss [nats]

The dual question (``budget.max_drop``: the cheapest policy within a maximum accuracy drop, as NNCF's accuracy control
answers it) turns the objective around: ``reward = -reward_scale * cost / W8A8's cost`` of the ``budget.minimize``
cost, and a policy below the accuracy floor (FP32's search-val top-1 - ``max_drop``) loses
:data:`FLOOR_PENALTY` more than any policy above it could differ by (plus the usual shortfall penalty). The integer
program answers it by bisection over a budget on that cost, each step's policy evaluated (:meth:`SearchProblem.ilp`).

``budget_mode``: ``project`` lowers bits where the LUT says it hurts least until every budget holds; ``penalty``
keeps the policy and subtracts ``penalty_weight`` x the relative excess per budget.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from hysquant_rl.bits import FP32_BITS, grid_sum, to_bits, to_index
from hysquant_rl.budget_kinds import BY_NAME
from hysquant_rl.budget_kinds import KEYS as BUDGETS
from hysquant_rl.hardware.cost import Boundaries
from hysquant_rl.search.allocation import project, proxy_grid, solve_ilp
from hysquant_rl.search.budget import Budgets, within
from hysquant_rl.space import DIRECTIONS, neighbours, tied
from hysquant_rl.units import UnitInfo

if TYPE_CHECKING:
    from hysquant_rl.lut.executor import Executor
    from hysquant_rl.lut.table import LUT
    from hysquant_rl.pipeline import Pipeline
    from hysquant_rl.settings import SearchSettings

DOWN_W, UP_W, DOWN_A, UP_A = range(len(DIRECTIONS))  # the moves' directions (hysquant_rl.space.DIRECTIONS)
FLOOR_PENALTY = 10.0  # max_drop: below the accuracy floor, a policy's reward falls by this (cost ratios lie far inside)
BISECTION_STEPS = 8  # max_drop: evaluations the integer program's bisection spends at most
BISECTION_GAP = 0.005  # ... stopping once the cost interval is this narrow, relative to its top


def policy_key(bits: Any) -> bytes:
    """The cache key of a policy (L, 2): its bit-widths as bytes."""
    return np.asarray(bits).astype(np.int8).tobytes()


@dataclass
class SearchProblem:
    """Everything an episode needs, computed once per search.

    Cost arrays are (L, GRID, GRID) over w, a in 2..8 and FP32, additive over units; ``fixed`` is each budget's
    policy-independent part (attention matmuls that are not units), so a policy's total is ``sum + fixed``.
    A tied unit (an activation-only one, or one whose allowed cells all lie on the diagonal, such as FP32 or W8A8 on
    a runtime: :func:`hysquant_rl.space.tied`) moves w and a together; its policies are kept in
    :meth:`canonical` form (w = a).
    """

    units: list[UnitInfo]
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
    # several policies at once (parallel episodes: search.workers Ray actors); None: ``evaluate`` one by one
    evaluate_many: Callable[[list[np.ndarray]], list[dict[str, float]]] | None = None
    # the cost model's exact totals of a policy (L, 2) by budget key; None: the grids' sums
    exact_totals: Callable[[np.ndarray], dict[str, float]] | None = None
    # pairwise terms of a budget the grids cannot express (a runtime's int8/float boundaries), for the ILP
    boundaries: dict[str, Boundaries] = field(default_factory=dict)
    swap_moves: bool = False  # a candidate's moves raise one unit and lower another within the budgets
    profile: dict[str, Any] = field(default_factory=dict)  # the cost model's device, batch size and backend
    max_drop: float | None = None  # budget.max_drop: minimise ``minimize`` within this top-1 drop (the dual question)
    minimize: str = "latency_ms"  # the budget key a max_drop search minimises
    _fresh: set[bytes] = field(default_factory=set)  # evaluated by ``prefetch``, not yet ended by ``finish``

    def __post_init__(self) -> None:
        self.weighted = np.array([unit.weighted for unit in self.units])  # (L,) False: activation-only unit
        # an activation-only unit's proxy is read at (a, a) for every w, as its costs are
        weightless = ~self.weighted
        if weightless.any():
            steps = np.arange(self.proxy.shape[1])
            self.proxy = self.proxy.copy()
            self.proxy[weightless] = self.proxy[weightless][:, steps, steps][:, None, :]
        self.tied = tied(self.mask) | weightless  # (L,) w moves with a
        self.moves = neighbours(self.mask)  # (L, GRID, GRID, 4, 2): the projection's and the candidates' steps

    @property
    def num_units(self) -> int:
        return len(self.units)

    def canonical(self, bits: np.ndarray) -> np.ndarray:
        """``bits`` (L, 2) with every tied unit's w set to its a: an activation-only unit's w changes neither accuracy
        nor cost, and a tied unit's cells have w = a, so policies that differ only there are one policy (one
        evaluation, one cache entry)."""
        bits = np.array(bits, dtype=np.int64)
        bits[self.tied, 0] = bits[self.tied, 1]
        return bits

    def totals(self, bits: np.ndarray) -> dict[str, float]:
        """Every budget's total (fixed part included) of a policy ``bits`` (L, 2): the cost model's exact totals when
        the problem has them (``exact_totals``: a unit before an FP32 one writes its output in float), else the sum of
        the per-unit grids (exact for a policy whose activations are all quantized)."""
        if self.exact_totals is not None:
            return dict(self.exact_totals(bits))
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

    def unit_limits(self, limits: dict[str, float] | None = None) -> dict[str, float]:
        """Budgets on the summed per-layer costs (the fixed part taken off) of ``limits`` (default: in force)."""
        return {k: v - self.fixed[k] for k, v in (self.limits if limits is None else limits).items()}

    def score(self, metrics: dict[str, float]) -> float:
        m = metrics[self.reward_metric]
        return m if self.reward_metric == "top1" else -m

    def reward(self, metrics: dict[str, float], totals: dict[str, float]) -> tuple[float, float]:
        """(reward, penalty) of an evaluated policy; penalty = weighted relative budget excess (penalty mode)
        plus the relative shortfall under the accuracy floor (with ``max_drop``: plus :data:`FLOOR_PENALTY`)."""
        penalty = 0.0
        if self.budget_mode == "penalty":
            penalty += self.penalty_weight * sum(max(totals[k] / v - 1.0, 0.0) for k, v in self.limits.items())
        if self.min_top1 is not None and metrics["top1"] < self.min_top1:
            penalty += self.penalty_weight * (self.min_top1 - metrics["top1"]) / 100.0
            penalty += FLOOR_PENALTY if self.max_drop is not None else 0.0
        if self.max_drop is not None:  # the dual question: the cheaper, the better, above the floor
            cost = totals[self.minimize] / max(self.reference[self.minimize], 1e-300)
            return -self.reward_scale * cost - penalty, penalty
        return self.reward_scale * (self.score(metrics) - self.score(self.fp32)) - penalty, penalty

    def fitted(self, chosen: np.ndarray) -> np.ndarray:
        """The policy an episode that chose ``chosen`` (L, 2) evaluates: canonical, and in ``project`` mode lowered
        where the LUT says it hurts least until every budget holds."""
        bits = self.canonical(chosen)
        if self.budget_mode != "project" or not self.limits:
            return bits
        limits = self.unit_limits()
        for _ in range(4):  # the grids are additive; where the exact totals exceed a budget, project against less
            projected = project(bits, self.proxy, self.mask, self.costs, limits, self.moves)
            if projected is None:
                return bits
            bits = self.canonical(projected)
            over = {k: self.totals(bits)[k] / v for k, v in self.limits.items()}
            if all(within({k: r}, {k: 1.0})[k] for k, r in over.items()):
                return bits
            limits = {k: v / over[k] if over[k] > 1 else v for k, v in limits.items()}
        return bits

    def fits(self, bits: np.ndarray) -> bool:
        """``bits`` (L, 2) meets every budget in force, by its exact totals; in ``penalty`` mode any policy may be
        evaluated (its excess is penalised)."""
        return self.budget_mode != "project" or all(within(self.totals(bits), self.limits).values())

    def ilp(
        self,
        proxy: np.ndarray | None = None,
        limits: dict[str, float] | None = None,
        mask: np.ndarray | None = None,
    ) -> np.ndarray | None:
        """The integer program's policy (L, 2) over the LUT's ``proxy`` (default: the problem's) within ``limits``
        (default: the budgets in force) among the pairs of ``mask`` (L, GRID, GRID) (default: the problem's),
        boundaries included; None when no policy fits."""
        if self.max_drop is not None and proxy is None and mask is None:
            return self.cheapest_within_drop(self.limits if limits is None else limits)
        proxy = self.proxy if proxy is None else proxy
        unit_limits = self.unit_limits(limits)
        mask = self.mask if mask is None else mask
        bits = solve_ilp(proxy, mask, self.costs, unit_limits, boundaries=self.boundaries)
        return None if bits is None else self.canonical(bits)

    def cheapest_within_drop(self, limits: dict[str, float]) -> np.ndarray | None:
        """The integer program's answer to the dual question (``max_drop``): bisection over a budget on the
        ``minimize`` cost, between the cheapest allowed policy and FP32, each step the ILP's policy (over the proxy)
        within that budget and ``limits``, evaluated on search-val (at most :data:`BISECTION_STEPS` evaluations);
        the cheapest one that keeps the accuracy floor. None when none does (FP32 is then the answer)."""
        k = self.minimize
        fp32 = self.canonical(np.full((self.num_units, 2), FP32_BITS))
        lowest = solve_ilp(self.costs[k], self.mask, self.costs, self.unit_limits(limits), boundaries=self.boundaries)
        if lowest is None:
            return None
        lo, hi = self.totals(lowest)[k], self.totals(fp32)[k]
        best = fp32 if self.fits(fp32) else None
        for _ in range(BISECTION_STEPS):
            if hi - lo <= BISECTION_GAP * hi:
                break
            mid = (lo + hi) / 2 if lo < hi else lo
            step = {**limits, k: min(mid, limits.get(k, np.inf))}
            bits = solve_ilp(self.proxy, self.mask, self.costs, self.unit_limits(step), boundaries=self.boundaries)
            if bits is None:
                lo = mid
                continue
            bits = self.canonical(bits)
            if self.min_top1 is None or self.metrics(bits)["top1"] >= self.min_top1:
                best, hi = bits, min(self.totals(bits)[k], mid)
            else:
                lo = mid
        return best

    def candidates(
        self, chosen: np.ndarray, rng: np.random.Generator, k: int = 1, taken: set[bytes] = frozenset()
    ) -> tuple[list[np.ndarray], bool]:
        """(policies, repeat): up to ``k`` policies new to the search (not evaluated, not in ``taken``), fitted to
        the budgets: :meth:`fitted` of ``chosen`` first when it is new (else ``repeat`` is True), then neighbours of it
        found by moving random units (:meth:`neighbour`) and fitting again (kept where the fit meets the budgets,
        :meth:`fits`): 1 unit, one more every ``10 ceil(k / 8)`` draws, ``max(50, 4 k)`` draws at most. An episode
        does not spend its evaluation on a policy the search knows; with ``k`` > 1 a learned critic picks among them
        (``envs/parallel.py``). Empty when every draw repeats."""
        bits = self.fitted(chosen)
        out: dict[bytes, np.ndarray] = {}
        repeat = policy_key(bits) in self.cache or policy_key(bits) in taken
        if not repeat:
            out[policy_key(bits)] = bits
        per_unit = 10 * -(-k // 8)
        for attempt in range(max(50, 4 * k)):
            if len(out) >= k:
                break
            trial = self.fitted(self.neighbour(bits, rng, 1 + attempt // per_unit))
            key = policy_key(trial)
            if key not in self.cache and key not in taken and self.fits(trial):
                out.setdefault(key, trial)
        return list(out.values()), repeat

    def neighbour(self, bits: np.ndarray, rng: np.random.Generator, units: int) -> np.ndarray:
        """``bits`` (L, 2) moved on ``units`` random units: each a step to its neighbouring allowed cell
        (:meth:`step`), or with ``swap_moves`` a cost-neutral swap (:meth:`swap`) each."""
        trial = bits.copy()
        if self.swap_moves:
            for _ in range(units):
                trial = self.swap(trial, rng)
            return trial
        for l in rng.choice(self.num_units, size=min(units, self.num_units), replace=False):
            trial[l] = self.step(l, trial[l], rng)
        return trial

    def swap(self, bits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A swap move on ``bits`` (L, 2): one random unit raised to its next allowed cell up (w or a; a tied unit's a),
        and where that breaks a budget (by the grids' sums) one other unit lowered to its next cell down, drawn among
        those whose saving alone brings every budget back: the candidate stays within the budgets without the
        projection. Where no single unit can pay for the raise, the raised policy is returned (:meth:`fitted` then
        projects it); a unit already at its top stays."""
        l = int(rng.integers(self.num_units))
        up = UP_A if self.tied[l] else int(rng.choice((UP_W, UP_A)))
        idx = to_index(bits)
        nxt = self.moves[l, idx[l, 0], idx[l, 1], up]
        if nxt[0] < 0:
            return bits
        trial = bits.copy()
        trial[l] = to_bits(nxt)
        over = {k: e for k, v in self.unit_limits().items() if (e := grid_sum(self.costs[k], trial) - v) > 0}
        if not over:
            return trial
        rows, cur = np.arange(self.num_units), to_index(trial)
        options: list[tuple[int, int]] = []
        for down in (DOWN_W, DOWN_A):
            new = self.moves[rows, cur[:, 0], cur[:, 1], down]  # (L, 2), -1 where there is none
            r = rows[(new[:, 0] >= 0) & (rows != l) & (~self.tied | (down == DOWN_A))]
            for k, excess in over.items():
                saved = self.costs[k][r, cur[r, 0], cur[r, 1]] - self.costs[k][r, new[r, 0], new[r, 1]]
                r = r[saved >= excess]
            options += [(int(j), down) for j in r]
        if options:
            j, down = options[int(rng.integers(len(options)))]
            trial[j] = to_bits(self.moves[j, cur[j, 0], cur[j, 1], down])
        return trial

    def step(self, l: int, pair: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Unit ``l``'s pair ``(w, a)`` moved to its neighbouring allowed cell in a random direction (w or a, down or
        up; a tied unit moves its a, and w with it), or kept when there is none that way."""
        d = int(rng.integers(2, 4)) if self.tied[l] else int(rng.integers(len(DIRECTIONS)))
        w, a = to_index(pair)
        nxt = self.moves[l, w, a, d]
        return pair if nxt[0] < 0 else to_bits(nxt)

    def prefetch(self, policies: list[np.ndarray]) -> None:
        """Evaluate ``policies`` (each (L, 2), as :meth:`fitted` returns them) at once (parallel episodes), on
        ``evaluate_many`` when set; :meth:`finish` then reports them as new, not cached."""
        todo: dict[bytes, np.ndarray] = {}
        for bits in policies:
            key = policy_key(bits)
            if key not in self.cache:
                todo.setdefault(key, np.asarray(bits))
        if not todo:
            return
        start = time.perf_counter()
        if self.evaluate_many is None:
            results = [self.evaluate(bits) for bits in todo.values()]
        else:
            results = self.evaluate_many(list(todo.values()))
        self.eval_time_s += time.perf_counter() - start
        for key, metrics in zip(todo, results, strict=True):
            self.cache[key] = dict(metrics)
        self._fresh.update(todo)

    def finish(self, chosen: np.ndarray, bits: np.ndarray | None = None) -> dict[str, Any]:
        """The end of an episode: fit ``chosen`` (L, 2) to the budgets (or take ``bits``, already fitted, e.g. by
        :meth:`novel`), evaluate it (cached by policy), and reward it. Returns the episode's record: bits, chosen,
        metrics, totals, reward, penalty, feasible, cached, skipped (a NaN evaluation)."""
        chosen = self.canonical(chosen)
        bits = self.fitted(chosen) if bits is None else self.canonical(bits)
        key = policy_key(bits)
        cached = key in self.cache and key not in self._fresh
        self._fresh.discard(key)
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


def evaluate_on(executor: Executor) -> Callable[[list[np.ndarray]], list[dict[str, float]]]:
    """Search-val metrics of several policies (L, 2) at once on ``executor``'s workers, in the order given."""

    from hysquant_rl.lut.executor import Job  # torch: pricing and allocating stay free of it

    def evaluate_many(policies: list[np.ndarray]) -> list[dict[str, float]]:
        jobs = [Job(np.asarray(bits).tolist(), "search_val", tag=i) for i, bits in enumerate(policies)]
        results = sorted(executor.map(jobs), key=lambda r: r.job.tag)
        return [r.metrics.to_dict() for r in results]

    return evaluate_many


def with_accuracy_floor(search: SearchSettings, budgets: Budgets, fp32_top1: float) -> Budgets:
    """The budgets with ``budget.max_drop``'s floor (the dual question): search-val top-1 >= FP32's ``fp32_top1``
    less the drop allowed, or ``budget.min_top1`` where that is tighter; unchanged without ``max_drop``."""
    if search.budget.max_drop is None:
        return budgets
    floor = fp32_top1 - search.budget.max_drop
    return replace(budgets, min_top1=floor if budgets.min_top1 is None else max(budgets.min_top1, floor))


def build_problem(
    search: SearchSettings, pipe: Pipeline, lut: LUT, budgets: Budgets, executor: Executor | None = None
) -> SearchProblem:
    """The :class:`SearchProblem` of a run: the pipeline's units and modelled costs, the pruned LUT (state
    features, allowed pairs, the ``search.proxy`` column as the projection's guide), the budgets, and the
    evaluation on search-val (several policies at once on ``executor``'s workers when given)."""
    grids, fixed = pipe.cost.budget_grids()
    n = len(pipe.units)
    fp32 = pipe.evaluator.evaluate([(FP32_BITS, FP32_BITS)] * n, "search_val").to_dict()
    budgets = with_accuracy_floor(search, budgets, fp32["top1"])

    return SearchProblem(
        units=pipe.units,
        lut_features=np.concatenate([lut.matrix("top1_drop"), lut.matrix("kl")], axis=1),
        mask=lut.mask(),
        proxy=proxy_grid(lut.configs, lut.matrix(search.proxy)),
        costs=grids,
        fixed=fixed,
        reference=budgets.reference,
        limits=dict(budgets.limits),
        evaluate=lambda bits: pipe.evaluator.evaluate(bits, "search_val").to_dict(),
        evaluate_many=None if executor is None else evaluate_on(executor),
        exact_totals=lambda bits: pipe.cost.policy_cost(bits).totals(),
        boundaries=pipe.cost.boundaries(),
        swap_moves=search.swap_moves,
        profile={"device": pipe.cost.device, "batch_size": pipe.cost.batch_size, "backend": pipe.cost.backend},
        fp32=fp32,
        max_drop=search.budget.max_drop,
        minimize=BY_NAME[search.budget.minimize].key,
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
