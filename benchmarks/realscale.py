"""Benchmark: the whole pipeline at 224 px on real photos (Imagenette), on one runtime, side by side with the runtime's
own quantizer.

    .venv/bin/python benchmarks/realscale.py --runtime onnxruntime     # about 1 h on 2 cores
    .venv/bin/python benchmarks/realscale.py --runtime openvino

The model is the embedded ``mobilevit_xxs`` trained by ``hysquant-train data=imagenette`` (shipped weights:
``hysquant_rl/weights/``); the archive is ``--data`` (default: ``imagenette-224.zip`` in this workplace's shared data
folder, said in the report). ``hardware=cpu hardware.runtime=<runtime>`` at ``--batch`` (8): the runtime's layout, its
executable space (FP32 or W8A8 per unit), per-unit latency measured on it, accuracy measured on it; the searches are
checked on the per-unit table, and every policy is then timed side by side in one run (4.).

1. Stages and their wall times: pipeline (model, data, calibration, the runtime layout, per-unit latency), LUT.
2. Uniform int8 on the runtime: what it costs in search-val and val top-1, and which units cost it (the LUT).
3. Searches: ``ilp``, ``local`` and ``rl`` at two latency budgets (``fastest``: the cheapest policy the latency model
   finds, x 1.01; ``midway``: halfway between it and FP32) and at ``budget.max_drop`` (the dual question: the lowest
   latency within 1 point of FP32's search-val top-1); each search's evaluations and wall time.
4. Side by side on 1 thread, interleaved rounds, medians, at batch 1 and 8: FP32, the runtime's own uniform int8
   (onnxruntime ``quantize_static``; OpenVINO: NNCF default and ``model_type=TRANSFORMER``, and NNCF's
   ``quantize_with_accuracy_control`` at 1 point), our uniform W8A8 and every found policy, with their top-1 on the
   3 925 val images.
5. The noise of search-val: the standard error of a top-1 difference between two policies at its size (paired, from
   the discordant images of W8A8 against FP32).

Writes ``benchmarks/results/realscale-<runtime>.md`` and ``.json`` (the JSON after every stage).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import (
    RESULTS,
    SHARED_DATA,
    Model,
    at_batch,
    calibration_images,
    machine_record,
    pipe_mask,
    policy_model,
    runtime_anchors,
    settings,
    side_by_side,
    test_top1,
    write_report,
)

from hysquant_rl.apps.search import run_search
from hysquant_rl.bits import FP32_BITS
from hysquant_rl.errors import HySquantError
from hysquant_rl.hardware.profile import known_runtimes
from hysquant_rl.io import save_json
from hysquant_rl.lut.build import build_lut
from hysquant_rl.pipeline import Pipeline, build
from hysquant_rl.policy import QuantPolicy

log = logging.getLogger("realscale")
METHODS = (("ilp", ["search.method=ilp"]), ("local", ["search.method=local"]), ("rl", []))


def stamp(result: dict[str, Any], path: Path) -> None:
    save_json(result, path.with_suffix(".json"))  # what is measured so far survives a failure later


def accuracy_controlled(pipe: Pipeline, max_drop: float) -> Model:
    """NNCF's ``quantize_with_accuracy_control`` of the FP32 model on OpenVINO: int8, reverting layers to float while
    the search-val top-1 falls more than ``max_drop`` points below FP32's (the same images our search uses)."""
    import nncf

    from hysquant_rl.deploy import openvino

    images = calibration_images(pipe)
    calib = nncf.Dataset([images[i : i + 64] for i in range(0, len(images), 64)])
    val = [(x.numpy(), y.numpy()) for x, y in pipe.data.search_val.batches(64)]

    def validate(compiled: Any, items: Any) -> float:  # NNCF passes the model compiled (ov.CompiledModel)
        hits = total = 0
        for x, y in items:
            hits += int((compiled(x)[0].argmax(1) == y).sum())
            total += len(y)
        return hits / total

    model = nncf.quantize_with_accuracy_control(
        openvino.read(pipe.layout.float.SerializeToString()),
        calibration_dataset=calib,
        validation_dataset=nncf.Dataset(val),
        validation_fn=validate,
        max_drop=max_drop / 100.0,
        drop_type=nncf.DropType.ABSOLUTE,
        model_type=nncf.ModelType.TRANSFORMER,
    )
    return ("openvino", model)


def noise(pipe: Pipeline, a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """The paired standard error [points] of the search-val top-1 difference between policies ``a`` and ``b``: from
    the images exactly one of them gets right (McNemar's discordant pairs)."""
    _, pa = pipe.evaluator.evaluate_with_predictions(a, "search_val")
    _, pb = pipe.evaluator.evaluate_with_predictions(b, "search_val")
    y = pipe.data.search_val.y
    ra, rb = (pa == y).numpy(), (pb == y).numpy()
    n = len(y)
    only_a, only_b = int((ra & ~rb).sum()), int((rb & ~ra).sum())
    se = 100.0 * math.sqrt(max(only_a + only_b - (only_a - only_b) ** 2 / n, 0.0)) / n
    return {"images": n, "only_a": only_a, "only_b": only_b, "se_points": se}


def run(args: argparse.Namespace) -> dict[str, Any]:
    out = args.out
    base = [
        "data=imagenette",
        f"data.root={args.data}",
        "hardware=cpu",
        # the runtime's space, priced by its per-unit table; each search's own summary does not time anything (the
        # side-by-side below times every policy in one run)
        f"hardware.runtime={args.runtime}",
        f"hardware.batch_size={args.batch}",
        "eval.batch_size=64",
        "search.max_rounds=2",
        *([f"data.search_val_size={args.search_val}"] if args.search_val else []),
    ]
    run_settings, _ = settings(base)
    result: dict[str, Any] = {"runtime": args.runtime, "data": str(args.data), "batch": args.batch}
    start = time.perf_counter()
    pipe = build(run_settings)
    result["stages"] = {"pipeline_s": time.perf_counter() - start}
    result["machine"] = machine_record(pipe)
    t0 = time.perf_counter()
    lut = build_lut(run_settings, pipe)
    result["stages"]["lut_s"] = time.perf_counter() - t0
    result["stages"]["lut_built_s"] = lut.meta.get("build", {}).get("wall_s")
    n = len(pipe.units)
    fp32, w8a8 = np.full((n, 2), FP32_BITS), pipe.uniform((8, 8))
    sv = {name: pipe.evaluator.evaluate(b, "search_val").to_dict() for name, b in (("FP32", fp32), ("W8A8", w8a8))}
    worst = lut.most_sensitive(10)
    result["int8"] = {
        "search_val": sv,
        "noise": noise(pipe, w8a8, fp32),
        "most_sensitive": worst[["unit", "kind", "config", "top1_drop", "kl"]].to_dict("records"),
    }
    stamp(result, out)

    from hysquant_rl.search.budget import cheapest

    fp32_model = pipe.cost.policy_cost(fp32).latency_s
    fastest = pipe.cost.policy_cost(cheapest(pipe.cost, pipe_mask(pipe), "latency_ms")).latency_s / fp32_model
    budgets = {
        "fastest": ["budget=latency", f"budget.latency_ratio={round(1.01 * fastest, 4)}"],
        "midway": ["budget=latency", f"budget.latency_ratio={round((1 + fastest) / 2, 4)}"],
        f"max_drop {args.max_drop}": ["budget=accuracy", f"budget.max_drop={args.max_drop}"],
    }
    budgets = {k: v for k, v in budgets.items() if k.split()[0] in args.budgets}
    methods = [(m, how) for m, how in METHODS if m in args.methods]
    found: dict[str, np.ndarray] = {}
    searches: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="realscale-") as tmp:
        for (budget, extra), (method, how) in ((b, m) for b in budgets.items() for m in methods):
            name = f"{method}, {budget}"
            episodes = [] if method == "ilp" else [f"search.episodes={args.episodes}"]
            _, search = settings([*base, *extra, *how, *episodes])
            t0 = time.perf_counter()
            try:
                summary = run_search(run_settings, search, Path(tmp) / name.replace(" ", "_"), pipe)
            except HySquantError as e:
                searches[name] = {"error": str(e)}
                continue
            found[name] = np.array(QuantPolicy.load(Path(tmp) / name.replace(" ", "_") / "best_policy.json").bits())
            searches[name] = {
                "budget": extra[-1],
                "episodes": summary["episodes"],
                "evaluations": summary["evaluations"],
                "eval_s": summary["eval_s"],
                "wall_s": time.perf_counter() - t0,
                "search_val_top1": summary["policies"]["best policy"]["search_val"]["top1"],
                "fp32_units": int((found[name][:, 1] == FP32_BITS).sum()),
            }
            log.warning("%s: %s", name, searches[name])
            result["searches"] = searches
            stamp(result, out)
    policies = {"FP32": fp32, "W8A8 (ours)": w8a8, **found}
    models: dict[str, Model] = {k: policy_model(pipe, b) for k, b in policies.items()}
    t0 = time.perf_counter()
    anchors = runtime_anchors(pipe)
    if args.runtime == "openvino":
        anchors[f"NNCF accuracy control ({args.max_drop} point)"] = accuracy_controlled(pipe, args.max_drop)
    result["anchors_s"] = time.perf_counter() - t0
    models.update(anchors)
    result["anchors"] = list(anchors)
    result["val_top1"] = {k: test_top1(pipe, m) for k, m in models.items()}
    stamp(result, out)
    result["timing"] = {}
    for batch in (1, args.batch):
        runs = 20 if batch == 1 else 5
        timed = at_batch(pipe, models, policies, batch)
        result["timing"][batch] = side_by_side(timed, pipe.data.input_shape, batch, args.rounds, runs)
        stamp(result, out)
    if args.runtime == "openvino":
        from hysquant_rl.deploy import openvino

        result["precisions"] = {k: openvino.precisions(m[1]) for k, m in models.items() if m[0] == "openvino"}
    result["wall_s"] = time.perf_counter() - start
    return result


def markdown(r: dict[str, Any], command: str) -> str:
    m = r["machine"]
    b = r["batch"]
    fp32_val = r["val_top1"]["FP32"]
    lines = [
        f"# Imagenette at 224 px on {r['runtime']}: the whole pipeline, side by side with the runtime's own int8",
        "",
        f"Measured on {m['describe']}; {m['runtime']}; timings on 1 thread, interleaved rounds, medians. Data:"
        f" {r['data']}. `{command}` ({r['wall_s'] / 60:.1f} min).",
        "",
        f"Stages: pipeline {r['stages']['pipeline_s']:.0f} s (model, data, calibration, runtime layout, per-unit"
        f" latency at batch {b}); LUT {r['stages']['lut_s']:.0f} s"
        + (f" (built in {r['stages']['lut_built_s']:.0f} s)" if r["stages"].get("lut_built_s") else "")
        + ".",
        "",
    ]
    sv = r["int8"]["search_val"]
    nz = r["int8"]["noise"]
    lines += [
        f"Uniform int8 (ours) on search-val: top-1 {sv['W8A8']['top1']:.2f} against FP32 {sv['FP32']['top1']:.2f}"
        f" (KL {sv['W8A8']['kl']:.4f}); the standard error of a paired top-1 difference at {nz['images']} images is"
        f" {nz['se_points']:.2f} points ({nz['only_a']} + {nz['only_b']} discordant images).",
        "",
        "The units whose int8 costs most (the LUT, search-val):",
        "",
        "| unit | kind | config | top-1 drop | KL |",
        "|---|---|---|---|---|",
    ]
    for row in r["int8"]["most_sensitive"]:
        lines.append(f"| {row['unit']} | {row['kind']} | {row['config']} | {row['top1_drop']:.2f} | {row['kl']:.4g} |")
    lines += ["", "## Side by side", ""]
    anchors = r["anchors"]
    head = " | ".join(f"batch {t} ms (x FP32)" for t in r["timing"])
    lines += [f"| model | val top-1 (drop) | {head} |", "|---|---|" + "---|" * len(r["timing"])]
    for name, top1 in r["val_top1"].items():
        cells = []
        for timing in r["timing"].values():
            s, f = timing[name]["latency_s"], timing["FP32"]["latency_s"]
            cells.append(f"{1e3 * s:.2f} ({f / s:.3f})")
        label = f"{name} (the runtime's own)" if name in anchors else name
        lines.append(f"| {label} | {top1:.2f} ({fp32_val - top1:+.2f}) | {' | '.join(cells)} |")
    lines += [
        "",
        "## Searches",
        "",
        "| search | budget | evaluations | wall (s) | s per evaluation | search-val top-1 |",
    ]
    lines[-1] += " FP32 units |"
    lines += ["|---|---|---|---|---|---|---|"]
    for name, s in r["searches"].items():
        if "error" in s:
            lines.append(f"| {name} | | | | | {s['error']} | |")
        else:
            per = s["eval_s"] / max(s["evaluations"], 1)
            lines.append(
                f"| {name} | {s['budget']} | {s['evaluations']} | {s['wall_s']:.0f} | {per:.1f} |"
                f" {s['search_val_top1']:.2f} | {s['fp32_units']} |"
            )
    if r.get("precisions"):
        lines += ["", "Runtime precisions of the compute layers (OpenVINO):", "", "| model | precisions |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in r["precisions"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runtime", choices=known_runtimes(), default="onnxruntime")
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "imagenette-224.zip")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--episodes", type=int, default=40, help="evaluations of local and rl per search")
    parser.add_argument("--max-drop", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds")
    parser.add_argument("--search-val", type=int, default=None, help="search-val images (default: conf/data)")
    parser.add_argument("--methods", type=lambda v: v.split(","), default=["ilp", "local", "rl"])
    parser.add_argument("--budgets", type=lambda v: v.split(","), default=["fastest", "midway", "max_drop"])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    args.out = args.out or RESULTS / f"realscale-{args.runtime}.md"
    if not args.data.exists():
        raise SystemExit(f"error: {args.data} does not exist: pass --data /path/to/imagenette-224.zip")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    for name in ("realscale", "hysquant_rl"):  # every stage says what it does and how long it took
        logging.getLogger(name).setLevel(logging.INFO)
    log.info("reading %s", args.data)
    result = run(args)
    command = " ".join([".venv/bin/python benchmarks/realscale.py", *sys.argv[1:]])
    write_report(result, args.out, markdown(result, command))


if __name__ == "__main__":
    main()
