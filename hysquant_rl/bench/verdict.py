"""The goal check and the verdict.

The goal (``bench.goal``, :class:`~hysquant_rl.bench.plan.Goal`, :func:`goal`): ``method`` (rl) reaches at least
every other method's mean test top-1 at every budget, and at each regime's tightest budget beats ``reference``
(ILP-KL) by ``margin`` points with a McNemar p-value below ``p_max`` in at least ``min_seeds`` of its seeds. A
regime's tightest budget is its smallest fraction; a regime with budgets of several kinds (latency and energy) has
a smallest fraction per kind, and of those the tightest is the one with the most room: the lowest reference test
top-1 (:func:`tightest`). The other targets (``bench.targets``: room, learning, overhead) are judged with the goal
in :func:`verdict`.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from hysquant_rl.bench.budgets import budget_parts
from hysquant_rl.bench.fmt import pct, points, signed
from hysquant_rl.bench.plan import Goal, Targets, regime_budgets
from hysquant_rl.bench.stats import EPS, Paired


def tightest(table: list[dict[str, Any]], reference: str) -> dict[int, str]:
    """Each regime's tightest budget: its smallest fraction; with budgets of several kinds, of each kind's smallest
    fraction the one where ``reference``'s mean test top-1 is lowest, which leaves the most room (a budget where
    the reference found no policy counts as lowest)."""
    top1: dict[tuple[int, str], float] = {}
    for t in table:
        key = (int(t["regime"]), t["budget"])
        top1.setdefault(key, -math.inf)
        if t["method"] == reference and t["found"]:
            top1[key] = float(t["test_top1_mean"])
    out: dict[int, str] = {}
    for regime in dict.fromkeys(r for r, _ in top1):
        smallest: dict[str, tuple[float, str]] = {}
        for r, budget in top1:
            kind, fraction = budget_parts(budget)
            if r == regime and (kind not in smallest or fraction < smallest[kind][0]):
                smallest[kind] = (fraction, budget)
        out[regime] = min((budget for _, budget in smallest.values()), key=lambda budget: top1[(regime, budget)])
    return out


def goal(table: list[dict[str, Any]], g: Goal, paired: Paired | None = None) -> list[dict[str, Any]]:
    """:class:`Goal` per (regime, budget) where ``g.method`` ran: its mean test top-1 against every other method
    that found a policy (``beaten_by``: those with a higher mean, best first; all of them where ``g.method`` found
    none), its margin over ``g.reference``, and ``paired``'s per-seed McNemar tests against the reference's policy
    (:func:`~hysquant_rl.bench.stats.mcnemar`, keyed by (regime, budget)), each marked ``passes`` when that seed's
    difference is at least ``g.margin`` points with p < ``g.p_max``. At each regime's tightest budget
    (:func:`tightest`): ``tightest``, ``seeds_passing`` and ``beats_reference_by_margin`` (at least ``g.min_seeds``
    seeds pass)."""
    tight = tightest(table, g.reference)
    groups: dict[tuple[int, str], dict[str, dict[str, Any]]] = {}
    for t in table:
        groups.setdefault((int(t["regime"]), t["budget"]), {})[t["method"]] = t
    out = []
    for (regime, budget), by in groups.items():
        if g.method not in by:
            continue
        entry = {"regime": regime, "budget": budget, **_against_others(by, g.method)}
        entry.update(_against_reference(by, g.reference, entry["method_top1"]))
        tests = [
            {**t, "passes": bool(t["diff"] >= g.margin - EPS and t["p"] < g.p_max)}
            for t in (paired or {}).get((regime, budget), [])
        ]
        entry["paired_vs_reference"] = tests
        if tight.get(regime) == budget:
            entry["tightest"] = True
            entry["seeds_passing"] = sum(t["passes"] for t in tests)
            entry["beats_reference_by_margin"] = entry["seeds_passing"] >= g.min_seeds
        out.append(entry)
    return out


def _against_others(by: dict[str, dict[str, Any]], method: str) -> dict[str, Any]:
    """``method``'s row of one budget (``by``: method -> aggregated row) against every other method's that found a
    policy: its mean and std, the best other, those with a higher mean (all of them where it found none)."""
    me = by[method]
    mine = float(me["test_top1_mean"]) if me["found"] else None
    std = me.get("test_top1_std")
    others = sorted(
        ((m, float(t["test_top1_mean"])) for m, t in by.items() if m != method and t["found"]), key=lambda x: -x[1]
    )
    beaten_by = [{"method": m, "test_top1": v} for m, v in others if mine is None or v > mine + EPS]
    return {
        "method_top1": mine,
        "method_std": None if std is None or pd.isna(std) else float(std),
        "best_other": others[0][0] if others else None,
        "best_other_top1": others[0][1] if others else None,
        "beaten_by": beaten_by,
        "at_least_every_other": mine is not None and not beaten_by,
    }


def _against_reference(by: dict[str, dict[str, Any]], reference: str, mine: float | None) -> dict[str, float]:
    """The reference's mean test top-1 at one budget and the margin over it of ``mine``, where each exists."""
    ref = by.get(reference)
    if ref is None or not ref["found"]:
        return {}
    out = {"reference_top1": float(ref["test_top1_mean"])}
    if mine is not None:
        out["margin_over_reference"] = mine - out["reference_top1"]
    return out


def verdict(r: dict[str, Any], g: Goal, t: Targets) -> list[dict[str, Any]]:
    """Every target of the bench, ``met`` or not, with the figures that decided it (``detail``): the room at every
    budget, :class:`Goal`'s two parts (the tightest budget once per regime), ``g.method``'s learning diagnostics
    (:func:`~hysquant_rl.bench.stats.learning`) and its overhead per episode
    (:func:`~hysquant_rl.bench.stats.episode_speed`). Reads ``r``'s plan, runs, room, goal and speed."""
    runs = [x for x in r["runs"] if x["method"] == g.method and x.get("learning")]
    return [
        _room(r["room"], g, t),
        _every_other(r["goal"], g),
        *_tightest(r["goal"], regime_budgets(r["plan"]), g),
        _new_policies(runs, g, t),
        _improved(runs, g, t),
        _overhead(r["speed"]["episodes"], g, t),
    ]


def _item(item: str, met: bool, detail: str) -> dict[str, Any]:
    return {"item": item, "met": bool(met), "detail": detail}


def _where(e: dict[str, Any]) -> str:
    return f"batch {e['regime']} {e['budget']}"


def _room(rooms: list[dict[str, Any]], g: Goal, t: Targets) -> dict[str, Any]:
    short = [e for e in rooms if not e["met"]]
    lowest = min((e["room"] for e in rooms if e["room"] is not None), default=None)
    return _item(
        f"room (FP32 test top-1 minus {g.reference}'s) >= {points(t.min_room)} at every budget",
        bool(rooms) and not short,
        ", ".join(f"{_where(e)}: {signed(e['room'])}" for e in short) or f"lowest {signed(lowest)}",
    )


def _every_other(entries: list[dict[str, Any]], g: Goal) -> dict[str, Any]:
    behind = [e for e in entries if not e["at_least_every_other"]]
    return _item(
        f"{g.method}'s mean test top-1 >= every other method's at every budget",
        bool(entries) and not behind,
        "; ".join(_behind(e, g.method) for e in behind) or f"at all {len(entries)} budgets",
    )


def _behind(e: dict[str, Any], method: str) -> str:
    """``batch 1 energy 0.08: rl 80.00, beaten by greedy 80.20``."""
    mine = "found no policy" if e["method_top1"] is None else f"{e['method_top1']:.2f}"
    return f"{_where(e)}: {method} {mine}, beaten by " + ", ".join(
        f"{b['method']} {b['test_top1']:.2f}" for b in e["beaten_by"]
    )


def _tightest(entries: list[dict[str, Any]], regimes: list[tuple[int, Any]], g: Goal) -> list[dict[str, Any]]:
    """One item per regime: ``g.method`` beats the reference by the margin at its tightest budget."""
    items = []
    for batch, _ in regimes:
        e = next((e for e in entries if e["regime"] == batch and e.get("tightest")), None)
        if e is None:
            items.append(
                _item(f"batch {batch}, tightest budget: {g.method} beats {g.reference}", False, f"no {g.method} result")
            )
            continue
        items.append(
            _item(
                f"batch {batch}, tightest budget ({e['budget']}): {g.method} >= {g.reference} + {points(g.margin)}"
                f" with McNemar p < {g.p_max:g} in >= {g.min_seeds} seeds",
                e["beats_reference_by_margin"],
                f"{e['seeds_passing']} of {len(e['paired_vs_reference'])} seeds; mean difference"
                f" {signed(e.get('margin_over_reference'))}",
            )
        )
    return items


def _new_policies(runs: list[dict[str, Any]], g: Goal, t: Targets) -> dict[str, Any]:
    low = [x for x in runs if (x["learning"]["new_policy_fraction"] or 0.0) < t.new_policy_fraction - EPS]
    fractions = [x["learning"]["new_policy_fraction"] for x in runs if x["learning"]["new_policy_fraction"] is not None]
    return _item(
        f"{g.method}: >= {100 * t.new_policy_fraction:g} % of the episodes after the warm-up evaluate a policy new to"
        " the run, in every run",
        bool(runs) and not low,
        ", ".join(f"{_where(x)} seed {x['seed']}: {pct(x['learning']['new_policy_fraction'])}" for x in low)
        or f"lowest {pct(min(fractions, default=None))} over {len(runs)} runs",
    )


def _improved(runs: list[dict[str, Any]], g: Goal, t: Targets) -> dict[str, Any]:
    improved: dict[str, list[bool]] = {}
    for x in runs:
        improved.setdefault(_where(x), []).append(bool(x["learning"]["improved"]))
    return _item(
        f"{g.method}: the best search-val reward improves after the updates begin in >= {t.improved_seeds} seeds at"
        " every budget",
        bool(improved) and all(sum(v) >= t.improved_seeds for v in improved.values()),
        ", ".join(f"{k}: {sum(v)} of {len(v)}" for k, v in improved.items()) or f"no {g.method} run",
    )


def _overhead(speeds: list[dict[str, Any]], g: Goal, t: Targets) -> dict[str, Any]:
    speed = next((e for e in speeds if e["method"] == g.method), None)
    return _item(
        f"{g.method}: search overhead <= {100 * t.max_overhead:g} % of a PTQ evaluation",
        speed is not None and speed["overhead_fraction"] <= t.max_overhead,
        f"{pct(speed['overhead_fraction'])}" if speed else f"no episodic {g.method} run",
    )
