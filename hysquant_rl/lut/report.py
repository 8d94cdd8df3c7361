"""What a LUT shows a person: the heatmap (paper figure 4 as a picture), the run directory's files, the log
lines and the TensorBoard entries.

Figures are drawn with matplotlib's Agg backend (no display needed) and written atomically as PNG.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hysquant_rl.io import atomic_write
from hysquant_rl.lut.table import LUT, SPLIT
from hysquant_rl.prune import SPACE_CONVENTION
from hysquant_rl.units import ACTIVATION_KINDS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

FAMILY_COLOURS = {"cnn": "black", "transformer": "tab:purple"}  # y tick labels: which part of the hybrid
_ROW_INCH = 0.16  # per layer: 72 layers -> a figure about 13 inches tall, names at 6 pt stay readable
_COLUMN_INCH = 0.85
_TITLES = {
    "top1_drop": "top-1 drop from FP32 (points)",
    "top5_drop": "top-5 drop from FP32 (points)",
    "kl": "logit KL to FP32 (nats)",
    "loss": "cross-entropy (nats)",
}


def lut_heatmap_figure(lut: LUT, columns: Sequence[str] = ("top1_drop", "kl")) -> Figure:
    """One panel per LUT column: layers (rows, forward order, names on the left) x configurations. The
    first panel is the top-1 drop from FP32 in points (red = worse, blue = better than FP32), the second
    the logit KL to FP32 on a log scale (what the pruning rules and the search's proxy read). Transformer
    layers are labelled in purple; once pruned, the allowed ranges of pruned layers are written on the right."""
    from matplotlib.colors import LogNorm, TwoSlopeNorm
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    n_units, n_configs = lut.num_units, len(lut.configs)
    pruned = bool(lut.allowed) and any(a.reason for a in lut.allowed)
    width = 3.6 + len(columns) * (0.7 + _COLUMN_INCH * n_configs) + (1.0 if pruned else 0.0)
    fig = Figure(figsize=(width, 1.8 + _ROW_INCH * n_units), layout="constrained", dpi=150)
    axes = fig.subplots(1, len(columns), sharey=True, squeeze=False)[0]
    for ax, column in zip(axes, columns):
        values = lut.matrix(column)  # (L, C)
        if column == "kl":
            positive = values[values > 0]
            low = float(positive.min()) if positive.size else 1e-6
            norm = LogNorm(vmin=max(low, 1e-6), vmax=max(float(values.max()), low * 10), clip=True)
            cmap, fmt = "magma_r", "{:.1e}"
        else:
            span = max(float(np.abs(values).max()), 1e-6)
            norm = TwoSlopeNorm(
                vcenter=0.0, vmin=min(float(values.min()), -span / 10), vmax=max(float(values.max()), span / 10)
            )
            cmap, fmt = "RdBu_r", "{:.2f}"
        image = ax.imshow(values, aspect="auto", cmap=cmap, norm=norm, interpolation="nearest")
        for (i, j), v in np.ndenumerate(values):
            if abs(v) >= 5e-3 or (column == "kl" and v > norm.vmin):
                shade = float(norm(v))
                dark = shade > 0.65 if column == "kl" else abs(shade - 0.5) > 0.35
                ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=4.5, color="white" if dark else "black")
        ax.set_xticks(range(n_configs), lut.labels, fontsize=7)
        ax.xaxis.tick_top()
        ax.set_title(_TITLES.get(column, column), fontsize=8)
        bar = fig.colorbar(image, ax=ax, shrink=0.6, pad=0.01, location="bottom")
        if column != "kl":
            bar.locator = MaxNLocator(5)  # a few round ticks: labels of a narrow bar would run together
            bar.update_ticks()
        bar.ax.tick_params(labelsize=6)
    names = lut.unit_names
    families = lut.frame.drop_duplicates("index").sort_values("index")["family"].tolist()
    axes[0].set_yticks(range(n_units), [f"{i:2d} {n}" for i, n in enumerate(names)], fontsize=6, family="monospace")
    for tick, family in zip(axes[0].get_yticklabels(), families):
        tick.set_color(FAMILY_COLOURS.get(family, "black"))
    if pruned:
        right = axes[-1].secondary_yaxis("right")
        right.set_yticks(
            range(n_units),
            [f"w{a.w[0]}-{a.w[1]} a{a.a[0]}-{a.a[1]}" if a.reason else "" for a in lut.allowed],
            fontsize=6,
            family="monospace",
        )
        right.set_ylabel("allowed bits (pruned layers)", fontsize=7)
    model = lut.meta.get("model", {}).get("name", "model")
    device = lut.meta.get("device", {})
    fig.suptitle(
        f"{model}: one layer quantized at a time, FP32 top-1 {lut.fp32.get('top1', float('nan')):.2f} % on "
        f"{lut.meta.get('split', 'search_val')} ({int(lut.fp32.get('n', 0))} images)"
        + (f"; priced on {device['name']} at batch {device['batch_size']}" if device else ""),
        fontsize=8,
    )
    return fig


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as PNG, atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = buf.getvalue()
    return atomic_write(path, lambda f: f.write(data))


def save_lut_heatmap(lut: LUT, path: str | Path, columns: Sequence[str] = ("top1_drop", "kl")) -> Path:
    """:func:`lut_heatmap_figure` written to ``path`` (PNG)."""
    return save_figure(lut_heatmap_figure(lut, columns), path)


def write_lut(lut: LUT, out: str | Path) -> dict[str, Path]:
    """:meth:`LUT.save` (``lut.csv``, ``lut.json``) plus ``lut_heatmap.png`` into the directory ``out``."""
    paths = lut.save(out)
    paths["heatmap"] = save_lut_heatmap(lut, Path(out) / "lut_heatmap.png")
    return paths


def log_to_tensorboard(lut: LUT, writer: Any) -> None:
    """Put the LUT into TensorBoard: the most sensitive layers and the pruned ranges as text, the
    search-space sizes as scalars, the heatmap as a figure."""
    top = lut.most_sensitive(5)
    rows = "\n".join(f"| {r.unit} | {r.kind} | {r.config} | {r.top1_drop:.2f} | {r.kl:.3g} |" for r in top.itertuples())
    writer.add_text("lut/most_sensitive", f"| layer | kind | config | top-1 drop | KL |\n|---|---|---|---|---|\n{rows}")
    if lut.allowed is not None:
        before, after = lut.search_space()
        writer.add_scalar("lut/log10_space_before", before)
        writer.add_scalar("lut/log10_space_after", after)
        pruned = [
            f"| {n} | {a.w[0]}..{a.w[1]} | {a.a[0]}..{a.a[1]} | {a.reason} |"
            for n, a in zip(lut.unit_names, lut.allowed)
            if a.reason
        ]
        writer.add_text(
            "lut/pruned", "| layer | w | a | why |\n|---|---|---|---|\n" + "\n".join(pruned or ["| - | | | |"])
        )
    writer.add_figure("lut/heatmap", lut_heatmap_figure(lut))


def log_summary(lut: LUT) -> None:
    """Log the cache outcome, the table's size, the five most sensitive units, the ranks of the activation-only
    units and the search-space size."""
    c, b = lut.meta["cache"], lut.meta["build"]
    log.info(
        "LUT cache %s: %s (%d jobs reused, %d evaluated in %.1f s on %d worker(s))",
        c["status"],
        c["path"],
        c["reused"],
        c["evaluated"],
        b["wall_s"],
        b["workers"],
    )
    log.info(
        "LUT: %d units x %d configurations (%s) + FP32 = %d rows on %s (%d images, FP32 top-1 %.2f %%)",
        lut.num_units,
        len(lut.configs),
        ", ".join(lut.labels),
        len(lut.frame),
        SPLIT,
        int(lut.fp32["n"]),
        lut.fp32["top1"],
    )
    top = lut.most_sensitive(5)
    log.info(
        "five most sensitive units (worst configuration):\n%s",
        "\n".join(
            f"  {r.index:3d} {r.unit:<40s} {r.kind:<15s} {r.config:<5s} top-1 drop {r.top1_drop:6.2f}  KL {r.kl:.4g}"
            for r in top.itertuples()
        ),
    )
    order = lut.most_sensitive(lut.num_units)  # every unit, most sensitive first
    ranks = {kind: [i + 1 for i, k in enumerate(order["kind"]) if k == kind] for kind in ACTIVATION_KINDS}
    if any(ranks.values()):
        log.info(
            "sensitivity ranks of the activation-only units (1 = most sensitive of %d): %s",
            lut.num_units,
            "; ".join(f"{kind} {r[0]}..{r[-1]} (median {r[len(r) // 2]})" for kind, r in ranks.items() if r),
        )
    before, after = lut.search_space()
    pruned = sum(bool(a.reason) for a in lut.allowed)
    log.info(
        "search space: 10^%.1f policies before pruning, 10^%.1f after (%d of %d units pruned; %s)",
        before,
        after,
        pruned,
        lut.num_units,
        SPACE_CONVENTION,
    )
