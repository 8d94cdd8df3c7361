"""Budgets (``conf/budget/``): latency [ms], energy [mJ] and size [MB] per inference at the hardware's batch
size, each absolute or as a ratio of the uniform W8A8 policy's cost, plus an accuracy floor on search-val.

:func:`within` is the one feasibility rule: every search method, the recorder, the hardware check and the
benchmark ask it whether a policy's totals meet limits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from hysquant_rl.bits import FP32_BITS, FP32_LABEL, MAX_BITS, to_bits
from hysquant_rl.budget_kinds import BY_KEY, KEYS
from hysquant_rl.errors import HySquantError
from hysquant_rl.hardware import CostModel
from hysquant_rl.search.allocation import TOLERANCE, solve_ilp
from hysquant_rl.settings import BudgetSpec
from hysquant_rl.space import uniform_policy


def within(totals: Mapping[str, float], limits: Mapping[str, float]) -> dict[str, bool]:
    """Which of ``limits`` (budget key -> total) the ``totals`` meet."""
    return {k: totals[k] <= v * (1 + TOLERANCE) for k, v in limits.items()}


def span(cost: CostModel, mask: np.ndarray) -> tuple[dict[str, float], dict[str, float]]:
    """The lowest total each budget can reach over policies allowed by ``mask`` (L, GRID, GRID) (:func:`cheapest`),
    and uniform W8A8's totals: the range in which a budget is both reachable and binding. The cheapest pair of a unit
    is usually its lowest bits; on a runtime it may be FP32 (a unit whose float kernel runs faster than its integer
    one), and the int8/float boundaries between units make the cheapest policy a question of its own."""
    minimum = {k: cost.policy_cost(cheapest(cost, mask, k)).totals()[k] for k in KEYS}
    return minimum, cost.policy_cost(uniform_policy((MAX_BITS, MAX_BITS), mask, cost.units)).totals()


def cheapest(cost: CostModel, mask: np.ndarray, key: str, steps: int = 10) -> np.ndarray:
    """The cheapest policy (L, 2) of ``mask`` for the budget ``key``: each unit at its cheapest allowed pair where the
    budget is a sum over units; where the cost model has pairwise terms (a runtime's int8/float boundaries), the
    integer program's policy at the lowest total it can meet, found by bisection (``steps`` halvings) between that
    sum (a lower bound) and the best of it, FP32 and uniform W8A8."""
    grids, fixed = cost.budget_grids()
    grid = np.where(mask, grids[key], np.inf)
    flat = grid.reshape(len(grid), -1).argmin(axis=1)
    additive = to_bits(np.stack(np.unravel_index(flat, grid.shape[1:]), axis=1))
    boundaries = {k: b for k, b in cost.boundaries().items() if k == key}
    if not boundaries:
        return additive
    candidates = [additive, *(uniform_policy(p, mask, cost.units) for p in ((FP32_BITS,) * 2, (MAX_BITS,) * 2))]
    best = min(candidates, key=lambda bits: cost.policy_cost(bits).totals()[key])
    low, high = float(grid.min(axis=(1, 2)).sum()), cost.policy_cost(best).totals()[key] - fixed[key]
    for _ in range(steps):
        mid = (low + high) / 2
        found = solve_ilp(grids[key], mask, {key: grids[key]}, {key: mid}, boundaries=boundaries)
        if found is None:
            low = mid
        else:
            best, high = found, min(mid, cost.policy_cost(found).totals()[key] - fixed[key])
    return best


class UnreachableBudget(HySquantError):
    """A budget below the cheapest policy of the search space (refused before any search). ``key``, ``limit``,
    ``minimum`` and ``policy`` (the cheapest one) let a caller measure it on the hardware and say so."""

    def __init__(self, message: str, key: str, limit: float, minimum: float, policy: np.ndarray) -> None:
        super().__init__(message)
        self.key, self.limit, self.minimum, self.policy = key, limit, minimum, policy


@dataclass(frozen=True)
class Budgets:
    """The budgets in force: ``limits`` maps latency_ms / energy_mj / size_mb to a total (fixed part included);
    ``min_top1`` is the search-val accuracy floor [%] or None; ``*_ratio`` budgets are ratios of ``reference``'s
    totals (``reference_name``: the uniform policy W8A8 or FP32); ``w8a8`` holds uniform W8A8's totals."""

    limits: dict[str, float]
    min_top1: float | None
    reference: dict[str, float]
    reference_name: str = "W8A8"
    w8a8: dict[str, float] | None = None

    def holds(self, totals: Mapping[str, float], top1: float | None = None) -> dict[str, bool]:
        """Which budgets a policy's totals (and search-val top-1) meet."""
        out = within(totals, self.limits)
        if self.min_top1 is not None and top1 is not None:
            out["min_top1"] = top1 >= self.min_top1
        return out

    def meets_floor(self, top1: float) -> bool:
        """The search-val accuracy floor holds (or there is none)."""
        return self.min_top1 is None or top1 >= self.min_top1

    def describe(self) -> str:
        parts = [
            f"{BY_KEY[k].name} <= {v:.4g} {BY_KEY[k].unit} ({v / self.reference[k]:.3f}x {self.reference_name})"
            for k, v in self.limits.items()
        ]
        if self.min_top1 is not None:
            parts.append(f"search-val top-1 >= {self.min_top1}")
        return ", ".join(parts) or "no budget"

    def to_dict(self) -> dict[str, Any]:
        w8a8 = self.reference if self.w8a8 is None else self.w8a8
        return {
            **self.limits,
            "min_top1": self.min_top1,
            "reference": self.reference_name,
            "ratios": {k: v / self.reference[k] for k, v in self.limits.items()},
            "ratios_of_w8a8": {k: v / w8a8[k] for k, v in self.limits.items()},
        }


def reference_name(spec: BudgetSpec, space: str) -> str:
    """What ``budget.*_ratio`` is a ratio of: ``budget.reference``, with ``auto`` FP32 in the executable space (what a
    deployment is compared with on a runtime) and W8A8 in the simulated one."""
    if spec.reference != "auto":
        return spec.reference
    return FP32_LABEL if space == "executable" else "W8A8"


def resolve(spec: BudgetSpec, cost: CostModel, mask: np.ndarray, space: str = "simulated") -> Budgets:
    """Budgets from ``spec`` on ``cost``'s device; refuses (:class:`UnreachableBudget`), with the minimum achievable
    in the message, a budget below what the cheapest policy of the pruned space ``mask`` (L, GRID, GRID) costs."""
    minimum, w8a8 = span(cost, mask)
    name = reference_name(spec, space)
    reference = w8a8 if name == "W8A8" else cost.uniform_cost(FP32_BITS, FP32_BITS).totals()  # FP32: always allowed
    limits: dict[str, float] = {}
    for key in KEYS:
        absolute, ratio = spec.given(key)
        candidates = [] if absolute is None else [absolute]
        if ratio is not None:
            candidates.append(ratio * reference[key])
        if candidates:
            limits[key] = min(candidates)  # both given: the tighter holds
            if limits[key] <= 0:
                raise HySquantError(f"budget.{key} must be positive, got {limits[key]}")
    for key, limit in limits.items():
        if not within({key: minimum[key]}, {key: limit})[key]:  # at the cheapest policy's total: reachable
            low = minimum[key]
            kind = BY_KEY[key]
            raise UnreachableBudget(
                f"budget {kind.name} {limit:.4g} {kind.unit} ({limit / reference[key]:.3f}x {name}) is below"
                f" the {low:.4g} {kind.unit} ({low / reference[key]:.3f}x {name}) of the cheapest allowed policy:"
                f" set budget.{kind.ratio_key} >= {low / reference[key]:.3f} or relax the pruning rules (costs:"
                f" {cost.backend}, {cost.device})",
                key,
                limit,
                low,
                cheapest(cost, mask, key),
            )
    return Budgets(limits, spec.min_top1, reference, name, w8a8)
