"""``pareto.png``: test top-1 [%] against a modelled cost per regime, from the bench's record (``bench.json``); and
``transfer.png``: the transfer experiment's test top-1 against the evaluations spent at a new budget."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hysquant_rl.bench.budgets import BUDGET_KEYS
from hysquant_rl.bench.plan import regime_budgets
from hysquant_rl.budget_kinds import BY_KEY
from hysquant_rl.io import atomic_write

MARKERS = "osD^v<>PX*"  # one per method, in bench.methods' order


def pareto_plot(r: dict[str, Any], path: Path) -> None:
    """Test top-1 against a modelled cost, one column per regime, in the unit of that regime's budgets (latency
    when it has budgets of both kinds): every method (mean ± std over seeds) at every budget, the uniform
    configurations as grey reference points, the budgets of that kind as vertical lines. The bottom row zooms on
    the top 4 points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regimes = regime_budgets(r["plan"])
    fig, axes = plt.subplots(2, len(regimes), figsize=(6.5 * len(regimes), 9), squeeze=False)
    for col, (regime, pairs) in enumerate(regimes):
        kinds = dict.fromkeys(kind for kind, _ in pairs)
        kind = "latency" if "latency" in kinds else "energy"
        both = "\nx: latency (this regime also has energy budgets)" if len(kinds) > 1 else ""
        refs = [u for u in r["uniform"] if u["regime"] == regime]
        rows = [t for t in r["table"] if t["regime"] == regime and t["found"]]
        best = max([t["test_top1_mean"] for t in rows] + [u["test_top1"] for u in refs])
        for row, ax in enumerate(axes[:, col]):
            _points(ax, list(r["methods"]), rows, refs, kind)
            title = f"{r['device']}, batch {regime}"
            if row == 1:
                ax.set_ylim(best - 4.0, best + 0.5)
                title += ": within 4 points of the best"
            ax.set_title(title + both, fontsize=10)
    axes[0][0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=110))
    plt.close(fig)


def _points(ax: Any, methods: list[str], rows: list[dict[str, Any]], refs: list[dict[str, Any]], kind: str) -> None:
    """One regime's panel on ``ax``: the uniform reference points ``refs``, each method's aggregated ``rows`` (mean
    ± std over seeds) and the budgets, against the modelled cost of ``kind`` (latency or energy)."""
    key = BUDGET_KEYS[kind]
    ax.scatter([u[key] for u in refs], [u["test_top1"] for u in refs], c="0.6", marker="x", label="uniform reference")
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
                fmt=MARKERS[i % len(MARKERS)],
                color=f"C{i}",
                label=m,
                alpha=0.8,
                capsize=2,
            )
    for limit in {t["limit"] for t in rows if t["unit"] == BY_KEY[key].unit}:
        ax.axvline(limit, color="0.85", lw=0.8, zorder=0)
    ax.set_xlabel(f"modelled {kind} ({BY_KEY[key].unit})")
    ax.set_ylabel("test top-1 (%)")
    ax.grid(alpha=0.3)


def transfer_plot(t: dict[str, Any], path: Path) -> None:
    """``transfer.png``: the transfer experiment's mean test top-1 against k, one line per arm (mean ± std over seeds),
    one panel per held-out budget and one over all of them; the ILP's answer (k = 0) as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hysquant_rl.bench.transfer_plan import ARMS, ILP
    from hysquant_rl.bench.transfer_verdict import POOLED

    budgets = list(dict.fromkeys(r["budget"] for r in t["table"] if r["budget"] != POOLED)) + [POOLED]
    fig, axes = plt.subplots(1, len(budgets), figsize=(5.0 * len(budgets), 4.2), squeeze=False)
    for ax, budget in zip(axes[0], budgets):
        rows = [r for r in t["table"] if r["budget"] == budget]
        for i, arm in enumerate(a for a in ARMS if a != ILP):
            mine = sorted((r for r in rows if r["arm"] == arm), key=lambda r: r["k"])
            if mine:
                ax.errorbar(
                    [r["k"] for r in mine],
                    [r["test_top1_mean"] for r in mine],
                    yerr=[r["test_top1_std"] or 0.0 for r in mine],
                    marker=MARKERS[i % len(MARKERS)],
                    color=f"C{i}",
                    label=arm,
                    capsize=2,
                    alpha=0.85,
                )
        for r in rows:
            if r["arm"] == ILP:
                ax.axhline(r["test_top1_mean"], color="0.4", ls="--", lw=1, label="ilp (k = 0)")
        ax.set_title(f"batch {t['plan']['batch']}, {budget}", fontsize=10)
        ax.set_xlabel("k: PTQ evaluations at the new budget")
        ax.set_ylabel("test top-1 (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=110))
    plt.close(fig)
