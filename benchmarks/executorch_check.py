"""Benchmark: two checks of ExecuTorch figures that ``benchmarks/deployment.py --runtime executorch`` leaves open.

    .venv/bin/python benchmarks/executorch_check.py      # about 6 min on 2 cores (the per-unit table cached)

1. The runtime's own round trip: ``XNNPACKQuantizer``'s uniform int8 ``.pte`` (XNNPACK's integer kernels) against its
   own converted PT2E module in PyTorch, on the 10 000 CIFAR-10 test images: the argmax agreement a layout of ours
   can be held to (ours is measured the same way by the deployment benchmark).
2. Batch 1 again: FP32, our W8A8 and the deployment benchmark's 30 % FP32 random mix (same seed), 21 interleaved
   rounds of 200 runs on 1 thread, in both orders (at 0.4-0.6 ms per run, the 9 rounds of the deployment benchmark
   had round CVs up to 0.25).
3. What each int8 annotates: per op type, how many ops of the converted module read an int8 (dequantized) input, in
   ``XNNPACKQuantizer``'s uniform int8 and in our W8A8.

The shipped CIFAR-10 model (``data=cifar10``; the archive ``--data``, default this workplace's shared data folder).
Writes ``benchmarks/results/executorch-check.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import (
    RESULTS,
    SHARED_DATA,
    agreement,
    calibration_images,
    machine_record,
    settings,
    side_by_side,
    threads,
    write_report,
)
from deployment import unit_table  # the per-unit table at batch 1 (cached by the deployment benchmark's run)

from hysquant_rl.bits import FP32_BITS
from hysquant_rl.deploy.executorch import ModuleSession, Session, xnnpack_int8
from hysquant_rl.deploy.runtimes import logits
from hysquant_rl.pipeline import build


def run(args: argparse.Namespace) -> dict[str, Any]:
    start = time.perf_counter()
    overrides = ["data=cifar10", f"data.root={args.data}", "hardware=cpu", "hardware.backend=executorch"]
    run_settings, _ = settings([*overrides, "hardware.batch_size=8"])
    pipe = build(run_settings)
    layout = pipe.layout
    result: dict[str, Any] = {"machine": machine_record(pipe)}
    # 1. XNNPACKQuantizer's int8: the anchor's .pte against its converted module
    images = calibration_images(pipe)
    (program,) = pipe.runtime.anchors(layout, images).values()
    converted = xnnpack_int8(layout, images)  # what the anchor lowered: the same deterministic calibration
    x, y = pipe.data.test.x.numpy(), pipe.data.test.y.numpy()
    fused = logits(Session(program, 1), x, 512)
    reference = logits(ModuleSession(converted, threads()), x)
    result["anchor_roundtrip"] = agreement(fused, reference, y)
    # 3. the ops that read int8 inputs, the runtime's own int8 against ours
    result["int8_inputs"] = {"XNNPACKQuantizer int8": int8_inputs(converted)}
    result["int8_inputs"]["W8A8 (ours)"] = int8_inputs(layout.converted(pipe.uniform((8, 8))))
    # 2. batch 1, the deployment benchmark's policies (its random mixes: the same generator, seed and order)
    n = len(pipe.units)
    rng = np.random.default_rng(0)
    mixes = {}
    for f in (0.1, 0.3, 0.5, 0.7, 0.9):
        mix = pipe.uniform((8, 8))
        mix[rng.random(n) < f] = FP32_BITS
        mixes[f] = mix
    policies = {"FP32": np.full((n, 2), FP32_BITS), "W8A8 (ours)": pipe.uniform((8, 8)), "random 30 % FP32": mixes[0.3]}
    models = {k: ("executorch", layout.artefact(b, 1)) for k, b in policies.items()}
    result["batch1"] = {}
    for order in (list(models), list(models)[::-1]):
        timing = side_by_side({k: models[k] for k in order}, pipe.data.input_shape, 1, args.rounds, 200)
        result["batch1"][" > ".join(order)] = {
            k: {"ms": 1e3 * v["latency_s"], "cv": statistics.stdev(v["rounds"]) / statistics.fmean(v["rounds"])}
            for k, v in timing.items()
        }
    table = unit_table(run_settings, pipe, 1)
    result["batch1_modelled_ms"] = {k: 1e3 * table.latency(b) for k, b in policies.items()}
    result["wall_s"] = time.perf_counter() - start
    return result


def int8_inputs(module: Any) -> dict[str, int]:
    """{op type: how many ops of a converted PT2E module read a dequantized (int8) tensor}."""
    counts: dict[str, int] = {}
    for node in module.graph.nodes:
        name = str(node.target).replace("aten.", "").split(".")[0]
        if node.op != "call_function" or "quantize" in name:
            continue
        if any("dequantize" in str(getattr(a, "target", "")) for a in node.args):
            counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def markdown(r: dict[str, Any], command: str) -> str:
    rt = r["anchor_roundtrip"]
    lines = [
        "# ExecuTorch checks: the runtime's own round trip, and batch 1 timed again",
        "",
        f"Measured on {r['machine']['describe']}; {r['machine']['runtime']}; `{command}` ({r['wall_s'] / 60:.1f} min).",
        "",
        f"XNNPACKQuantizer's uniform int8 `.pte` against its converted PT2E module on {rt['images']} CIFAR-10 test"
        f" images: XNNPACK top-1 {rt['integer_top1']:.2f}, reference top-1 {rt['float_ops_top1']:.2f}, argmax"
        f" agreement {rt['argmax_agreement']:.2f} %, largest logit difference {rt['max_logit_diff']:.3g}, mean"
        f" {rt['mean_logit_diff']:.3g}.",
        "",
        "Batch 1, 1 thread, 200 runs per round, medians of the round medians (CV of the rounds), in both orders:",
        "",
        "| order | " + " | ".join(r["batch1_modelled_ms"]) + " |",
        "|---|" + "---|" * len(r["batch1_modelled_ms"]),
    ]
    for order, timing in r["batch1"].items():
        cells = [f"{timing[k]['ms']:.4f} ms ({timing[k]['cv']:.2f})" for k in r["batch1_modelled_ms"]]
        lines.append(f"| {order} | " + " | ".join(cells) + " |")
    lines.append("| per-unit model | " + " | ".join(f"{v:.4f} ms" for v in r["batch1_modelled_ms"].values()) + " |")
    lines += ["", "Ops that read an int8 (dequantized) input, per op type:", ""]
    kinds = sorted(set().union(*r["int8_inputs"].values()))
    lines += ["| op | " + " | ".join(r["int8_inputs"]) + " |", "|---|" + "---|" * len(r["int8_inputs"])]
    lines += [f"| {k} | " + " | ".join(str(c.get(k, 0)) for c in r["int8_inputs"].values()) + " |" for k in kinds]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "cifar10-jpeg.zip")
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--out", type=Path, default=RESULTS / "executorch-check.md")
    args = parser.parse_args()
    if not args.data.exists():
        raise SystemExit(f"error: {args.data} does not exist: pass --data /path/to/cifar10-jpeg.zip")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("hysquant_rl").setLevel(logging.INFO)
    result = run(args)
    write_report(
        result, args.out, markdown(result, " ".join([".venv/bin/python benchmarks/executorch_check.py", *sys.argv[1:]]))
    )


if __name__ == "__main__":
    main()
