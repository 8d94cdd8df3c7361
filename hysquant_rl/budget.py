"""Budgets (``conf/budget/``): latency [ms], energy [mJ] and size [MB] per inference at the hardware's batch
size, each absolute or as a ratio of the uniform W8A8 policy's cost, plus an accuracy floor on search-val."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from hysquant_rl.allocation import cheapest, grid_sum
from hysquant_rl.errors import HySquantError
from hysquant_rl.hardware import CostModel

UNITS = {"latency_ms": "ms", "energy_mj": "mJ", "size_mb": "MB"}
_RATIO = {"latency_ms": "latency_ratio", "energy_mj": "energy_ratio", "size_mb": "size_ratio"}


def cost_grids(cost: CostModel) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Per-layer cost grids (L, 7, 7) over w, a in 2..8 in the budgets' units, and each one's fixed part."""
    grids = {
        "latency_ms": cost.quantized_grid("latency_s") * 1e3,
        "energy_mj": cost.quantized_grid("energy_j") * 1e3,
        "size_mb": cost.quantized_grid("size_bytes") / 1e6,
    }
    fixed = {"latency_ms": cost.fixed_latency_s * 1e3, "energy_mj": cost.fixed_energy_j * 1e3, "size_mb": 0.0}
    return grids, fixed


def policy_totals(cost: CostModel, bits: Any) -> dict[str, float]:
    """Latency [ms], energy [mJ], size [MB] of a policy (any bits, FP32 included) on ``cost``'s device."""
    c = cost.policy_cost(bits)
    return {"latency_ms": c.latency_s * 1e3, "energy_mj": c.energy_j * 1e3, "size_mb": c.size_bytes / 1e6}


def span(cost: CostModel, mask: np.ndarray) -> tuple[dict[str, float], dict[str, float]]:
    """Totals of the cheapest allowed policy (every layer at its lowest bits in ``mask`` (L, 7, 7)) and of
    uniform W8A8: the range in which a budget is both reachable and binding."""
    grids, fixed = cost_grids(cost)
    low = cheapest(mask)
    minimum = {k: grid_sum(grids[k], low) + fixed[k] for k in UNITS}
    return minimum, policy_totals(cost, [(8, 8)] * cost.num_layers)


@dataclass(frozen=True)
class Budgets:
    """The budgets in force: ``limits`` maps latency_ms / energy_mj / size_mb to a total (fixed part included);
    ``min_top1`` is the search-val accuracy floor [%] or None."""

    limits: dict[str, float]
    min_top1: float | None
    reference: dict[str, float]  # uniform W8A8 totals

    def holds(self, totals: dict[str, float], top1: float | None = None) -> dict[str, bool]:
        """Which budgets a policy's totals (and search-val top-1) meet."""
        out = {k: totals[k] <= v * (1 + 1e-9) for k, v in self.limits.items()}
        if self.min_top1 is not None and top1 is not None:
            out["min_top1"] = top1 >= self.min_top1
        return out

    def describe(self) -> str:
        parts = [f"{k.split('_')[0]} <= {v:.4g} {UNITS[k]} ({v / self.reference[k]:.3f}x W8A8)" for k, v in self.limits.items()]
        if self.min_top1 is not None:
            parts.append(f"search-val top-1 >= {self.min_top1}")
        return ", ".join(parts) or "no budget"

    def to_dict(self) -> dict[str, Any]:
        return {**{k: v for k, v in self.limits.items()}, "min_top1": self.min_top1,
                "ratios_of_w8a8": {k: v / self.reference[k] for k, v in self.limits.items()}}


def resolve(cfg: Any, cost: CostModel, mask: np.ndarray) -> Budgets:
    """Budgets from ``cfg`` (the ``budget`` group); refuses, with the minimum achievable in the message, a
    budget below what the all-minimum-bits policy of the pruned space ``mask`` (L, 7, 7) costs."""
    minimum, reference = span(cost, mask)
    limits: dict[str, float] = {}
    for key in UNITS:
        candidates = []
        if cfg.get(key) is not None:
            candidates.append(float(cfg[key]))
        if cfg.get(_RATIO[key]) is not None:
            candidates.append(float(cfg[_RATIO[key]]) * reference[key])
        if candidates:
            limits[key] = min(candidates)  # both given: the tighter holds
            if limits[key] <= 0:
                raise HySquantError(f"budget.{key} must be positive, got {limits[key]}")
    for key, limit in limits.items():
        if limit < minimum[key]:
            low = minimum[key]
            raise HySquantError(
                f"budget {key.split('_')[0]} {limit:.4g} {UNITS[key]} ({limit / reference[key]:.3f}x W8A8) is below the"
                f" {low:.4g} {UNITS[key]} ({low / reference[key]:.3f}x W8A8) of the all-minimum-bits policy:"
                f" set budget.{_RATIO[key]} >= {low / reference[key]:.3f} or relax the pruning rules"
            )
    floor = cfg.get("min_top1")
    return Budgets(limits, None if floor is None else float(floor), reference)
