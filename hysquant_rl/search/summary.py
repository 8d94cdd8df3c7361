"""The end of a run: the test split, once, for the found policy and the references; the final
``best_policy.json``, the quantized model, ``summary.json`` and ``summary.md``."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hysquant_rl.bits import FP32_BITS, label, mean_bits, parse_uniform
from hysquant_rl.deploy import TimedCheck
from hysquant_rl.deploy.timing import UnsteadyTiming
from hysquant_rl.io import atomic_write, save_json
from hysquant_rl.search.baselines import uniform_candidates
from hysquant_rl.search.loop import SearchResult
from hysquant_rl.search.problem import SearchProblem
from hysquant_rl.search.recorder import save_best_policy

if TYPE_CHECKING:
    from hysquant_rl.pipeline import Pipeline
    from hysquant_rl.settings import ExportSettings, SearchSettings

log = logging.getLogger(__name__)
SPLITS = ("search_val", "test")
FP32_NAME = label(FP32_BITS, FP32_BITS)


def best_uniform(problem: SearchProblem, limits: dict[str, float]) -> tuple[str, np.ndarray] | None:
    """The policy of :func:`uniform_candidates` with the best search-val score (the reward's metric; with
    ``budget.max_drop``, the lowest cost it minimises among those at or above the accuracy floor), as (``W4A8``,
    its bits (L, 2): units whose space is FP32 alone stay FP32); None when no uniform policy fits."""
    candidates = uniform_candidates(problem, limits)
    if problem.max_drop is not None:
        floor = -np.inf if problem.min_top1 is None else problem.min_top1
        candidates = [bits for bits in candidates if problem.metrics(bits)["top1"] >= floor]
        scored = [(-problem.totals(bits)[problem.minimize], i, bits) for i, bits in enumerate(candidates)]
    else:
        scored = [(problem.score(problem.metrics(bits)), i, bits) for i, bits in enumerate(candidates)]
    if not scored:
        return None
    _, _, bits = max(scored, key=lambda s: s[:2])
    pairs = Counter(map(tuple, bits.tolist()))  # its pair: the one most units take
    return label(*max(pairs, key=pairs.__getitem__)), bits


def finish(
    search: SearchSettings,
    pipe: Pipeline,
    result: SearchResult,
    out: Path,
    started: float,
    files: ExportSettings,
) -> dict[str, Any]:
    """Test split once; best_policy.json, the quantized model as a set of files (:func:`hysquant_rl.pipeline.export`
    with ``files``: ``export.*``), summary.json / summary.md. A model that cannot be written still leaves the summary,
    which says so, and then raises the write error."""
    budgets = result.budgets
    specs = [FP32_NAME, *(s for s in search.reference if pipe.executes(parse_uniform(s)))]
    rows: dict[str, Any] = {spec: pipe.uniform(parse_uniform(spec)) for spec in specs}
    uniform = best_uniform(result.problem, budgets.limits)
    if uniform is not None:
        rows[f"best uniform in budget ({uniform[0]})"] = uniform[1]
    rows["best policy"] = result.bits
    table = {}
    for name, b in rows.items():
        m = pipe.measure(b, SPLITS)
        table[name] = {**m, "holds": budgets.holds(m["cost"], m["search_val"]["top1"])}
        if name in specs[1:]:  # the uniform reference policies, as policy JSON too
            pipe.policy(b, method="uniform", seed=search.seed, metrics=m).save(
                out / "policies" / f"uniform_{name}.json"
            )
    measured = {}
    if isinstance(result.check, TimedCheck) and result.unchecked is None:  # FP32, the references and the found policy
        for name in table:
            try:
                m = result.check.measure(np.asarray(rows[name]))
            except UnsteadyTiming as e:  # a busy machine: the rest of the summary is still written
                result.unchecked = e
                break
            table[name]["measured"] = asdict(m)
            measured[name] = m.latency_s
    side = None
    if measured and result.unchecked is None and pipe.runtime is not None:
        side = beside_the_runtimes_own(pipe, result.check, rows, table, out)
    episodes = len(result.recorder.history)
    policy = save_best_policy(
        out,
        pipe,
        np.asarray(result.bits),
        table["best policy"],
        method=search.method,
        seed=search.seed,
        episodes=episodes,
        wall_time_s=time.perf_counter() - started,
        budgets=budgets,
        rounds=result.rounds,
    )
    from hysquant_rl.pipeline import export

    try:
        written: dict[str, Any] = {k: str(v) for k, v in export(pipe, policy, out, files).items()}
        failed = None
    except OSError as e:  # a full disk, a folder that cannot be written: the summary still says what was found
        written, failed = {"error": f"{e.strerror or e} ({e.filename})"}, e
    best = np.asarray(result.bits)
    by_kind = {}
    for kind in dict.fromkeys(unit.kind for unit in pipe.units):
        where = np.array([unit.kind == kind for unit in pipe.units])
        weighted = np.array([unit.weighted for unit in pipe.units])[where]
        means = mean_bits(best[where], weighted)  # over the integer operands
        by_kind[kind] = {
            "units": int(where.sum()),
            "fp32_units": int((where & (best == FP32_BITS).any(axis=1)).sum()),  # either operand in float
            "mean_w_bits": means["mean_w_bits"],
            "mean_a_bits": means["mean_a_bits"],
        }
    summary = {
        "model": pipe.spec.to_dict(),
        "data": pipe.data.name,
        "device": pipe.cost.device,
        "batch_size": pipe.cost.batch_size,
        "cost_backend": pipe.cost.backend,
        "check": {"backend": result.check.backend, "device": result.check.device},
        "measured_speedup_over_fp32": (
            measured[FP32_NAME] / measured["best policy"] if {FP32_NAME, "best policy"} <= set(measured) else None
        ),
        "unchecked": None if result.unchecked is None else str(result.unchecked),
        "side_by_side": side,
        "space": pipe.space,
        "best_policy_by_kind": by_kind,
        "budgets": budgets.to_dict(),
        "question": (
            {"max_drop": search.budget.max_drop, "minimize": search.budget.minimize, "floor_top1": budgets.min_top1}
            if search.budget.max_drop is not None
            else None
        ),
        "rounds": result.rounds,
        "episodes": episodes,
        "evaluations": len(result.problem.cache),  # policies evaluated on search-val (the search's cost)
        "eval_s": result.problem.eval_time_s,
        "wall_time_s": time.perf_counter() - started,
        "policies": table,
        "export": written,
    }
    save_json(summary, out / "summary.json")
    text = summary_markdown(summary)
    atomic_write(out / "summary.md", lambda f: f.write(text.encode()))
    log.info("\n%s", text)
    if failed is not None:
        raise failed
    return summary


def beside_the_runtimes_own(
    pipe: Pipeline, check: TimedCheck, rows: dict[str, np.ndarray], table: dict[str, Any], out: Path
) -> dict[str, Any] | None:
    """FP32, our uniform W8A8, the runtime's own uniform int8 (:meth:`hysquant_rl.deploy.runtimes.Runtime.anchors`,
    calibrated on the same images) and the found policy, timed side by side in one process (interleaved rounds,
    medians, the check's threads and batch) with their test top-1; the found policy's measured speed-up over FP32 and
    over the fastest of the runtime's own; ``summary.png`` (measured latency against test top-1). None (with a
    warning) when the runtime's own quantizer fails on this model."""
    from hysquant_rl.deploy.runtimes import logits
    from hysquant_rl.deploy.timing import interleaved, side_by_side

    runtime, layout, t = pipe.runtime, pipe.layout, check.timing
    calib = np.concatenate([x.numpy() for x, _ in pipe.data.calib.batches(256)])
    try:
        anchors = runtime.anchors(layout, calib)
    except Exception as e:  # the runtime's own tool on a model it does not take: our figures stand without it
        log.warning("%s's own quantizer failed on this model (%s): no side-by-side with it", runtime.name, e)
        return None
    ours = {FP32_NAME: rows[FP32_NAME], "W8A8": pipe.uniform((8, 8)), "best policy": rows["best policy"]}
    models = {name: layout.artefact(bits) for name, bits in ours.items()} | anchors
    sessions = {name: runtime.session(model, t.threads) for name, model in models.items()}
    seconds, spread = side_by_side(interleaved(sessions, check.feed, t.warmup, t.repeats, rounds=5))
    top1 = {name: table[name]["test"]["top1"] for name in (FP32_NAME, "best policy")}
    top1["W8A8"] = (
        pipe.measure(ours["W8A8"], ("test",))["test"]["top1"] if "W8A8" not in table else table["W8A8"]["test"]["top1"]
    )
    for name in anchors:
        sess, hits = runtime.session(models[name], t.threads), 0
        for x, y in pipe.data.test.batches(256):
            hits += int((logits(sess, x.numpy()).argmax(1) == y.numpy()).sum())
        top1[name] = 100.0 * hits / len(pipe.data.test)
    fastest_own = min(anchors, key=seconds.__getitem__)
    side = {
        "runtime": runtime.describe(),
        "batch_size": check.batch_size,
        "threads": t.threads,
        "rounds": 5,
        "spread_cv": spread,
        "latency_ms": {k: 1e3 * v for k, v in seconds.items()},
        "test_top1": top1,
        "runtimes_own": list(anchors),
        "speedup_over_fp32": seconds[FP32_NAME] / seconds["best policy"],
        "speedup_over_runtimes_own": seconds[fastest_own] / seconds["best policy"],
        "fastest_runtimes_own": fastest_own,
    }
    try:
        save_picture(side, out / "summary.png")
    except OSError as e:
        log.warning("cannot write %s (%s)", out / "summary.png", e)
    return side


def save_picture(side: dict[str, Any], path: Path) -> Path:
    """Measured latency against test top-1 of the side-by-side models, written atomically as PNG."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4), layout="constrained", dpi=110)
    ax = fig.subplots()
    for name, ms in side["latency_ms"].items():
        own = name in side["runtimes_own"]
        marker, colour = ("s", "tab:orange") if own else ("*", "tab:red") if name == "best policy" else ("o", "black")
        ax.scatter(ms, side["test_top1"][name], marker=marker, color=colour, s=90 if name == "best policy" else 40)
        ax.annotate(name, (ms, side["test_top1"][name]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel(f"measured latency (ms), batch {side['batch_size']}, {side['threads']} thread(s)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(side["runtime"], fontsize=8)
    ax.grid(alpha=0.3)
    return atomic_write(path, lambda fh: fig.savefig(fh, format="png"))


def summary_markdown(s: dict[str, Any]) -> str:
    lines = [
        f"# Search summary: {s['model']['name']} on {s['data']}, {s['device']} at batch {s['batch_size']}",
        "",
        f"Budgets: {json.dumps(s['budgets'])}",
        "",
        *(
            [
                f"The dual question: the lowest {q['minimize']} with search-val top-1 at most {q['max_drop']} points"
                f" below FP32's (floor {q['floor_top1']:.2f} %).",
                "",
            ]
            if (q := s.get("question"))
            else []
        ),
        "| policy | test top-1 | test top-5 | search-val top-1 | latency (ms) | energy (mJ) | size (MB) | BitOps |"
        " budgets |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in s["policies"].items():
        c = m["cost"]
        holds = ", ".join(f"{k} {'ok' if v else 'missed'}" for k, v in m["holds"].items()) or "-"
        lines.append(
            f"| {name} | {m['test']['top1']:.2f} | {m['test']['top5']:.2f} | {m['search_val']['top1']:.2f} |"
            f" {c['latency_ms']:.4g} | {c['energy_mj']:.4g} | {c['size_mb']:.4g} | {c['bitops']:.4g} | {holds} |"
        )
    if "best_policy_by_kind" in s:
        lines += [
            "",
            "Best policy by unit kind (at FP32: units with either operand in float; mean bits over the integer"
            " operands; activation-only units have no weight):",
        ]
        lines += ["", "| kind | units | at FP32 | w bits | a bits |", "|---|---|---|---|---|"]
        for kind, k in s["best_policy_by_kind"].items():
            w, a = ("-" if k[b] is None else f"{k[b]:.2f}" for b in ("mean_w_bits", "mean_a_bits"))
            lines.append(f"| {kind} | {k['units']} | {k.get('fp32_units', 0)} | {w} | {a} |")
    backend = s.get("cost_backend", "modelled")
    timed = {name: m["measured"] for name, m in s["policies"].items() if "measured" in m}
    if timed:
        check = s["check"]
        lines += ["", f"Latency measured by {check['backend']} on {check['device']} at batch {s['batch_size']}:", ""]
        limit = s["budgets"].get("latency_ms")
        lines += [
            "| policy | measured latency (ms) | CV | runs | modelled latency (ms) | latency budget, measured |",
            "|---|---|---|---|---|---|",
        ]
        for name, m in timed.items():
            verdict = "-" if limit is None else ("ok" if 1e3 * m["latency_s"] <= limit else "missed")
            lines.append(
                f"| {name} | {1e3 * m['latency_s']:.4g} | {m['cv']:.3f} | {m['runs']} |"
                f" {s['policies'][name]['cost']['latency_ms']:.4g} | {verdict} |"
            )
        if s.get("measured_speedup_over_fp32") is not None:
            lines += ["", f"Measured speed-up of the best policy over FP32: {s['measured_speedup_over_fp32']:.3f}x."]
    if side := s.get("side_by_side"):
        lines += [
            "",
            f"Side by side in one process ({side['runtime']}, batch {side['batch_size']}, {side['threads']} thread(s),"
            f" {side['rounds']} interleaved rounds, medians; round CV up to {side['spread_cv']:.3f}):",
            "",
            "| model | test top-1 | measured latency (ms) | x FP32 |",
            "|---|---|---|---|",
        ]
        fp32_ms = side["latency_ms"][FP32_NAME]
        for name, ms in side["latency_ms"].items():
            label = f"{name} (the runtime's own)" if name in side["runtimes_own"] else name
            lines.append(f"| {label} | {side['test_top1'][name]:.2f} | {ms:.4g} | {fp32_ms / ms:.3f} |")
        lines += [
            "",
            f"The best policy runs {side['speedup_over_fp32']:.3f}x FP32's speed and"
            f" {side['speedup_over_runtimes_own']:.3f}x that of {side['fastest_runtimes_own']} (the runtime's own"
            " fastest uniform int8); picture: summary.png.",
        ]
    if s.get("unchecked"):
        lines += ["", f"NOT MEASURED: the hardware check could not be made ({s['unchecked']})."]
    if isinstance(s.get("export"), dict) and "error" in s["export"]:
        lines += [
            "",
            f"NOT WRITTEN: the quantized model could not be written ({s['export']['error']}); files of an earlier"
            " export, if any, are the set export.json names.",
        ]
    lines += [
        "",
        f"Latency and energy in the first table (and its budgets column): {backend} on {s['device']} at batch"
        f" {s['batch_size']}.",
        f"{s['episodes']} episodes, {len(s['rounds'])} hardware round(s), {s['wall_time_s']:.0f} s.",
    ]
    return "\n".join(lines) + "\n"
