"""Benchmark: test top-1 of uniform policies per quantization scope and activation calibrator (a script, not a test).

    .venv/bin/python benchmarks/calibrators.py                       # Fashion-MNIST, embedded model
    .venv/bin/python benchmarks/calibrators.py data=digits --policies W8A8 W4A4

One pipeline per row (the model, data and calibration images are the same; only the quantizer settings differ):
``quant.scope`` linear and hybrid, each with every calibrator, and two hybrid variants of min-max: log2 softmax
levels and per-channel LayerNorm-input ranges. Each uniform policy is evaluated on the whole test split (under
the hybrid scope a ``WxAy`` policy puts every activation-only unit at ``Ay``). Also measures the evaluation
throughput on search-val (FP32 and W8A8 under each scope). Prints a Markdown table and writes it to
``benchmarks/results/calibrators.md`` (``--out`` elsewhere).
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import replace
from pathlib import Path

from hysquant_rl.apps import compose_config, plain
from hysquant_rl.bench.run import throughput
from hysquant_rl.bits import FP32_BITS, parse_uniform
from hysquant_rl.io import atomic_write
from hysquant_rl.pipeline import build
from hysquant_rl.settings import CALIBRATORS, RunSettings

VARIANTS = [  # (label, quant settings changed from conf/: min-max, uniform softmax, per-tensor ranges)
    *[(f"linear, {c}", {"scope": "linear", "calibrator": c}) for c in CALIBRATORS],
    *[(f"hybrid, {c}", {"scope": "hybrid", "calibrator": c}) for c in CALIBRATORS],
    ("hybrid, minmax, softmax=log2", {"scope": "hybrid", "softmax": "log2"}),
    (
        "hybrid, minmax, act_granularity=channel",
        {"scope": "hybrid", "calibrator": "minmax", "act_granularity": "channel"},
    ),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--policies", nargs="+", default=["FP32", "W8A8", "W6A6", "W4A8", "W8A4"])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "calibrators.md")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (default: data=fashion_mnist)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    overrides = args.overrides or ["data=fashion_mnist"]
    run = RunSettings.from_mapping(plain(compose_config("search", overrides)))
    rows, units, speed = {}, {}, {}
    start = time.perf_counter()
    for label, change in VARIANTS:
        pipe = build(replace(run, quant=replace(run.quant, **change)))
        n = len(pipe.units)
        units[label] = n
        rows[label] = {p: pipe.evaluator.evaluate([parse_uniform(p)] * n, "test").top1 for p in args.policies}
        print(f"{label} ({n} units): " + ", ".join(f"{p} {v:.2f}" for p, v in rows[label].items()), flush=True)
        if label in ("linear, minmax", "hybrid, minmax"):  # forward passes on search-val, best of 7
            scope = label.split(",")[0]
            speed[f"{scope} FP32"] = throughput(pipe, [(FP32_BITS, FP32_BITS)] * n, "search_val", 7)
            speed[f"{scope} W8A8"] = throughput(pipe, [(8, 8)] * n, "search_val", 7)
            speed["images"] = len(pipe.data.search_val)
    test_n = len(pipe.data.test)
    command = f".venv/bin/python benchmarks/calibrators.py {' '.join(overrides)}"
    lines = [
        f"# Uniform policies per quantization scope and calibrator: {pipe.spec.name} on {run.data.name}",
        "",
        f"Test top-1 (%) on {test_n} test images; weights min-max per {run.quant.weight_granularity}, the percentile"
        f" rule at p = {run.quant.percentile}. `linear`: Conv2d/Linear units only (the attention matmuls, softmax"
        " and LayerNorm inputs in float); `hybrid`: plus the attention-qk, attention-pv and layernorm-in units, a"
        f" `WxAy` policy putting them at `Ay`. Measured in {time.perf_counter() - start:.0f} s on this machine's"
        f" CPU by `{command}`.",
        "",
        "| scope, calibrator | units | " + " | ".join(args.policies) + " |",
        "|---|---|" + "---|" * len(args.policies),
    ]
    lines += [f"| {c} | {units[c]} | " + " | ".join(f"{v:.2f}" for v in r.values()) + " |" for c, r in rows.items()]
    if speed:
        images = speed.pop("images")
        fp32 = speed["linear FP32"]  # the model as timm runs it (fused attention)
        lines += [
            "",
            f"Evaluation throughput on search-val ({images} images, batch {run.eval.batch_size}, min-max, best of 7"
            " forward passes, measured on this machine's CPU; ratio to the FP32 model as timm runs it, with fused"
            " attention):",
            "",
            "| model | images/s | ratio |",
            "|---|---|---|",
            *[f"| {k} | {v:.0f} | {v / fp32:.2f} |" for k, v in speed.items()],
        ]
    text = "\n".join(lines) + "\n"
    atomic_write(args.out, lambda f: f.write(text.encode()))
    print(text)


if __name__ == "__main__":
    main()
