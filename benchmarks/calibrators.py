"""Benchmark: test top-1 of uniform policies under each activation calibrator (a script, not a test).

    .venv/bin/python benchmarks/calibrators.py                       # Fashion-MNIST, embedded model
    .venv/bin/python benchmarks/calibrators.py data=digits --policies W8A8 W4A4

One pipeline per calibrator (the model, data and the calibration images are the same; only the activation
ranges differ), each uniform policy evaluated on the whole test split. Prints a Markdown table and writes it
to ``benchmarks/results/calibrators.md`` (``--out`` elsewhere).
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import replace
from pathlib import Path

from hydra import compose, initialize_config_dir

from hysquant_rl.apps import CONF_DIR, plain
from hysquant_rl.bits import parse_uniform
from hysquant_rl.io import atomic_write
from hysquant_rl.pipeline import build
from hysquant_rl.settings import CALIBRATORS, RunSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--policies", nargs="+", default=["FP32", "W8A8", "W6A6", "W4A8", "W8A4"])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "calibrators.md")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (default: data=fashion_mnist)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        run = RunSettings.from_mapping(plain(compose("search", overrides=args.overrides or ["data=fashion_mnist"])))
    rows = {}
    start = time.perf_counter()
    for calibrator in CALIBRATORS:
        pipe = build(replace(run, quant=replace(run.quant, calibrator=calibrator)))
        n = len(pipe.layers)
        rows[calibrator] = {p: pipe.evaluator.evaluate([parse_uniform(p)] * n, "test").top1 for p in args.policies}
        print(f"{calibrator}: " + ", ".join(f"{p} {v:.2f}" for p, v in rows[calibrator].items()), flush=True)
    test_n = len(pipe.data.test)
    lines = [
        f"# Uniform policies under each activation calibrator: {pipe.spec.name} on {run.data.name}",
        "",
        f"Test top-1 (%) on {test_n} test images; weights min-max per {run.quant.weight_granularity}, the"
        f" percentile rule at p = {run.quant.percentile}; Conv2d/Linear units. Measured in"
        f" {time.perf_counter() - start:.0f} s by `.venv/bin/python benchmarks/calibrators.py"
        f" {' '.join(args.overrides or ['data=fashion_mnist'])}`.",
        "",
        "| calibrator | " + " | ".join(args.policies) + " |",
        "|---|" + "---|" * len(args.policies),
    ]
    lines += [f"| {c} | " + " | ".join(f"{v:.2f}" for v in r.values()) + " |" for c, r in rows.items()]
    text = "\n".join(lines) + "\n"
    atomic_write(args.out, lambda f: f.write(text.encode()))
    print(text)


if __name__ == "__main__":
    main()
