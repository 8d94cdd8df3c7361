"""A bench budget: a fraction of the way from the cheapest allowed policy to uniform W8A8, of one cost (its kind:
latency or energy), named ``latency 0.20`` in the tables and run directories."""

from __future__ import annotations

from hysquant_rl.budget_kinds import BY_NAME, KINDS

BUDGET_KEYS = {k: BY_NAME[k].key for k in ("latency", "energy")}  # budget kind of a plan -> budget key
# every budget of the search config off, before a run sets its own
CLEAR_BUDGETS = [f"budget.{k.key}=null" for k in KINDS] + [f"budget.{k.ratio_key}=null" for k in KINDS]


def budget_label(kind: str, fraction: float) -> str:
    """A budget's name in the tables and run directories: ``latency 0.20`` (more decimals only when needed)."""
    return f"{kind} {fraction:.2f}" if round(fraction, 2) == fraction else f"{kind} {fraction:g}"


def budget_parts(label: str) -> tuple[str, float]:
    """(kind, fraction) of a budget named by :func:`budget_label`."""
    kind, fraction = label.split()
    return kind, float(fraction)


def budget_limit(low: dict[str, float], w8a8: dict[str, float], key: str, fraction: float) -> float:
    """The total a budget of ``key`` allows at ``fraction`` of the way from ``low`` (the cheapest allowed policy's
    totals) to ``w8a8`` (uniform W8A8's): :func:`hysquant_rl.search.budget.span`'s two ends."""
    return low[key] + fraction * (w8a8[key] - low[key])
