"""``hysquant-bench``: is the RL search worth it, and how fast is it?

Every search method (``bench.methods``: uniform, greedy, the ILP over the LUT's KL and top-1-drop columns,
random, the warm-started agent and the plain one) runs under the same budgets in each hardware regime
(``bench.plans.<full|quick>.regimes``: batch sizes of the hardware profile). Latency budgets sit at fractions
of the way from the cheapest allowed policy to uniform W8A8 (loose budgets are met by any method and prove
nothing), plus energy budgets placed the same way. Stochastic methods run once per seed. Each found policy is
evaluated once on the test split; the search only ever saw search-val.

Writes ``bench.json`` (every run, the aggregated table, the goal check, speed figures; rewritten atomically
after every run so an interrupted benchmark keeps what it measured), ``bench.md`` and ``pareto.png``, plus
each run's TensorBoard and best_policy.json under ``runs/``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from hysquant_rl.budget import UNITS, policy_totals, span
from hysquant_rl.errors import HySquantError, NoPolicyError
from hysquant_rl.hardware import CostModel, load_profile
from hysquant_rl.io import atomic_write, records, save_json
from hysquant_rl.pipeline import Pipeline, build
from hysquant_rl.policy import parse_uniform

log = logging.getLogger(__name__)
BUDGET_KEYS = {"latency": "latency_ms", "energy": "energy_mj"}


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


def with_overrides(cfg: Any, overrides: list[str]) -> Any:
    """A copy of ``cfg`` with Hydra-style ``key=value`` overrides applied."""
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))


def regime_pipeline(base: Pipeline, cfg: Any) -> Pipeline:
    """``base`` (model, data, calibration, FP32 logits) priced on ``cfg.hardware`` (another batch size)."""
    return replace(base, cfg=cfg, cost=CostModel(base.layers, base.matmuls, load_profile(cfg.hardware)))


def lut_build_seconds(lut: Any) -> float | None:
    """Seconds the LUT took to build: this run's, or on a cache hit the time recorded in the cache file."""
    build_meta = lut.meta.get("build", {})
    if build_meta.get("evaluated"):
        return float(build_meta["wall_s"])
    try:
        doc = json.loads(Path(lut.meta["cache"]["path"]).read_text())
        return float(doc["build"]["wall_s"]) if doc["build"].get("evaluated") else None
    except (OSError, KeyError, TypeError, ValueError):
        return None


def run_bench(cfg: Any, out: Path) -> dict[str, Any]:
    from envs import policy_key
    from hysquant_rl.search import search
    from hysquant_rl.sensitivity import build_lut

    b = cfg.bench
    plan = b.plans.quick if b.quick else b.plans.full
    methods = {str(k): list(v) for k, v in b.methods.items()}
    unknown = [m for m in [*b.stochastic, b.goal.method, b.goal.reference, *b.goal.baselines] if m not in methods]
    if unknown:
        raise HySquantError(f"bench names unknown methods {unknown}: use names from bench.methods ({', '.join(methods)})")
    start = time.perf_counter()
    base = build(cfg)
    n = len(base.layers)
    test_cache: dict[bytes, tuple[dict[str, float], np.ndarray]] = {}
    labels = base.evaluator.fp32("test")[1].numpy()
    correct: dict[tuple[int, str, str, int], np.ndarray] = {}  # per-image top-1 hits of each run's policy

    def test_metrics(bits: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
        """Test metrics and per-image top-1 hits (N,) of a policy, evaluated once per policy."""
        key = policy_key(bits)
        if key not in test_cache:
            m, pred = base.evaluator.evaluate_with_predictions([tuple(x) for x in np.asarray(bits).tolist()], "test")
            test_cache[key] = (m.to_dict(), pred.numpy() == labels)
        return test_cache[key]

    result: dict[str, Any] = {
        "model": base.spec.to_dict(), "data": base.data.name, "device": base.cost.device, "quick": bool(b.quick),
        "plan": OmegaConf.to_container(plan, resolve=True), "methods": methods,
        "goal_config": OmegaConf.to_container(b.goal, resolve=True), "runs": [], "uniform": [],
        "speed": {"lut_build_s": {}},
    }
    budgets = [("latency", float(f)) for f in plan.latency_fractions] + [("energy", float(f)) for f in plan.energy_fractions]
    total = sum(len(plan.seeds) if m in b.stochastic else 1 for m in methods) * len(budgets) * len(plan.regimes)
    done = 0
    clear = [f"budget.{k}=null" for k in UNITS] + [f"budget.{k.split('_')[0]}_ratio=null" for k in UNITS]
    for batch in plan.regimes:
        rcfg = with_overrides(cfg, [f"hardware.batch_size={int(batch)}"])
        pipe = regime_pipeline(base, rcfg)
        lut = build_lut(rcfg, pipe)  # its rows carry this regime's costs: one cached table per batch size
        result["speed"]["lut_build_s"][str(batch)] = lut_build_seconds(lut)
        low, w8a8 = span(pipe.cost, lut.mask())
        for spec in plan.references:  # the uniform reference points of the plot
            bits = [parse_uniform(str(spec))] * n
            result["uniform"].append({"regime": int(batch), "policy": str(spec), "test_top1": test_metrics(np.array(bits))[0]["top1"],
                                      **policy_totals(pipe.cost, bits)})
        for kind, f in budgets:
            key = BUDGET_KEYS[kind]
            limit = low[key] + f * (w8a8[key] - low[key])
            budget = f"{kind} {f:.2f}"
            for name, overrides in methods.items():
                for seed in (plan.seeds if name in b.stochastic else plan.seeds[:1]):
                    run_cfg = with_overrides(rcfg, [*clear, f"budget.{key}={limit!r}", f"search.seed={int(seed)}",
                                                    f"search.episodes={int(plan.episodes)}", *overrides])
                    run_dir = out / "runs" / f"batch{batch}" / budget.replace(" ", "_") / name / f"seed{seed}"
                    done += 1
                    log.info("run %d/%d: batch %d, %s budget (%.4g %s), %s, seed %d",
                             done, total, batch, budget, limit, UNITS[key], name, seed)
                    row = {"regime": int(batch), "budget": budget, "limit": limit, "unit": UNITS[key],
                           "limit_ratio_of_w8a8": limit / w8a8[key], "method": name, "seed": int(seed)}
                    try:
                        found = search(run_cfg, replace(pipe, cfg=run_cfg), lut, run_dir, log_lut=False)
                    except NoPolicyError as e:  # e.g. no uniform pair fits: a result, not a failure
                        log.warning("%s", e)
                        result["runs"].append({**row, "found": False})
                        continue
                    p = found.problem
                    val = p.metrics(found.bits)
                    totals = p.totals(found.bits)
                    test, correct[(int(batch), budget, name, int(seed))] = test_metrics(found.bits)
                    result["runs"].append({
                        **row, "found": True,
                        "test_top1": test["top1"], "search_val_top1": val["top1"],
                        "search_val_kl": val["kl"], "latency_ms": totals["latency_ms"],
                        "energy_mj": totals["energy_mj"], "within_budget": totals[key] <= limit * (1 + 1e-9),
                        "evaluations": len(p.cache), "episodes": len(found.recorder.history),
                        "wall_s": found.wall_s, "eval_s": p.eval_time_s,
                        "mean_w_bits": float(found.bits[:, 0].mean()), "mean_a_bits": float(found.bits[:, 1].mean()),
                    })
                    save_json(result, out / "bench.json")
    fp32 = [(32, 32)] * n
    quant = [parse_uniform(str(b.throughput.policy))] * n
    base.evaluator.evaluate(quant, str(b.throughput.split))  # warm the caches, as a search would have
    fp = throughput(base, fp32, str(b.throughput.split), int(b.throughput.repeats))
    q = throughput(base, quant, str(b.throughput.split), int(b.throughput.repeats))
    result["speed"].update({"split": str(b.throughput.split), "fp32_images_per_s": fp, "quantized_images_per_s": q,
                            "quantized_policy": str(b.throughput.policy), "throughput_ratio": q / fp})
    runs = pd.DataFrame(result["runs"])
    result["table"] = aggregate(runs)
    result["speed"]["episodes"] = episode_speed(runs)
    paired: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for (regime, budget, name, seed), hits in correct.items():
        ref = correct.get((regime, budget, str(b.goal.reference), int(plan.seeds[0])))
        if name == b.goal.method and ref is not None:
            paired.setdefault((regime, budget), []).append({"seed": seed, **mcnemar(hits, ref)})
    result["goal"] = goal(result["table"], b.goal, paired)
    result["wall_s"] = time.perf_counter() - start
    save_json(result, out / "bench.json")
    text = markdown(result)
    atomic_write(out / "bench.md", lambda fh: fh.write(text.encode()))
    pareto_plot(result, out / "pareto.png")
    print(text)
    return result


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
        out.append({"method": name, "runs": int(len(g)), "s_per_episode": float((g["wall_s"] / g["episodes"]).mean()),
                    "eval_s_per_evaluation": float(per_eval.mean()), "overhead_s_per_episode": float(overhead.mean()),
                    "overhead_fraction": float((overhead / per_eval).mean())})
    return out


def mcnemar(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Exact McNemar test of two policies' per-image top-1 hits (N,) on the same images: ``wins`` images only
    ``a`` gets right, ``losses`` only ``b``; ``p`` the two-sided binomial p-value of wins among the two."""
    from scipy.stats import binomtest

    wins, losses = int((a & ~b).sum()), int((~a & b).sum())
    p = binomtest(wins, wins + losses, 0.5).pvalue if wins + losses else 1.0
    return {"wins": wins, "losses": losses, "p": float(p)}


def goal(table: list[dict[str, Any]], g: Any, paired: dict[tuple[int, str], list[dict[str, Any]]] | None = None) -> list[dict[str, Any]]:
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
        entry = {"regime": int(regime), "budget": budget, "method_top1": float(rl["test_top1_mean"]), "method_std": std,
                 "best_baseline": best, "best_baseline_top1": float(base.loc[best, "test_top1_mean"])}
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
    lines = [
        f"# Benchmark: {r['model']['name']} on {r['data']}, {r['device']}"
        f"{' (quick)' if r['quick'] else ''}", "",
        f"Budgets at {', '.join(map(str, plan['latency_fractions']))} of the way from the cheapest allowed policy to"
        f" uniform W8A8 (latency){' and ' + ', '.join(map(str, plan['energy_fractions'])) + ' (energy)' if plan['energy_fractions'] else ''};"
        f" {plan['episodes']} episodes per episodic run; seeds {plan['seeds']} for the stochastic methods (mean ± sample std)."
        " Test top-1 on the test split, which no search saw; search-val top-1 is what the search optimised."
        f" Total {r['wall_s'] / 60:.1f} min.", "",
    ]
    for regime in plan["regimes"]:
        lines += [f"## Batch {regime}", "",
                  "| budget | method | test top-1 | search-val top-1 | latency (ms) | energy (mJ) | PTQ evals | wall (s) |",
                  "|---|---|---|---|---|---|---|---|"]
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
                f" {t['energy_mj_mean']:.4g} | {t['evaluations_mean']:.0f} | {t['wall_s_mean']:.1f} |")
        refs = [u for u in r["uniform"] if u["regime"] == regime]
        if refs:
            lines += ["", "Uniform reference points: " + ", ".join(
                f"{u['policy']} {u['test_top1']:.2f} % at {u['latency_ms']:.4g} ms / {u['energy_mj']:.4g} mJ" for u in refs) + "."]
        lines.append("")
    g = r["goal_config"]
    lines += ["## Goal", "",
              f"{g['method']} against the best baseline (within one seed std) at every budget, and against {g['reference']}"
              f" (by {g['margin']} points at each regime's tightest latency budget). McNemar: images only {g['method']}"
              f" gets right / only {g['reference']} gets right, and the exact two-sided p-value, per seed.", "",
              f"| batch | budget | {g['method']} test top-1 | best baseline | reaches it | {g['method']} - {g['reference']} | McNemar |",
              "|---|---|---|---|---|---|---|"]
    for e in r["goal"]:
        margin = "-" if "margin_over_reference" not in e else f"{e['margin_over_reference']:+.2f}"
        if e.get("tightest"):
            margin += f" (tightest: {'met' if e['beats_reference_by_margin'] else 'NOT met'})"
        lines.append(f"| {e['regime']} | {e['budget']} | {_pm(e['method_top1'], e['method_std'])} |"
                     f" {e['best_baseline']} {e['best_baseline_top1']:.2f} | {'yes' if e['reaches_best_baseline'] else 'NO'} | {margin} |"
                     f" {_paired(e.get('paired_vs_reference', []))} |")
    s = r["speed"]
    lines += ["", "## Speed", "",
              f"- Evaluation throughput on {s['split']}: FP32 {s['fp32_images_per_s']:.0f} images/s,"
              f" {s['quantized_policy']} {s['quantized_images_per_s']:.0f} images/s (ratio {s['throughput_ratio']:.2f}).",
              "- LUT build: " + ", ".join(f"batch {k}: {'-' if v is None else f'{v:.1f} s'}" for k, v in s["lut_build_s"].items()) + "."]
    for e in s["episodes"]:
        lines.append(f"- {e['method']}: {e['s_per_episode']:.2f} s per episode, {e['eval_s_per_evaluation']:.2f} s per PTQ"
                     f" evaluation; environment and agent overhead {e['overhead_s_per_episode']:.2f} s per episode,"
                     f" {100 * e['overhead_fraction']:.0f} % of an evaluation (target <= 20 %).")
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
            ax.scatter([u["latency_ms"] for u in refs], [u["test_top1"] for u in refs], c="0.6", marker="x",
                       label="uniform reference")
            for u in refs:
                ax.annotate(u["policy"], (u["latency_ms"], u["test_top1"]), fontsize=7, color="0.4",
                            xytext=(3, 3), textcoords="offset points", clip_on=True)
            for i, m in enumerate(methods):
                mine = [t for t in rows if t["method"] == m]
                if mine:
                    ax.errorbar([t["latency_ms_mean"] for t in mine], [t["test_top1_mean"] for t in mine],
                                yerr=[t["test_top1_std"] or 0.0 for t in mine], fmt=markers[i % len(markers)],
                                color=f"C{i}", label=m, alpha=0.8, capsize=2)
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
