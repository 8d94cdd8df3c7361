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

from hysquant_rl.bits import FP32_BITS, label, parse_uniform
from hysquant_rl.deploy import TimedCheck
from hysquant_rl.deploy.timing import UnsteadyTiming
from hysquant_rl.io import atomic_write, save_json
from hysquant_rl.search.baselines import uniform_candidates
from hysquant_rl.search.loop import SearchResult
from hysquant_rl.search.problem import SearchProblem
from hysquant_rl.search.recorder import save_best_policy

if TYPE_CHECKING:
    from hysquant_rl.pipeline import Pipeline
    from hysquant_rl.policy import QuantPolicy
    from hysquant_rl.settings import SearchSettings

log = logging.getLogger(__name__)
SPLITS = ("search_val", "test")
FP32_NAME = label(FP32_BITS, FP32_BITS)


def best_uniform(problem: SearchProblem, limits: dict[str, float]) -> tuple[str, np.ndarray] | None:
    """The policy of :func:`uniform_candidates` with the best search-val score (the reward's metric), as (``W4A8``,
    its bits (L, 2): units whose space is FP32 alone stay FP32); None when no uniform policy fits."""
    scored = [
        (problem.score(problem.metrics(bits)), i, bits) for i, bits in enumerate(uniform_candidates(problem, limits))
    ]
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
    export_onnx: bool = False,
    export_openvino: bool = False,
) -> dict[str, Any]:
    """Test split once; best_policy.json, quantized model (and ``model.onnx`` with ``export_onnx``, OpenVINO's
    ``model.xml``/``.bin`` with ``export_openvino``), summary.json / summary.md."""
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
    export(pipe, policy, out, export_onnx, export_openvino)
    best = np.asarray(result.bits)
    by_kind = {}
    for kind in dict.fromkeys(layer.kind for layer in pipe.layers):
        where = np.array([layer.kind == kind for layer in pipe.layers])
        weighted = pipe.layers[int(np.argmax(where))].weighted
        int_w, int_a = (where & (best[:, i] != FP32_BITS) for i in (0, 1))  # means over the integer operands
        by_kind[kind] = {
            "units": int(where.sum()),
            "fp32_units": int((where & ~(int_w & int_a)).sum()),  # either operand in float
            "mean_w_bits": float(best[int_w, 0].mean()) if weighted and int_w.any() else None,
            "mean_a_bits": float(best[int_a, 1].mean()) if int_a.any() else None,
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
        "space": pipe.space,
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


def export(
    pipe: Pipeline, policy: QuantPolicy, out: Path, onnx: bool = False, openvino: bool = False
) -> dict[str, Path]:
    """Write the quantized model a user takes away into ``out``: in the executable space ``model.onnx``, the runtime
    layout (:mod:`hysquant_rl.deploy.runtime_graph`), always, and with ``openvino`` (on OpenVINO's layout) OpenVINO's
    own ``model.xml`` and ``model.bin`` of it (:func:`hysquant_rl.deploy.openvino.save`); in the simulated space the
    PyTorch files of the paper's simulation (:mod:`hysquant_rl.deploy.checkpoints`) and, with ``onnx``, its QDQ graph.
    Returns the paths by kind."""
    if pipe.graphs is not None:
        paths = {"onnx": pipe.graphs.save(policy.bits(), policy, out)}
        if openvino:
            from hysquant_rl.deploy.openvino import save

            paths["openvino"] = save(paths["onnx"], out)
        return paths
    from hysquant_rl.deploy.checkpoints import export_quantized
    from hysquant_rl.deploy.simulated_onnx import export_simulated

    pipe.qmodel.apply_bits(policy.bits())
    paths = export_quantized(pipe.qmodel, policy, pipe.spec.to_dict(), out)
    if onnx:
        paths["onnx"] = export_simulated(pipe.qmodel, policy, pipe.data.input_shape, out)
    return paths


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
    if s.get("unchecked"):
        lines += ["", f"NOT MEASURED: the hardware check could not be made ({s['unchecked']})."]
    lines += [
        "",
        f"Latency and energy in the first table (and its budgets column): {backend} on {s['device']} at batch"
        f" {s['batch_size']}.",
        f"{s['episodes']} episodes, {len(s['rounds'])} hardware round(s), {s['wall_time_s']:.0f} s.",
    ]
    return "\n".join(lines) + "\n"
