"""The transfer experiment's statistics and its decision (the rules of
:class:`~hysquant_rl.bench.transfer_plan.Rules`, fixed before the run).

A *case* is one comparison of two arms at one k, at one held-out budget or over all of them (:data:`POOLED`): its
paired test top-1 difference per seed (points), the mean over seeds (and budgets), a percentile bootstrap interval of
that mean over the test images (:func:`hysquant_rl.bench.stats.bootstrap_means`), and McNemar per seed and budget,
Holm-corrected over every McNemar test of the table (:func:`hysquant_rl.bench.stats.holm`). The decision reads the
pooled cases; the break-even count reads the pooled means. Torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from hysquant_rl.bench.stats import EPS, bootstrap_means, holm, mcnemar
from hysquant_rl.bench.transfer_plan import AGENT, CONTROLS, FROZEN, ILP, LOCAL, NEAREST, SURROGATE, Rules
from hysquant_rl.io import records

POOLED = "all held-out"
HitsOf = Callable[[int, str, int, str], "np.ndarray | None"]  # (seed, budget, k, arm) -> per-image test hits (N,)


def table(answers: list[dict[str, Any]], held_out: list[str]) -> list[dict[str, Any]]:
    """Mean and sample std over seeds of every (budget, k, arm)'s test top-1 [%], search-val top-1 [%] and KL, and
    evaluations; then the same over every held-out budget and seed (budget :data:`POOLED`)."""
    frame = pd.DataFrame(answers)
    if frame.empty:
        return []
    frame = frame[frame["budget"].isin(held_out)]
    pooled = frame.assign(budget=POOLED)
    cols = ["test_top1", "search_val_top1", "search_val_kl", "evaluations"]
    out = []
    for part in (frame, pooled):
        g = part.groupby(["budget", "k", "arm"], sort=False)
        t = g[cols].agg(["mean", "std"])
        t.columns = [f"{c}_{s}" for c, s in t.columns]
        t["runs"] = g.size()
        out += records(t.reset_index())
    return out


def comparisons(ks: list[int], controls_at: int) -> list[tuple[int, str, str]]:
    """The table's (k, arm, against): at k = 0 the learning arms and reuse against the ILP; at each k > 0 the agent
    against each control, the surrogate against local and nearest, and the frozen actor against the agent."""
    out = [(0, AGENT, ILP), (0, SURROGATE, ILP), (0, NEAREST, ILP)] if 0 in ks else []
    for k in sorted(k for k in ks if k > 0):
        out += [(k, AGENT, c) for c in CONTROLS]
        out += [(k, SURROGATE, LOCAL), (k, SURROGATE, NEAREST), (k, FROZEN, AGENT)]
    return out


def cases(hits_of: HitsOf, seeds: list[int], held_out: list[str], ks: list[int], rules: Rules) -> list[dict[str, Any]]:
    """Every comparison of :func:`comparisons` at every held-out budget and pooled (see the module docstring). A
    (seed, budget) where either arm has no answer is left out of its case."""
    out: list[dict[str, Any]] = []
    columns: list[np.ndarray] = []  # per case: the per-image difference averaged over its (budget, seed) pairs
    for k, arm, against in comparisons(ks, rules.controls_at):
        pooled_vectors, pooled_tests = [], []
        for budget in held_out:
            vectors, tests = [], []
            for seed in seeds:
                a, b = hits_of(seed, budget, k, arm), hits_of(seed, budget, k, against)
                if a is None or b is None:
                    continue
                vectors.append(100.0 * (a.astype(np.float64) - b.astype(np.float64)))
                tests.append({"seed": seed, "budget": budget, **mcnemar(a, b)})
            pooled_vectors += vectors
            pooled_tests += tests
            if vectors:
                out.append({"k": k, "arm": arm, "against": against, "budget": budget, "tests": tests})
                columns.append(np.mean(vectors, axis=0))
        if pooled_vectors:
            out.append({"k": k, "arm": arm, "against": against, "budget": POOLED, "tests": pooled_tests})
            columns.append(np.mean(pooled_vectors, axis=0))
    if not out:
        return out
    low, high = bootstrap_means(np.stack(columns, axis=1), rules.bootstrap, rules.confidence, rules.bootstrap_seed)
    # each McNemar test once (a pooled case holds the same test records as its budgets' cases)
    family = [t for c in out if c["budget"] != POOLED for t in c["tests"]]
    for t, p in zip(family, holm([t["p"] for t in family])):
        t["p_holm"] = p
    for c, column, lo, hi in zip(out, columns, low, high):
        c["diff"] = float(column.mean())
        c["low"], c["high"] = float(lo), float(hi)
        c["significant"] = sum(t["p_holm"] < rules.p_max for t in c["tests"])
    return out


def _find(found: list[dict[str, Any]], k: int, arm: str, against: str) -> dict[str, Any] | None:
    return next((c for c in found if (c["k"], c["arm"], c["against"], c["budget"]) == (k, arm, against, POOLED)), None)


def beats(found: list[dict[str, Any]], k: int, arm: str, against: str, margin: float) -> bool:
    """``arm`` beats ``against`` at k: its pooled mean difference is at least ``margin`` points and the lower end of
    its bootstrap interval lies above 0."""
    c = _find(found, k, arm, against)
    return c is not None and c["diff"] >= margin - EPS and c["low"] > 0


def decide(found: list[dict[str, Any]], rules: Rules) -> dict[str, Any]:
    """The pre-stated decision: ``items`` (each rule, met or not, with its figures), and ``outcome``: ``rl`` (the
    agent earns its place), ``surrogate`` (learning earns its place, RL does not) or ``ilp+local`` (neither)."""
    m, at = rules.margin, rules.controls_at

    def detail(k: int, arm: str, against: str) -> str:
        c = _find(found, k, arm, against)
        if c is None:
            return f"{arm} - {against} at k = {k}: not measured"
        return (
            f"{arm} - {against} at k = {k}: {c['diff']:+.2f} [{c['low']:+.2f}, {c['high']:+.2f}], Holm-significant in"
            f" {c['significant']} of {len(c['tests'])}"
        )

    agent_k0 = beats(found, 0, AGENT, ILP, m)
    agent_controls = all(beats(found, at, AGENT, c, m) for c in CONTROLS)
    surrogate_k0 = beats(found, 0, SURROGATE, ILP, m)
    surrogate_controls = all(beats(found, at, SURROGATE, c, m) for c in (LOCAL, NEAREST))
    items = [
        _item(f"rl beats ilp by >= {m:g} points at k = 0", agent_k0, detail(0, AGENT, ILP)),
        _item(
            f"rl beats local, nearest and surrogate by >= {m:g} points at k = {at}",
            agent_controls,
            "; ".join(detail(at, AGENT, c) for c in CONTROLS),
        ),
        _item(f"surrogate beats ilp by >= {m:g} points at k = 0", surrogate_k0, detail(0, SURROGATE, ILP)),
        _item(
            f"surrogate beats local and nearest by >= {m:g} points at k = {at}",
            surrogate_controls,
            "; ".join(detail(at, SURROGATE, c) for c in (LOCAL, NEAREST)),
        ),
    ]
    if agent_k0 or agent_controls:
        outcome = "rl"
    elif surrogate_k0 or surrogate_controls:
        outcome = "surrogate"
    else:
        outcome = "ilp+local"
    return {"items": items, "outcome": outcome}


def _item(item: str, met: bool, detail: str) -> dict[str, Any]:
    return {"item": item, "met": bool(met), "detail": detail}


def break_even(rows: list[dict[str, Any]], training: list[dict[str, Any]], ks: list[int]) -> list[dict[str, Any]]:
    """What a learning arm saves per new budget and after how many it has paid for its training evaluations (the
    mean over seeds): for each k below the largest, the fewest evaluations ``k_local`` with which local search's
    pooled mean test top-1 (the ILP's at 0) reaches the arm's at k; saved = k_local - k, or at least the largest k
    minus k where local never does (``lower_bound``). The arm's break-even count is its training evaluations over its
    best saving, rounded up; None when it saves nothing."""
    cost = float(np.mean([t["evaluations"] for t in training])) if training else float("nan")
    pooled = {(r["k"], r["arm"]): r["test_top1_mean"] for r in rows if r["budget"] == POOLED}
    curve = {k: pooled.get((k, ILP if k == 0 else LOCAL)) for k in sorted(ks)}
    k_max = max(ks)
    out = []
    for arm in (AGENT, SURROGATE):
        options = []
        for k in sorted(ks):
            mine = pooled.get((k, arm))
            if k == k_max or mine is None:
                continue
            reach = [kl for kl, top1 in curve.items() if top1 is not None and top1 >= mine - EPS]
            saved, bound = (min(reach) - k, False) if reach else (k_max - k, True)
            options.append(
                {"k": k, "top1": mine, "k_local": min(reach) if reach else None, "saved": saved, "lower_bound": bound}
            )
        best = max(options, key=lambda o: o["saved"], default=None)
        budgets = None if best is None or best["saved"] <= 0 else math.ceil(cost / best["saved"])
        out.append({"arm": arm, "training_evaluations": cost, "options": options, "best": best, "budgets": budgets})
    return out


def room(budgets: list[dict[str, Any]], fp32_top1: float, min_room: float) -> dict[str, Any]:
    """The transfer budgets' room: FP32's test top-1 minus the ILP's at every training and held-out budget, and
    whether every one leaves at least ``min_room`` points."""
    rooms = [
        {
            "budget": b["budget"],
            "role": b["role"],
            "room": None if b["ilp_test_top1"] is None else fp32_top1 - b["ilp_test_top1"],
        }
        for b in budgets
    ]
    return {
        "budgets": rooms,
        "met": bool(rooms) and all(r["room"] is not None and r["room"] >= min_room - EPS for r in rooms),
    }


def tau_summary(taus: list[dict[str, Any]]) -> dict[str, Any]:
    """Per ranker (critic, surrogate): the mean Kendall tau over the (seed, held-out budget) measurements, and how
    many had tau > 0 with one-sided p < 0.05."""
    out = {}
    for ranker in ("critic", "surrogate"):
        values = [t[ranker]["tau"] for t in taus if t[ranker]["tau"] is not None]
        out[ranker] = {
            "mean_tau": float(np.mean(values)) if values else None,
            "positive": sum(
                1 for t in taus if t[ranker]["tau"] is not None and t[ranker]["tau"] > 0 and t[ranker]["p"] < 0.05
            ),
            "measured": len(taus),
        }
    return out
