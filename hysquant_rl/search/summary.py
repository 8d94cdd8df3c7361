"""The end of a run: the test split, once, for the found policy and the references; the final
``best_policy.json``, the quantized model, ``summary.json`` and ``summary.md``."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hysquant_rl.bits import FP32_BITS, label, parse_uniform
from hysquant_rl.export import export_quantized
from hysquant_rl.export_onnx import export_onnx as write_onnx
from hysquant_rl.io import atomic_write, save_json
from hysquant_rl.search.baselines import uniform_candidates
from hysquant_rl.search.loop import SearchResult
from hysquant_rl.search.problem import SearchProblem
from hysquant_rl.search.recorder import save_best_policy

if TYPE_CHECKING:
    from hysquant_rl.pipeline import Pipeline
    from hysquant_rl.settings import SearchSettings

log = logging.getLogger(__name__)
SPLITS = ("search_val", "test")
FP32_NAME = label(FP32_BITS, FP32_BITS)


def best_uniform(problem: SearchProblem, limits: dict[str, float]) -> tuple[str, tuple[int, int]] | None:
    """The uniform pair of :func:`uniform_candidates` with the best search-val score (the reward's metric), as
    (``W4A8``, (4, 8)); None when no uniform policy fits."""
    scored = [
        (problem.score(problem.metrics(bits)), tuple(int(b) for b in bits[0]))
        for bits in uniform_candidates(problem, limits)
    ]
    if not scored:
        return None
    _, pair = max(scored)
    return label(*pair), pair


def finish(
    search: SearchSettings, pipe: Pipeline, result: SearchResult, out: Path, started: float, export_onnx: bool = False
) -> dict[str, Any]:
    """Test split once; best_policy.json, quantized model (and ``model.onnx`` with ``export_onnx``), summary.json /
    summary.md."""
    n = len(pipe.layers)
    budgets = result.budgets
    rows: dict[str, Any] = {spec: [parse_uniform(spec)] * n for spec in [FP32_NAME, *search.reference]}
    uniform = best_uniform(result.problem, budgets.limits)
    if uniform is not None:
        rows[f"best uniform in budget ({uniform[0]})"] = [uniform[1]] * n
    rows["best policy"] = result.bits
    table = {}
    for name, b in rows.items():
        m = pipe.measure(b, SPLITS)
        table[name] = {**m, "holds": budgets.holds(m["cost"], m["search_val"]["top1"])}
        if name in search.reference:  # the uniform reference policies, as policy JSON too
            pipe.policy(b, method="uniform", seed=search.seed, metrics=m).save(
                out / "policies" / f"uniform_{name}.json"
            )
    measured = {}
    if hasattr(result.check, "measure"):  # latency timed on a runtime: FP32, the references and the found policy
        for name in table:
            m = result.check.measure(np.asarray(rows[name]))
            table[name]["measured"] = asdict(m)
            measured[name] = m.latency_s
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
    pipe.qmodel.apply_bits(policy.bits())
    export_quantized(pipe.qmodel, policy, pipe.spec.to_dict(), out)
    if export_onnx:
        write_onnx(pipe.qmodel, policy, pipe.data.input_shape, out)
    best = np.asarray(result.bits)
    by_kind = {}
    for kind in dict.fromkeys(layer.kind for layer in pipe.layers):
        where = np.array([layer.kind == kind for layer in pipe.layers])
        weighted = pipe.layers[int(np.argmax(where))].weighted
        by_kind[kind] = {
            "units": int(where.sum()),
            "mean_w_bits": float(best[where, 0].mean()) if weighted else None,
            "mean_a_bits": float(best[where, 1].mean()),
        }
    summary = {
        "model": pipe.spec.to_dict(),
        "data": pipe.data.name,
        "device": pipe.cost.device,
        "batch_size": pipe.cost.batch_size,
        "cost_backend": pipe.cost.backend,
        "check": {"backend": result.check.backend, "device": result.check.device},
        "measured_speedup_over_fp32": (
            measured[FP32_NAME] / measured["best policy"] if FP32_NAME in measured else None
        ),
        "best_policy_by_kind": by_kind,
        "budgets": budgets.to_dict(),
        "rounds": result.rounds,
        "episodes": episodes,
        "wall_time_s": time.perf_counter() - started,
        "policies": table,
    }
    save_json(summary, out / "summary.json")
    text = summary_markdown(summary)
    atomic_write(out / "summary.md", lambda f: f.write(text.encode()))
    log.info("\n%s", text)
    return summary


def summary_markdown(s: dict[str, Any]) -> str:
    lines = [
        f"# Search summary: {s['model']['name']} on {s['data']}, {s['device']} at batch {s['batch_size']}",
        "",
        f"Budgets: {json.dumps(s['budgets'])}",
        "",
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
        lines += ["", "Best policy by unit kind (mean bits; activation-only units have no weight):", ""]
        lines += ["| kind | units | w bits | a bits |", "|---|---|---|---|"]
        for kind, k in s["best_policy_by_kind"].items():
            w = "-" if k["mean_w_bits"] is None else f"{k['mean_w_bits']:.2f}"
            lines.append(f"| {kind} | {k['units']} | {w} | {k['mean_a_bits']:.2f} |")
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
    lines += [
        "",
        f"Latency and energy in the first table (and its budgets column): {backend} on {s['device']} at batch"
        f" {s['batch_size']}.",
        f"{s['episodes']} episodes, {len(s['rounds'])} hardware round(s), {s['wall_time_s']:.0f} s.",
    ]
    return "\n".join(lines) + "\n"
