"""The budget vocabulary, in one place: each kind of cost a budget can bound (latency, energy, size), its key in cost
totals, budgets and reports (``latency_ms``), the unit reports use, the cost model's SI field and the conversion from
it, and the settings that set it (``budget.latency_ms``, ``budget.latency_ratio``). Torch-free, on the ground floor."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class BudgetKind:
    """One kind of budget: ``name`` (``latency``), ``unit`` (``ms``), the cost model's SI field (``latency_s``) and
    the conversion ``value = si x multiplier / divisor``."""

    name: str
    unit: str
    si_field: str
    multiplier: float = 1.0
    divisor: float = 1.0

    @property
    def key(self) -> str:
        """``latency_ms``: its key in cost totals and budgets, and the absolute setting ``budget.<key>``."""
        return f"{self.name}_{self.unit.lower()}"

    @property
    def ratio_key(self) -> str:
        """``latency_ratio``: the setting of a budget as a ratio of the reference policy's cost."""
        return f"{self.name}_ratio"

    def from_si(self, value: Any) -> Any:
        return value * self.multiplier / self.divisor


KINDS = (
    BudgetKind("latency", "ms", "latency_s", multiplier=1e3),
    BudgetKind("energy", "mJ", "energy_j", multiplier=1e3),
    BudgetKind("size", "MB", "size_bytes", divisor=1e6),
)
BY_KEY = {k.key: k for k in KINDS}  # latency_ms -> its kind
BY_NAME = {k.name: k for k in KINDS}  # latency -> its kind
KEYS = tuple(BY_KEY)  # latency_ms, energy_mj, size_mb
LATENCY, ENERGY, SIZE = KEYS


def in_budget_units(si: Callable[[str], Any]) -> dict[str, Any]:
    """Latency [ms], energy [mJ] and size [MB = 1e6 bytes] from ``si(field)``, the value (a number or an array) of the
    SI field ``latency_s``, ``energy_j`` or ``size_bytes``: the one conversion from SI units."""
    return {k.key: k.from_si(si(k.si_field)) for k in KINDS}
