"""The transfer experiment's plan (``bench.plans.<plan>.transfer``) and its decision rules (``bench.transfer``), read
from plain containers and checked before any work.

The experiment: one budget-conditioned agent per seed trained over the ``train`` budgets of one regime, then at each
``held_out`` budget and each k of ``evaluations`` the agent's answer against controls with the same information
(:mod:`hysquant_rl.bench.transfer_run`). Budgets are fractions of the way from the cheapest allowed policy to uniform
W8A8 of one cost (``kind``), as the per-budget plan's (:func:`hysquant_rl.bench.plan.budget_label`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hysquant_rl.bench.budgets import BUDGET_KEYS
from hysquant_rl.errors import HySquantError

# the arms, in the table's order: (name, what it is); ilp answers at k = 0 only, local and rl-frozen at k > 0 only
ARMS = {
    "ilp": "the integer program over the LUT's KL column (no evaluation)",
    "local": "local search from the ILP policy with k evaluations",
    "nearest": "the best policy found for the nearest training budget, fitted to the budget, then local search",
    "surrogate": "the ILP over the LUT recalibrated on the training evaluations (within the agent's action box"
    " around the ILP's policy), then local search screened by it",
    "rl": "the budget-conditioned agent: its greedy policy, then its critic's picks, learning as it goes",
    "rl-frozen": "the same with its actor frozen after training (the ablation)",
}
AGENT, SURROGATE, ILP, LOCAL, NEAREST, FROZEN = "rl", "surrogate", "ilp", "local", "nearest", "rl-frozen"
CONTROLS = (LOCAL, NEAREST, SURROGATE)  # the agent's controls at k > 0


@dataclass(frozen=True)
class Rules:
    """``bench.transfer``: the decision rules, fixed before the run. An arm *beats* another by ``margin`` points when
    its mean paired test top-1 difference over the held-out budgets and seeds is at least ``margin`` and the lower end
    of its ``confidence`` bootstrap interval (``bootstrap`` resamples of the test images, seeded by
    ``bootstrap_seed``) lies above 0. The agent earns its place if it beats the ILP at k = 0 or beats every control
    (local, nearest, surrogate) at k = ``controls_at``; the surrogate wins likewise (the ILP at k = 0, or local and
    nearest at ``controls_at``). McNemar per seed and case, Holm-corrected over the table (``p_max``), is reported
    beside them."""

    margin: float
    controls_at: int
    confidence: float
    bootstrap: int
    bootstrap_seed: int
    p_max: float

    @classmethod
    def from_mapping(cls, t: Any) -> Rules:
        try:
            rules = cls(
                float(t["margin"]),
                int(t["controls_at"]),
                float(t["confidence"]),
                int(t["bootstrap"]),
                int(t["bootstrap_seed"]),
                float(t["p_max"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise HySquantError(
                f"bench.transfer: give margin, controls_at, confidence, bootstrap, bootstrap_seed and p_max ({e!r})"
            ) from e
        if not 0 < rules.confidence < 1 or rules.bootstrap < 100 or not 0 < rules.p_max <= 1 or rules.controls_at < 1:
            raise HySquantError(
                f"bench.transfer: confidence in (0, 1), bootstrap >= 100 resamples, p_max in (0, 1] and controls_at"
                f" >= 1, not {rules.confidence}, {rules.bootstrap}, {rules.p_max}, {rules.controls_at}"
            )
        return rules


@dataclass(frozen=True)
class TransferPlan:
    """One regime's transfer experiment: batch size ``batch``, budgets of ``kind`` (latency | energy) at the fractions
    ``train`` and ``held_out``, ``seeds`` (one trained agent each), ``episodes`` training PTQ evaluations per agent
    (its warm starts included), ``evaluations`` the k each held-out budget is answered with (0 and
    ``rules.controls_at`` among them), ``rules`` the decision rules."""

    batch: int
    kind: str
    train: tuple[float, ...]
    held_out: tuple[float, ...]
    seeds: tuple[int, ...]
    episodes: int
    evaluations: tuple[int, ...]
    rules: Rules

    @property
    def key(self) -> str:
        """The budget key: ``latency_ms`` or ``energy_mj``."""
        return BUDGET_KEYS[self.kind]

    @property
    def k_max(self) -> int:
        return max(self.evaluations)

    @classmethod
    def from_mapping(cls, t: Any, rules: Rules) -> TransferPlan:
        """``bench.plans.<plan>.transfer`` checked against ``rules``; a bad one is a one-line error naming what to
        write."""
        hint = (
            "write {batch: 64, kind: latency, train: [<fraction>, ...], held_out: [...], seeds: [0, 1, 2], episodes: N,"
            " evaluations: [0, 5, 20]}"
        )
        try:
            plan = cls(
                batch=int(t["batch"]),
                kind=str(t["kind"]),
                train=tuple(float(f) for f in t["train"]),
                held_out=tuple(float(f) for f in t["held_out"]),
                seeds=tuple(int(s) for s in t["seeds"]),
                episodes=int(t["episodes"]),
                evaluations=tuple(int(k) for k in t["evaluations"]),
                rules=rules,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise HySquantError(f"bench transfer plan {t!r}: {hint}") from e
        budgets = [*plan.train, *plan.held_out]
        problems = []
        if plan.kind not in BUDGET_KEYS:
            problems.append(f"kind {plan.kind!r} is not one of {', '.join(BUDGET_KEYS)}")
        if len(plan.train) < 2 or not plan.held_out:
            problems.append("give at least 2 training budgets and 1 held-out budget")
        if not all(0 <= f <= 1 for f in budgets) or len(set(budgets)) < len(budgets):
            problems.append("fractions must lie in [0, 1], each budget once")
        if not plan.seeds or len(set(plan.seeds)) < len(plan.seeds):
            problems.append("give at least one seed, each once")
        if plan.episodes < len(plan.train):
            problems.append(f"episodes must cover a warm start per training budget (>= {len(plan.train)})")
        ks = plan.evaluations
        if {0, rules.controls_at} - set(ks) or min(ks, default=-1) < 0 or len(set(ks)) < len(ks):
            problems.append(
                f"evaluations must include 0 and bench.transfer.controls_at={rules.controls_at}, each k once, none"
                " below 0"
            )
        if problems:
            raise HySquantError(f"bench transfer plan: {'; '.join(problems)}")
        return plan
