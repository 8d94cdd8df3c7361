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

from hysquant_rl.bits import MAX_BITS
from hysquant_rl.errors import HySquantError
from hysquant_rl.hardware import BUDGET_UNITS, CostModel
from hysquant_rl.search.allocation import lowest_costs
from hysquant_rl.settings import BudgetSpec

UNITS = {key: unit for key, (*_, unit) in BUDGET_UNITS.items()}  # budget key -> its unit
TOLERANCE = 1e-9  # relative: a total this close above its limit still meets it (float summation order)


def within(totals: Mapping[str, float], limits: Mapping[str, float]) -> dict[str, bool]:
    """Which of ``limits`` (budget key -> total) the ``totals`` meet."""
    return {k: totals[k] <= v * (1 + TOLERANCE) for k, v in limits.items()}


def span(cost: CostModel, mask: np.ndarray) -> tuple[dict[str, float], dict[str, float]]:
    """The lowest total each budget can reach over policies allowed by ``mask`` (L, GRID, GRID), each unit at its
    cheapest allowed pair for that budget (totals are sums over units), and uniform W8A8's totals: the range in
    which a budget is both reachable and binding. The cheapest pair is usually the lowest bits; on a runtime whose
    sub-8-bit codes cost a kernel of their own (the ``cpu`` profile) it is not."""
    grids, fixed = cost.budget_grids()
    minimum = {k: float(lowest_costs(grids[k], mask).sum()) + fixed[k] for k in UNITS}
    return minimum, cost.uniform_cost(MAX_BITS, MAX_BITS).totals()


@dataclass(frozen=True)
class Budgets:
    """The budgets in force: ``limits`` maps latency_ms / energy_mj / size_mb to a total (fixed part included);
    ``min_top1`` is the search-val accuracy floor [%] or None."""

    limits: dict[str, float]
    min_top1: float | None
    reference: dict[str, float]  # uniform W8A8 totals

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
            f"{k.split('_')[0]} <= {v:.4g} {UNITS[k]} ({v / self.reference[k]:.3f}x W8A8)"
            for k, v in self.limits.items()
        ]
        if self.min_top1 is not None:
            parts.append(f"search-val top-1 >= {self.min_top1}")
        return ", ".join(parts) or "no budget"

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.limits,
            "min_top1": self.min_top1,
            "ratios_of_w8a8": {k: v / self.reference[k] for k, v in self.limits.items()},
        }


def resolve(spec: BudgetSpec, cost: CostModel, mask: np.ndarray) -> Budgets:
    """Budgets from ``spec`` on ``cost``'s device; refuses, with the minimum achievable in the message, a budget
    below what the cheapest policy of the pruned space ``mask`` (L, GRID, GRID) costs."""
    minimum, reference = span(cost, mask)
    limits: dict[str, float] = {}
    for key in UNITS:
        absolute, ratio = spec.given(key)
        candidates = [] if absolute is None else [absolute]
        if ratio is not None:
            candidates.append(ratio * reference[key])
        if candidates:
            limits[key] = min(candidates)  # both given: the tighter holds
            if limits[key] <= 0:
                raise HySquantError(f"budget.{key} must be positive, got {limits[key]}")
    for key, limit in limits.items():
        if limit < minimum[key]:
            low = minimum[key]
            ratio_key = f"{key.split('_')[0]}_ratio"
            raise HySquantError(
                f"budget {key.split('_')[0]} {limit:.4g} {UNITS[key]} ({limit / reference[key]:.3f}x W8A8) is below"
                f" the {low:.4g} {UNITS[key]} ({low / reference[key]:.3f}x W8A8) of the cheapest allowed policy:"
                f" set budget.{ratio_key} >= {low / reference[key]:.3f} or relax the pruning rules"
            )
    return Budgets(limits, spec.min_top1, reference)
