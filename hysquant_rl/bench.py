"""The benchmark's statistics and reports: evaluation throughput, aggregation over seeds, the McNemar test, the
noise of search-val, the room each budget leaves, the agent's learning diagnostics, the goal check and the verdict,
``bench.md`` and ``pareto.png``. The runs themselves are planned by ``hysquant-bench``
(:mod:`hysquant_rl.apps.bench`).

The goal (``bench.goal``, :func:`goal`): ``method`` (rl) reaches at least every other method's mean test top-1 at
every budget, and at each regime's tightest budget beats ``reference`` (ILP-KL) by ``margin`` points with a McNemar
p-value below ``p_max`` in at least ``min_seeds`` of its seeds. A regime's tightest budget is its smallest fraction;
a regime with budgets of several kinds (latency and energy) has a smallest fraction per kind, and of those the
tightest is the one with the most room: the lowest reference test top-1 (:func:`tightest`). The other targets
(``bench.targets``: room, learning, overhead) are judged with the goal in :func:`verdict`.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hysquant_rl.errors import HySquantError
from hysquant_rl.io import atomic_write, records
from hysquant_rl.lut.table import read_document
from hysquant_rl.pipeline import Pipeline

log = logging.getLogger(__name__)
BUDGET_KEYS = {"latency": "latency_ms", "energy": "energy_mj"}  # budget kind of a plan -> budget key
EPS = 1e-9  # points: means of top-1 over the same images compare equal within float summation error


def budget_label(kind: str, fraction: float) -> str:
    """A budget's name in the tables and run directories: ``latency 0.20`` (more decimals only when needed)."""
    return f"{kind} {fraction:.2f}" if round(fraction, 2) == fraction else f"{kind} {fraction:g}"


def budget_parts(label: str) -> tuple[str, float]:
    """(kind, fraction) of a budget named by :func:`budget_label`."""
    kind, fraction = label.split()
    return kind, float(fraction)


def regime_budgets(plan: Any) -> list[tuple[int, list[tuple[str, float]]]]:
    """``bench.plans.*.regimes`` as (batch size, [(budget kind, fraction), ...]) per regime, checked: each regime is
    ``{batch: N, budgets: {latency: [...], energy: [...]}}`` with at least one budget, kinds from
    :data:`BUDGET_KEYS`, no budget or batch size twice."""
    out: list[tuple[int, list[tuple[str, float]]]] = []
    for regime in plan["regimes"]:
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
            raise HySquantError(
                f"bench plan, batch {batch}: unknown budget kinds {unknown}: use {', '.join(BUDGET_KEYS)}"
            )
        labels = [budget_label(kind, f) for kind, f in pairs]
        if not pairs or len(set(labels)) < len(labels):
            raise HySquantError(
                f"bench plan, batch {batch}: give at least one budget, each once (given: {', '.join(labels) or 'none'})"
            )
        out.append((batch, pairs))
    batches = [batch for batch, _ in out]
    if not out or len(set(batches)) < len(batches):
        raise HySquantError(f"bench plan: give at least one regime, each batch size once (given: {batches})")
    return out


def throughput(pipe: Pipeline, bits: list[tuple[int, int]], split: str, repeats: int) -> float:
    """Best-of-``repeats`` images/s of a full evaluation (forward passes and metrics) of ``bits``."""
    n = len(pipe.data.split(split))
    best = float("inf")
    for _ in range(repeats):
        pipe.qmodel.apply_bits(bits)
        start = time.perf_counter()
        pipe.evaluator.logits(pipe.data.split(split))
        best = min(best, time.perf_counter() - start)
    return n / best


@dataclass(frozen=True)
class Goal:
    """``bench.goal``: ``method``'s mean test top-1 is at least every other method's at every budget, and at each
    regime's tightest budget (:func:`tightest`) it beats ``reference`` by ``margin`` points with a McNemar p-value
    below ``p_max`` in at least ``min_seeds`` of its seeds."""

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


def lut_build_seconds(lut: Any) -> float | None:
    """Seconds the LUT took to build: this run's, or on a cache hit the time recorded in the cache file."""
    build_meta = lut.meta.get("build", {})
    if build_meta.get("evaluated"):
        return float(build_meta["wall_s"])
    try:
        doc = read_document(Path(lut.meta["cache"]["path"]))
        return float(doc["build"]["wall_s"]) if doc["build"].get("evaluated") else None
    except (HySquantError, KeyError, TypeError, ValueError):
        return None


def aggregate(runs: pd.DataFrame) -> list[dict[str, Any]]:
    """Mean and sample std over seeds per (regime, budget, method); std is NaN for one run."""
    cols = ["test_top1", "search_val_top1", "latency_ms", "energy_mj", "evaluations", "wall_s"]
    g = runs.groupby(["regime", "budget", "method"], sort=False)
    table = g[cols].agg(["mean", "std"])  # NaN rows (no policy found) are skipped
    table.columns = [f"{c}_{s}" for c, s in table.columns]
    table["seeds"] = g.size()
    table["found"] = g["found"].sum()
    table["limit"] = g["limit"].first()
    table["unit"] = g["unit"].first()
    table["limit_ratio_of_w8a8"] = g["limit_ratio_of_w8a8"].first()
    table["all_within_budget"] = g["within_budget"].apply(lambda x: bool(x.dropna().all()))
    return records(table.reset_index())


def episode_speed(runs: pd.DataFrame) -> list[dict[str, Any]]:
    """Per episodic method: seconds per episode, and the search's own overhead (environment, agent updates,
    projection, bookkeeping: wall time minus PTQ evaluation time, per episode) as a fraction of the time of
    one PTQ evaluation."""
    episodic = runs[runs["found"] & (runs["episodes"] > 1)]
    out = []
    for name, g in episodic.groupby("method", sort=False):
        per_eval = g["eval_s"] / g["evaluations"]
        overhead = (g["wall_s"] - g["eval_s"]) / g["episodes"]  # repeated policies cost no evaluation
        out.append(
            {
                "method": name,
                "runs": int(len(g)),
                "s_per_episode": float((g["wall_s"] / g["episodes"]).mean()),
                "eval_s_per_evaluation": float(per_eval.mean()),
                "overhead_s_per_episode": float(overhead.mean()),
                "overhead_fraction": float((overhead / per_eval).mean()),
            }
        )
    return out


def mcnemar(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Exact McNemar test of two policies' per-image top-1 hits (N,) on the same images: ``wins`` images only
    ``a`` gets right, ``losses`` only ``b``; ``diff`` a's top-1 minus b's in points (wins - losses over N); ``p``
    the two-sided binomial p-value of wins among the two."""
    from scipy.stats import binomtest

    wins, losses = int((a & ~b).sum()), int((~a & b).sum())
    p = binomtest(wins, wins + losses, 0.5).pvalue if wins + losses else 1.0
    return {"wins": wins, "losses": losses, "diff": 100.0 * (wins - losses) / len(a), "p": float(p)}


def se_top1(top1: float, n: int) -> float:
    """Standard error, in points, of one policy's top-1 ``top1`` [%] measured on ``n`` images:
    ``100 sqrt(p (1 - p) / n)``."""
    p = top1 / 100.0
    return 100.0 * math.sqrt(p * (1.0 - p) / n)


def se_paired(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Standard error, in points, of the top-1 difference of two policies from their per-image hits (N,) on the same
    images: ``100 sqrt(d / N)``, ``d`` the discordant fraction (images exactly one of the two gets right)."""
    d = float(np.mean(a != b))
    return {"discordant": d, "se": 100.0 * math.sqrt(d / len(a))}


def learning(history: list[dict[str, Any]], warmup: int) -> dict[str, Any]:
    """The agent's learning diagnostics from its episode history (:class:`~hysquant_rl.search.recorder.Recorder`).
    Episodes 0..``warmup`` (``agent.warmup_episodes``) come before the updates; of the episodes after them,
    ``new_policy_fraction`` evaluated a policy not seen before in the run (None: there are none).
    ``last_improvement``: the last episode whose reward beat every earlier one; ``improved``: it lies after the
    warm-up, i.e. the best reward over all episodes beats the best over episodes <= ``warmup``. Skipped (NaN)
    episodes carry no reward. ``proposed_new_fraction``: of the episodes after the warm-up, those whose policy the
    actor and its noise proposed was new, before the novelty step (the agent's own exploration, collapse or not)."""
    after = [e for e in history if e["episode"] > warmup]
    scored = [(int(e["episode"]), float(e["reward"])) for e in history if not e.get("skipped", False)]
    last, best = None, -math.inf
    for episode, reward in scored:
        if reward > best:
            last, best = episode, reward
    warm = [reward for episode, reward in scored if episode <= warmup]
    return {
        "warmup_episodes": int(warmup),
        "episodes": len(history),
        "episodes_after_warmup": len(after),
        "new_policy_fraction": sum(not e.get("cached", False) for e in after) / len(after) if after else None,
        "proposed_new_fraction": (
            sum(not e.get("proposed_repeat", False) for e in after) / len(after) if after else None
        ),
        "best_reward_warmup": max(warm) if warm else None,
        "best_reward": best if scored else None,
        "last_improvement": last,
        "improved": last is not None and last > warmup,
    }


def room(table: list[dict[str, Any]], fp32_top1: float, reference: str, min_room: float) -> list[dict[str, Any]]:
    """Per (regime, budget): FP32's test top-1 minus ``reference``'s mean (None where it found no policy), and
    whether that room is at least ``min_room`` points."""
    out = []
    for t in table:
        if t["method"] != reference:
            continue
        top1 = float(t["test_top1_mean"]) if t["found"] else None
        gap = None if top1 is None else fp32_top1 - top1
        out.append(
            {
                "regime": int(t["regime"]),
                "budget": t["budget"],
                "reference_top1": top1,
                "room": gap,
                "met": gap is not None and gap >= min_room - EPS,
            }
        )
    return out


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


def goal(
    table: list[dict[str, Any]], g: Goal, paired: dict[tuple[int, str], list[dict[str, Any]]] | None = None
) -> list[dict[str, Any]]:
    """:class:`Goal` per (regime, budget) where ``g.method`` ran: its mean test top-1 against every other method
    that found a policy (``beaten_by``: those with a higher mean, best first; all of them where ``g.method`` found
    none), its margin over ``g.reference``, and ``paired``'s per-seed McNemar tests against the reference's policy
    (:func:`mcnemar`, keyed by (regime, budget)), each marked ``passes`` when that seed's difference is at least
    ``g.margin`` points with p < ``g.p_max``. At each regime's tightest budget (:func:`tightest`): ``tightest``,
    ``seeds_passing`` and ``beats_reference_by_margin`` (at least ``g.min_seeds`` seeds pass)."""
    tight = tightest(table, g.reference)
    groups: dict[tuple[int, str], dict[str, dict[str, Any]]] = {}
    for t in table:
        groups.setdefault((int(t["regime"]), t["budget"]), {})[t["method"]] = t
    out = []
    for (regime, budget), by in groups.items():
        me = by.get(g.method)
        if me is None:
            continue
        mine = float(me["test_top1_mean"]) if me["found"] else None
        std = me.get("test_top1_std")
        others = sorted(
            ((m, float(t["test_top1_mean"])) for m, t in by.items() if m != g.method and t["found"]),
            key=lambda x: -x[1],
        )
        beaten_by = [{"method": m, "test_top1": v} for m, v in others if mine is None or v > mine + EPS]
        entry: dict[str, Any] = {
            "regime": regime,
            "budget": budget,
            "method_top1": mine,
            "method_std": None if std is None or pd.isna(std) else float(std),
            "best_other": others[0][0] if others else None,
            "best_other_top1": others[0][1] if others else None,
            "beaten_by": beaten_by,
            "at_least_every_other": mine is not None and not beaten_by,
        }
        ref = by.get(g.reference)
        if ref is not None and ref["found"]:
            entry["reference_top1"] = float(ref["test_top1_mean"])
            if mine is not None:
                entry["margin_over_reference"] = mine - entry["reference_top1"]
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


def _signed(x: float | None) -> str:
    return "-" if x is None else f"{x:+.2f}"


def _points(x: float) -> str:
    return f"{x:g} point{'' if x == 1 else 's'}"


def _top1(x: float) -> str:
    return f"{x:.2f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f} %"


def verdict(r: dict[str, Any], g: Goal, t: Targets) -> list[dict[str, Any]]:
    """Every target of the bench, ``met`` or not, with the figures that decided it (``detail``): the room at every
    budget, :class:`Goal`'s two parts (the tightest budget once per regime), ``g.method``'s learning diagnostics
    (:func:`learning`) and its overhead per episode (:func:`episode_speed`). Reads ``r``'s plan, runs, room, goal
    and speed."""
    items: list[dict[str, Any]] = []

    def add(item: str, met: bool, detail: str) -> None:
        items.append({"item": item, "met": bool(met), "detail": detail})

    def where(e: dict[str, Any]) -> str:
        return f"batch {e['regime']} {e['budget']}"

    rooms = r["room"]
    short = [e for e in rooms if not e["met"]]
    lowest = min((e["room"] for e in rooms if e["room"] is not None), default=None)
    add(
        f"room (FP32 test top-1 minus {g.reference}'s) >= {_points(t.min_room)} at every budget",
        bool(rooms) and not short,
        ", ".join(f"{where(e)}: {_signed(e['room'])}" for e in short) or f"lowest {_signed(lowest)}",
    )
    entries = r["goal"]
    behind = [e for e in entries if not e["at_least_every_other"]]
    add(
        f"{g.method}'s mean test top-1 >= every other method's at every budget",
        bool(entries) and not behind,
        "; ".join(
            f"{where(e)}: {g.method} {'found no policy' if e['method_top1'] is None else _top1(e['method_top1'])},"
            " beaten by " + ", ".join(f"{b['method']} {b['test_top1']:.2f}" for b in e["beaten_by"])
            for e in behind
        )
        or f"at all {len(entries)} budgets",
    )
    for batch, _ in regime_budgets(r["plan"]):
        e = next((e for e in entries if e["regime"] == batch and e.get("tightest")), None)
        if e is None:
            add(f"batch {batch}, tightest budget: {g.method} beats {g.reference}", False, f"no {g.method} result")
            continue
        margin = e.get("margin_over_reference")
        add(
            f"batch {batch}, tightest budget ({e['budget']}): {g.method} >= {g.reference} + {_points(g.margin)} with"
            f" McNemar p < {g.p_max:g} in >= {g.min_seeds} seeds",
            e["beats_reference_by_margin"],
            f"{e['seeds_passing']} of {len(e['paired_vs_reference'])} seeds; mean difference {_signed(margin)}",
        )
    runs = [x for x in r["runs"] if x["method"] == g.method and x.get("learning")]
    low = [x for x in runs if (x["learning"]["new_policy_fraction"] or 0.0) < t.new_policy_fraction - EPS]
    fractions = [x["learning"]["new_policy_fraction"] for x in runs if x["learning"]["new_policy_fraction"] is not None]
    add(
        f"{g.method}: >= {100 * t.new_policy_fraction:g} % of the episodes after the warm-up evaluate a policy new to"
        " the run, in every run",
        bool(runs) and not low,
        ", ".join(f"{where(x)} seed {x['seed']}: {_pct(x['learning']['new_policy_fraction'])}" for x in low)
        or f"lowest {_pct(min(fractions, default=None))} over {len(runs)} runs",
    )
    improved: dict[str, list[bool]] = {}
    for x in runs:
        improved.setdefault(where(x), []).append(bool(x["learning"]["improved"]))
    add(
        f"{g.method}: the best search-val reward improves after the updates begin in >= {t.improved_seeds} seeds at"
        " every budget",
        bool(improved) and all(sum(v) >= t.improved_seeds for v in improved.values()),
        ", ".join(f"{k}: {sum(v)} of {len(v)}" for k, v in improved.items()) or f"no {g.method} run",
    )
    speed = next((e for e in r["speed"]["episodes"] if e["method"] == g.method), None)
    add(
        f"{g.method}: search overhead <= {100 * t.max_overhead:g} % of a PTQ evaluation",
        speed is not None and speed["overhead_fraction"] <= t.max_overhead,
        f"{_pct(speed['overhead_fraction'])}" if speed else f"no episodic {g.method} run",
    )
    return items


def _pm(mean: float | None, std: float | None, fmt: str = ".2f") -> str:
    if mean is None:
        return "-"
    return f"{mean:{fmt}}" if std is None else f"{mean:{fmt}} ± {std:{fmt}}"


def _paired(tests: list[dict[str, Any]]) -> str:
    return (
        ", ".join(f"seed {t['seed']}: {t['wins']}/{t['losses']} {t['diff']:+.2f} p={t['p']:.3f}" for t in tests) or "-"
    )


def _seeds(seeds: dict[str, list[int]]) -> str:
    """'rl, local with seeds 0, 1, 2; uniform, greedy, ... with seed 0'."""
    groups: dict[tuple[int, ...], list[str]] = {}
    for method, s in seeds.items():
        groups.setdefault(tuple(s), []).append(method)
    return "; ".join(
        f"{', '.join(ms)} with seed{'s' if len(s) > 1 else ''} {', '.join(map(str, s))}" for s, ms in groups.items()
    )


def markdown(r: dict[str, Any]) -> str:
    regimes = regime_budgets(r["plan"])
    g, tg, sv = r["goal_config"], r["targets"], r["search_val"]
    m, ref = g["method"], g["reference"]
    q = r.get("quant", {})
    scope = (
        f" Quantization scope `{q['scope']}` ({r['units']} units), {q['calibrator']} calibration, {q['softmax']}"
        " softmax levels."
        if q
        else ""
    )
    lines = [
        f"# Benchmark: {r['model']['name']} on {r['data']}, {r['device']}{' (quick)' if r['quick'] else ''}",
        "",
        f"Budgets per regime (a batch size of the {r['device']} profile), at fractions of the way from the cheapest"
        " allowed policy to uniform W8A8: "
        + "; ".join(f"batch {batch}: {', '.join(budget_label(k, f) for k, f in pairs)}" for batch, pairs in regimes)
        + f". {r['plan']['episodes']} episodes per episodic run. Methods run {_seeds(r['seeds'])}"
        " (mean ± sample std over seeds)."
        + " Test top-1 on the test split, which no search saw; search-val top-1 is what the search optimised"
        f" ({sv['size']} images).{scope} Latency and energy are modelled (roofline of the {r['device']} profile), not"
        f" measured. Total {r['wall_s'] / 60:.1f} min.",
        "",
        "## Verdict",
        "",
        *(f"- {v['item']}: {'met' if v['met'] else 'NOT met'} ({v['detail']})." for v in r["verdict"]),
        "",
    ]
    for regime, _ in regimes:
        lines += [
            f"## Batch {regime}",
            "",
            "| budget | method | test top-1 | search-val top-1 | latency (ms) | energy (mJ) | PTQ evals | wall (s) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for t in r["table"]:
            if t["regime"] != regime:
                continue
            limit = f"{t['budget']} (≤ {t['limit']:.4g} {t['unit']}, {t['limit_ratio_of_w8a8']:.2f}x W8A8)"
            if not t["found"]:
                lines.append(f"| {limit} | {t['method']} | no policy within budget | | | | | |")
                continue
            lines.append(
                f"| {limit} | {t['method']} | {_pm(t['test_top1_mean'], t['test_top1_std'])} |"
                f" {_pm(t['search_val_top1_mean'], t['search_val_top1_std'])} | {t['latency_ms_mean']:.4g} |"
                f" {t['energy_mj_mean']:.4g} | {t['evaluations_mean']:.0f} | {t['wall_s_mean']:.1f} |"
            )
        left = []
        for budget in dict.fromkeys(t["budget"] for t in r["table"] if t["regime"] == regime):
            found = [t for t in r["table"] if t["regime"] == regime and t["budget"] == budget and t["found"]]
            if found:
                best = max(found, key=lambda t: t["test_top1_mean"])
                left.append(f"{budget}: {r['fp32']['test_top1'] - best['test_top1_mean']:+.2f} ({best['method']})")
        rooms = [e for e in r["room"] if e["regime"] == regime]
        lines += [
            "",
            f"Room left (FP32 test top-1 {r['fp32']['test_top1']:.2f} minus the best method's mean): "
            + ", ".join(left)
            + ".",
            "",
            f"Room (FP32 test top-1 minus {ref}'s; the bench requires >= {_points(tg['min_room'])}): "
            + ", ".join(f"{e['budget']}: {_signed(e['room'])} ({'met' if e['met'] else 'NOT met'})" for e in rooms)
            + ".",
        ]
        refs = [u for u in r["uniform"] if u["regime"] == regime]
        if refs:
            lines += [
                "",
                "Uniform reference points: "
                + ", ".join(
                    f"{u['policy']} {u['test_top1']:.2f} % at {u['latency_ms']:.4g} ms / {u['energy_mj']:.4g} mJ"
                    for u in refs
                )
                + ".",
            ]
        lines.append("")
    lines += [
        "## Search-val noise",
        "",
        f"- Search-val: {sv['size']} images; FP32 search-val top-1 {sv['fp32_top1']:.2f} %.",
        f"- Standard error of one policy's search-val top-1 at FP32's accuracy, 100 sqrt(p (1 - p) / n):"
        f" {sv['se_top1']:.2f} points.",
        f"- Standard error of the paired {m} - {ref} difference on search-val, 100 sqrt(d / n) with d the fraction of"
        f" images exactly one of the two policies gets right (mean over {m}'s seeds): "
        + (
            ", ".join(
                f"batch {e['regime']} {e['budget']}: {e['se_mean']:.2f} points"
                f" (d {100 * float(np.mean([s['discordant'] for s in e['seeds']])):.1f} %)"
                for e in sv["paired"]
            )
            or "-"
        )
        + ".",
        "",
        "## Goal",
        "",
        f"{m}'s mean test top-1 against every other method's at every budget, and at each regime's tightest budget"
        f" (its smallest fraction; with budgets of several kinds, the one where {ref} leaves the most room, i.e. the"
        f" lowest {ref} test top-1): {m} >= {ref} + {_points(g['margin'])} with McNemar p < {g['p_max']:g} in at"
        f" least {g['min_seeds']} seeds. McNemar per seed, on the test split: images only {m} gets right / only"
        f" {ref} gets right, the top-1 difference in points, the exact two-sided p-value.",
        "",
        f"| batch | budget | {m} test top-1 | best other | beaten by | {m} - {ref} | McNemar per seed |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in r["goal"]:
        margin = _signed(e.get("margin_over_reference"))
        if e.get("tightest"):
            margin += (
                f" (tightest: {e['seeds_passing']} of {len(e['paired_vs_reference'])} seeds pass,"
                f" {'met' if e['beats_reference_by_margin'] else 'NOT met'})"
            )
        other = "-" if e["best_other"] is None else f"{e['best_other']} {e['best_other_top1']:.2f}"
        beaten = ", ".join(b["method"] for b in e["beaten_by"]) or "none"
        lines.append(
            f"| {e['regime']} | {e['budget']} | {_pm(e['method_top1'], e['method_std'])} | {other} | {beaten} |"
            f" {margin} | {_paired(e['paired_vs_reference'])} |"
        )
    agent = [x for x in r["runs"] if x.get("learning")]
    if agent:
        lines += [
            "",
            "## Learning",
            "",
            "The agent's runs. Episodes 0 to agent.warmup_episodes come before its updates. New policies: the share"
            " of the episodes after them that evaluated a policy not seen before in the run (target >="
            f" {100 * tg['new_policy_fraction']:g} %); an episode whose proposed policy (the actor's, with its noise)"
            " had been evaluated moves to a new one (novelty step), so the next column is the agent's own share: the"
            " episodes whose proposal was new. Improved: the best search-val reward over all episodes beats"
            f" the best up to the warm-up's end (target: in >= {tg['improved_seeds']} seeds per budget).",
            "",
            "| batch | budget | method | seed | warm-up | new policies after it | proposed new |"
            " best reward: warm-up / all | improved | last improvement (episode) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for x in agent:
            d = x["learning"]
            best = f"{_num(d['best_reward_warmup'])} / {_num(d['best_reward'])}"
            last = "-" if d["last_improvement"] is None else d["last_improvement"]
            lines.append(
                f"| {x['regime']} | {x['budget']} | {x['method']} | {x['seed']} | {d['warmup_episodes']} |"
                f" {_pct(d['new_policy_fraction'])} of {d['episodes_after_warmup']} |"
                f" {_pct(d.get('proposed_new_fraction'))} | {best} |"
                f" {'yes' if d['improved'] else 'no'} | {last} |"
            )
    s = r["speed"]
    lines += [
        "",
        "## Speed",
        "",
        f"- Evaluation throughput on {s['split']}: FP32 {s['fp32_images_per_s']:.0f} images/s,"
        f" {s['quantized_policy']} {s['quantized_images_per_s']:.0f} images/s (ratio {s['throughput_ratio']:.2f}).",
        "- LUT build: "
        + ", ".join(f"batch {k}: {'-' if v is None else f'{v:.1f} s'}" for k, v in s["lut_build_s"].items())
        + ".",
    ]
    for e in s["episodes"]:
        lines.append(
            f"- {e['method']}: {e['s_per_episode']:.2f} s per episode, {e['eval_s_per_evaluation']:.2f} s per PTQ"
            f" evaluation; environment and agent overhead {e['overhead_s_per_episode']:.2f} s per episode,"
            f" {100 * e['overhead_fraction']:.0f} % of an evaluation (target <= {100 * tg['max_overhead']:g} %)."
        )
    return "\n".join(lines) + "\n"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def pareto_plot(r: dict[str, Any], path: Path) -> None:
    """Test top-1 against a modelled cost, one column per regime, in the unit of that regime's budgets (latency
    when it has budgets of both kinds): every method (mean ± std over seeds) at every budget, the uniform
    configurations as grey reference points, the budgets of that kind as vertical lines. The bottom row zooms on
    the top 4 points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hysquant_rl.search.budget import UNITS

    regimes = regime_budgets(r["plan"])
    fig, axes = plt.subplots(2, len(regimes), figsize=(6.5 * len(regimes), 9), squeeze=False)
    methods = list(r["methods"])
    markers = "osD^v<>PX*"
    for col, (regime, pairs) in enumerate(regimes):
        kinds = dict.fromkeys(kind for kind, _ in pairs)
        kind = "latency" if "latency" in kinds else "energy"
        key = BUDGET_KEYS[kind]
        both = "\nx: latency (this regime also has energy budgets)" if len(kinds) > 1 else ""
        refs = [u for u in r["uniform"] if u["regime"] == regime]
        rows = [t for t in r["table"] if t["regime"] == regime and t["found"]]
        best = max([t["test_top1_mean"] for t in rows] + [u["test_top1"] for u in refs])
        for row, ax in enumerate(axes[:, col]):
            ax.scatter(
                [u[key] for u in refs], [u["test_top1"] for u in refs], c="0.6", marker="x", label="uniform reference"
            )
            for u in refs:
                ax.annotate(
                    u["policy"],
                    (u[key], u["test_top1"]),
                    fontsize=7,
                    color="0.4",
                    xytext=(3, 3),
                    textcoords="offset points",
                    clip_on=True,
                )
            for i, m in enumerate(methods):
                mine = [t for t in rows if t["method"] == m]
                if mine:
                    ax.errorbar(
                        [t[f"{key}_mean"] for t in mine],
                        [t["test_top1_mean"] for t in mine],
                        yerr=[t["test_top1_std"] or 0.0 for t in mine],
                        fmt=markers[i % len(markers)],
                        color=f"C{i}",
                        label=m,
                        alpha=0.8,
                        capsize=2,
                    )
            for limit in {t["limit"] for t in rows if t["unit"] == UNITS[key]}:
                ax.axvline(limit, color="0.85", lw=0.8, zorder=0)
            title = f"{r['device']}, batch {regime}"
            if row == 1:
                ax.set_ylim(best - 4.0, best + 0.5)
                title += ": within 4 points of the best"
            ax.set_title(title + both, fontsize=10)
            ax.set_xlabel(f"modelled {kind} ({UNITS[key]})")
            ax.set_ylabel("test top-1 (%)")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=110))
    plt.close(fig)
