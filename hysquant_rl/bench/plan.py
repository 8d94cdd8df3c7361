"""The bench's plan, read from ``bench`` (plain containers) and checked before any work: the regimes and their
budgets, the methods and the seeds each runs with, the goal and the other targets, the throughput measurement.

A budget is a fraction of the way from the cheapest allowed policy to uniform W8A8, of one cost (its kind: latency
or energy), named ``latency 0.20`` (:func:`hysquant_rl.bench.budgets.budget_label`) in the tables and run
directories.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hysquant_rl.bench.budgets import BUDGET_KEYS, budget_label
from hysquant_rl.bench.transfer_plan import Rules, TransferPlan
from hysquant_rl.errors import HySquantError

PER_BUDGET, TRANSFER = "per_budget", "transfer"  # bench.parts: what a bench run does
PARTS = (PER_BUDGET, TRANSFER)

Regimes = list[tuple[int, list[tuple[str, float]]]]  # (batch size, [(budget kind, fraction), ...]) per regime


def regime_budgets(plan: Any) -> Regimes:
    """``bench.plans.*.regimes`` as (batch size, [(budget kind, fraction), ...]) per regime, checked: each regime is
    ``{batch: N, budgets: {latency: [...], energy: [...]}}`` with at least one budget, kinds from
    :data:`BUDGET_KEYS`, no budget or batch size twice."""
    out = [_regime(regime) for regime in plan["regimes"]]
    batches = [batch for batch, _ in out]
    if not out or len(set(batches)) < len(batches):
        raise HySquantError(f"bench plan: give at least one regime, each batch size once (given: {batches})")
    return out


def _regime(regime: Any) -> tuple[int, list[tuple[str, float]]]:
    """One regime of :func:`regime_budgets`, checked."""
    try:
        batch = int(regime["batch"])
        pairs = [(str(kind), float(f)) for kind, fractions in regime["budgets"].items() for f in fractions]
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise HySquantError(
            f"bench plan regime {regime!r}: write {{batch: <batch size>, budgets: {{latency: [<fraction>, ...],"
            " energy: [...]}}"
        ) from e
    unknown = sorted({kind for kind, _ in pairs} - set(BUDGET_KEYS))
    if unknown:
        raise HySquantError(f"bench plan, batch {batch}: unknown budget kinds {unknown}: use {', '.join(BUDGET_KEYS)}")
    labels = [budget_label(kind, f) for kind, f in pairs]
    if not pairs or len(set(labels)) < len(labels):
        raise HySquantError(
            f"bench plan, batch {batch}: give at least one budget, each once (given: {', '.join(labels) or 'none'})"
        )
    return batch, pairs


def method_seeds(bench: Any, plan: Any, methods: dict[str, list[str]]) -> dict[str, list[int]]:
    """The seeds each method runs with: the first ``bench.seeds_per_method[method]`` of the plan's, or the first
    one for a method not listed there (deterministic)."""
    seeds = [int(s) for s in plan["seeds"]]
    per_method = {str(k): v for k, v in bench["seeds_per_method"].items()}
    bad = {k: v for k, v in per_method.items() if isinstance(v, bool) or not isinstance(v, int) or v < 1}
    if not seeds or bad:
        raise HySquantError(
            f"bench: give the plan at least one seed and each method of bench.seeds_per_method a count >= 1 (given:"
            f" seeds {seeds}, {bad or 'counts ok'})"
        )
    return {m: seeds[: per_method.get(m, 1)] for m in methods}


@dataclass(frozen=True)
class Goal:
    """``bench.goal``: ``method``'s mean test top-1 is at least every other method's at every budget, and at each
    regime's tightest budget (:func:`hysquant_rl.bench.stats.tightest`) it beats ``reference`` by ``margin`` points
    with a McNemar p-value below ``p_max`` in at least ``min_seeds`` of its seeds."""

    method: str
    reference: str
    margin: float
    p_max: float
    min_seeds: int

    @classmethod
    def from_mapping(cls, g: Any) -> Goal:
        goal = cls(str(g["method"]), str(g["reference"]), float(g["margin"]), float(g["p_max"]), int(g["min_seeds"]))
        if not 0.0 < goal.p_max <= 1.0 or goal.min_seeds < 1:
            raise HySquantError(
                f"bench.goal: p_max in (0, 1] and min_seeds >= 1, not p_max={goal.p_max}, min_seeds={goal.min_seeds}"
            )
        return goal


@dataclass(frozen=True)
class Targets:
    """``bench.targets``, the verdict's other items. ``min_room``: points by which FP32's test top-1 must exceed the
    reference's at every budget (with less, no search can show skill there); ``new_policy_fraction``: the share of
    the agent's episodes after its warm-up that evaluate a policy not seen before in the run, in every run;
    ``improved_seeds``: seeds per budget in which the agent's best search-val reward improves after its updates
    begin; ``max_overhead``: the agent's own time per episode as a fraction of one PTQ evaluation."""

    min_room: float
    new_policy_fraction: float
    improved_seeds: int
    max_overhead: float

    @classmethod
    def from_mapping(cls, t: Any) -> Targets:
        return cls(
            float(t["min_room"]), float(t["new_policy_fraction"]), int(t["improved_seeds"]), float(t["max_overhead"])
        )


@dataclass(frozen=True)
class Throughput:
    """``bench.throughput``: evaluation throughput on ``split``, FP32 against the uniform ``policy`` (``W4A8``),
    best of ``repeats`` full evaluations."""

    split: str
    repeats: int
    policy: str


@dataclass(frozen=True)
class Plan:
    """``bench``, checked: the ``parts`` to run (:data:`PARTS`: the per-budget plan, the transfer experiment); the
    chosen plan's (``bench.plans.<quick|full>``) regimes, episodes per episodic run and uniform reference points;
    the methods (name -> overrides of the search config) and the seeds each runs with; the goal, the targets, the
    throughput measurement; the transfer experiment (None when not run); and ``record``, what ``bench.json`` keeps
    of all this (the plan, goal and targets as given)."""

    parts: tuple[str, ...]
    regimes: Regimes
    episodes: int
    references: list[str]
    methods: dict[str, list[str]]
    seeds: dict[str, list[int]]
    goal: Goal
    targets: Targets
    throughput: Throughput
    transfer: TransferPlan | None
    record: dict[str, Any]

    @property
    def searches(self) -> int:
        """How many searches the per-budget plan runs: every method's seeds at every budget of every regime."""
        return sum(len(s) for s in self.seeds.values()) * sum(len(budgets) for _, budgets in self.regimes)

    @classmethod
    def from_mapping(cls, b: Any) -> Plan:
        """The plan of ``bench`` (the config's ``bench`` as plain containers); a bad one is a :class:`HySquantError`
        naming what to write."""
        plan = b["plans"]["quick"] if b["quick"] else b["plans"]["full"]
        parts = tuple(str(x) for x in b["parts"]) if isinstance(b["parts"], (list, tuple)) else ()
        if not parts or any(x not in PARTS for x in parts) or len(set(parts)) < len(parts):
            raise HySquantError(f"bench.parts={b['parts']!r}: give one or both of {', '.join(PARTS)}, each once")
        transfer = None
        if TRANSFER in parts:
            if not plan.get("transfer"):
                raise HySquantError("bench.parts names transfer but the plan has no transfer: give it one, or drop it")
            transfer = TransferPlan.from_mapping(plan["transfer"], Rules.from_mapping(b["transfer"]))
        regimes = regime_budgets(plan)
        methods = {str(k): list(v) for k, v in b["methods"].items()}
        goal, targets = Goal.from_mapping(b["goal"]), Targets.from_mapping(b["targets"])
        unknown = [m for m in [*b["seeds_per_method"], goal.method, goal.reference] if m not in methods]
        if unknown:
            raise HySquantError(
                f"bench names unknown methods {unknown}: use names from bench.methods ({', '.join(methods)})"
            )
        seeds = method_seeds(b, plan, methods)
        t = b["throughput"]
        return cls(
            parts=parts,
            regimes=regimes,
            episodes=int(plan["episodes"]),
            references=[str(spec) for spec in plan["references"]],
            methods=methods,
            seeds=seeds,
            goal=goal,
            targets=targets,
            throughput=Throughput(str(t["split"]), int(t["repeats"]), str(t["policy"])),
            transfer=transfer,
            record={
                "parts": list(parts),
                "quick": bool(b["quick"]),
                "plan": plan,
                "methods": methods,
                "seeds": seeds,
                "goal_config": b["goal"],
                "targets": b["targets"],
                "transfer_rules": b["transfer"],
            },
        )
