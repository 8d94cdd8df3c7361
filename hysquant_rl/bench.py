"""The benchmark's statistics and reports: evaluation throughput, aggregation over seeds, the McNemar test, the
goal check, ``bench.md`` and ``pareto.png``. The runs themselves are planned by ``hysquant-bench``
(:mod:`hysquant_rl.apps.bench`).
"""

from __future__ import annotations

import logging
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
    """``bench.goal``: ``method`` reaches the best of ``baselines`` within one seed std at every budget, and beats
    ``reference`` by ``margin`` points at each regime's tightest latency budget."""

    method: str
    reference: str
    margin: float
    baselines: tuple[str, ...]

    @classmethod
    def from_mapping(cls, g: Any) -> Goal:
        return cls(str(g["method"]), str(g["reference"]), float(g["margin"]), tuple(str(b) for b in g["baselines"]))


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
    ``a`` gets right, ``losses`` only ``b``; ``p`` the two-sided binomial p-value of wins among the two."""
    from scipy.stats import binomtest

    wins, losses = int((a & ~b).sum()), int((~a & b).sum())
    p = binomtest(wins, wins + losses, 0.5).pvalue if wins + losses else 1.0
    return {"wins": wins, "losses": losses, "p": float(p)}


def goal(
    table: list[dict[str, Any]], g: Goal, paired: dict[tuple[int, str], list[dict[str, Any]]] | None = None
) -> list[dict[str, Any]]:
    """Issue 5's goal per (regime, budget): ``g.method`` reaches the best of ``g.baselines`` within one seed std,
    and at each regime's tightest latency budget beats ``g.reference`` by at least ``g.margin`` points.
    ``paired`` adds each seed's McNemar test against the reference's policy."""
    frame = pd.DataFrame(table)
    out = []
    for (regime, budget), rows in frame.groupby(["regime", "budget"], sort=False):
        by = rows.set_index("method")
        if g.method not in by.index or not by.loc[g.method, "found"]:
            continue
        rl = by.loc[g.method]
        std = None if rl["test_top1_std"] is None or pd.isna(rl["test_top1_std"]) else float(rl["test_top1_std"])
        base = by.loc[[m for m in g.baselines if m in by.index and by.loc[m, "found"]]]
        best = base["test_top1_mean"].idxmax()
        entry = {
            "regime": int(regime),
            "budget": budget,
            "method_top1": float(rl["test_top1_mean"]),
            "method_std": std,
            "best_baseline": best,
            "best_baseline_top1": float(base.loc[best, "test_top1_mean"]),
        }
        entry["reaches_best_baseline"] = entry["method_top1"] >= entry["best_baseline_top1"] - (std or 0.0)
        if g.reference in by.index and by.loc[g.reference, "found"]:
            entry["reference_top1"] = float(by.loc[g.reference, "test_top1_mean"])
            entry["margin_over_reference"] = entry["method_top1"] - entry["reference_top1"]
            entry["paired_vs_reference"] = (paired or {}).get((int(regime), budget), [])
        out.append(entry)
    for regime in {e["regime"] for e in out}:
        latency = [e for e in out if e["regime"] == regime and e["budget"].startswith("latency")]
        if latency and "margin_over_reference" in latency[0]:
            tight = min(latency, key=lambda e: float(e["budget"].split()[1]))
            tight["tightest"] = True
            tight["beats_reference_by_margin"] = tight["margin_over_reference"] >= float(g.margin)
    return out


def _pm(mean: float | None, std: float | None, fmt: str = ".2f") -> str:
    if mean is None:
        return "-"
    return f"{mean:{fmt}}" if std is None else f"{mean:{fmt}} ± {std:{fmt}}"


def _paired(tests: list[dict[str, Any]]) -> str:
    return ", ".join(f"{t['wins']}/{t['losses']} p={t['p']:.2f}" for t in tests) or "-"


def markdown(r: dict[str, Any]) -> str:
    plan = r["plan"]
    energy = f" and {', '.join(map(str, plan['energy_fractions']))} (energy)" if plan["energy_fractions"] else ""
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
        f"Budgets at {', '.join(map(str, plan['latency_fractions']))} of the way from the cheapest allowed policy to"
        f" uniform W8A8 (latency){energy};"
        f" {plan['episodes']} episodes per episodic run; seeds {plan['seeds']} for the stochastic methods"
        " (mean ± sample std)."
        " Test top-1 on the test split, which no search saw; search-val top-1 is what the search optimised."
        f"{scope} Latency and energy are modelled (roofline of the {r['device']} profile), not measured."
        f" Total {r['wall_s'] / 60:.1f} min.",
        "",
    ]
    for regime in plan["regimes"]:
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
        if "fp32" in r:
            room = []
            for budget in dict.fromkeys(t["budget"] for t in r["table"] if t["regime"] == regime):
                found = [t for t in r["table"] if t["regime"] == regime and t["budget"] == budget and t["found"]]
                if found:
                    best = max(found, key=lambda t: t["test_top1_mean"])
                    gap = r["fp32"]["test_top1"] - best["test_top1_mean"]
                    room.append(f"{budget}: {gap:+.2f} ({best['method']})")
            lines += [
                "",
                f"Room left (FP32 test top-1 {r['fp32']['test_top1']:.2f} minus the best method's mean): "
                + ", ".join(room)
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
    g = r["goal_config"]
    lines += [
        "## Goal",
        "",
        f"{g['method']} against the best baseline (within one seed std) at every budget, and against {g['reference']}"
        f" (by {g['margin']} points at each regime's tightest latency budget). McNemar: images only {g['method']}"
        f" gets right / only {g['reference']} gets right, and the exact two-sided p-value, per seed.",
        "",
        f"| batch | budget | {g['method']} test top-1 | best baseline | reaches it |"
        f" {g['method']} - {g['reference']} | McNemar |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in r["goal"]:
        margin = "-" if "margin_over_reference" not in e else f"{e['margin_over_reference']:+.2f}"
        if e.get("tightest"):
            margin += f" (tightest: {'met' if e['beats_reference_by_margin'] else 'NOT met'})"
        lines.append(
            f"| {e['regime']} | {e['budget']} | {_pm(e['method_top1'], e['method_std'])} |"
            f" {e['best_baseline']} {e['best_baseline_top1']:.2f} |"
            f" {'yes' if e['reaches_best_baseline'] else 'NO'} | {margin} |"
            f" {_paired(e.get('paired_vs_reference', []))} |"
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
            f" {100 * e['overhead_fraction']:.0f} % of an evaluation (target <= 20 %)."
        )
    return "\n".join(lines) + "\n"


def pareto_plot(r: dict[str, Any], path: Path) -> None:
    """Test top-1 against modelled latency, one column per regime: every method (mean ± std over seeds) at every
    budget, the uniform configurations as grey reference points. The bottom row zooms on the top 4 points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regimes = r["plan"]["regimes"]
    fig, axes = plt.subplots(2, len(regimes), figsize=(6.5 * len(regimes), 9), squeeze=False)
    methods = list(r["methods"])
    markers = "osD^v<>PX*"
    for col, regime in enumerate(regimes):
        refs = [u for u in r["uniform"] if u["regime"] == regime]
        rows = [t for t in r["table"] if t["regime"] == regime and t["found"]]
        best = max([t["test_top1_mean"] for t in rows] + [u["test_top1"] for u in refs])
        for row, ax in enumerate(axes[:, col]):
            ax.scatter(
                [u["latency_ms"] for u in refs],
                [u["test_top1"] for u in refs],
                c="0.6",
                marker="x",
                label="uniform reference",
            )
            for u in refs:
                ax.annotate(
                    u["policy"],
                    (u["latency_ms"], u["test_top1"]),
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
                        [t["latency_ms_mean"] for t in mine],
                        [t["test_top1_mean"] for t in mine],
                        yerr=[t["test_top1_std"] or 0.0 for t in mine],
                        fmt=markers[i % len(markers)],
                        color=f"C{i}",
                        label=m,
                        alpha=0.8,
                        capsize=2,
                    )
            for limit in {t["limit"] for t in rows if t["unit"] == "ms"}:
                ax.axvline(limit, color="0.85", lw=0.8, zorder=0)
            if row == 1:
                ax.set_ylim(best - 4.0, best + 0.5)
                ax.set_title(f"{r['device']}, batch {regime}: within 4 points of the best")
            else:
                ax.set_title(f"{r['device']}, batch {regime}")
            ax.set_xlabel("modelled latency (ms)")
            ax.set_ylabel("test top-1 (%)")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=110))
    plt.close(fig)
