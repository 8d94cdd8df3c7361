"""Benchmark: LUT build time with 1 and 2 workers, and the cache-hit time (a script, not a test).

    .venv/bin/python benchmarks/lut_build.py                      # digits, 500 search-val images, paper configs
    .venv/bin/python benchmarks/lut_build.py --workers 1 2 4 --replay-off data=fashion_mnist

Each cold build gets an empty LUT cache directory, so every (layer, configuration) job runs; the cache hit
then re-reads the 1-worker build. Times are wall-clock seconds of :func:`build_lut` (for Ray: starting Ray
and the actors, each of which builds its own pipeline, plus the jobs). Target (issue): 1 worker on 2 cores,
72 layers x 4 configurations on 500 images, at most 60 s.

500 search-val images on digits change the embedded model's split, so a model for that split is trained
once (about 1-2 minutes on 2 idle cores) and kept under ``<cache>/bench-lut/models``, apart from the models
of real runs; ``data.test_size=300`` leaves 997 training images.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from hysquant_rl.cli import CONF_DIR
from hysquant_rl.pipeline import build
from hysquant_rl.sensitivity import LUT, build_lut

DEFAULTS = ["data.search_val_size=500", "data.test_size=300"]


def config(overrides: list[str]):
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return compose("lut", overrides=overrides)


def timed_build(cfg, pipe) -> tuple[float, LUT]:
    start = time.perf_counter()
    lut = build_lut(cfg, pipe)
    return time.perf_counter() - start, lut


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to time (default 1 2)")
    parser.add_argument("--replay-off", action="store_true", help="also time 1 worker without the FP32-prefix replay")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (default: %s)" % " ".join(DEFAULTS))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    overrides = args.overrides or DEFAULTS
    base = config(overrides)
    cache = Path(str(base.paths.cache)).expanduser() / "bench-lut"  # models for benchmark-only splits
    overrides = [f"paths.cache={cache}", *overrides]
    cfg = config(overrides)
    start = time.perf_counter()
    pipe = build(cfg)
    print(f"pipeline: {pipe.spec.name} on {cfg.data.name}, {len(pipe.layers)} layers, "
          f"{len(pipe.data.search_val)} search-val images, built in {time.perf_counter() - start:.1f} s")
    print(f"machine: {os.cpu_count()} CPU cores, torch {torch.__version__} ({torch.get_num_threads()} threads in-process)")

    runs = [(f"{w} worker{'s' if w > 1 else ''}", [f"lut.workers={w}"]) for w in args.workers]
    if args.replay_off:
        runs.append(("1 worker, replay off", ["lut.workers=1", "eval.prefix_cache_mb=0"]))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        first_dir = None
        for name, extra in runs:
            cache_dir = Path(tmp) / name.replace(" ", "_").replace(",", "")
            first_dir = first_dir or cache_dir
            seconds, lut = timed_build(config([*overrides, *extra, f"lut.cache_dir={cache_dir}"]), pipe)
            jobs = lut.meta["build"]["evaluated"]
            rows.append((name, seconds, jobs, lut))
        before = pipe.evaluator.evaluations
        hit_s, hit = timed_build(config([*overrides, "lut.workers=1", f"lut.cache_dir={first_dir}"]), pipe)
        assert hit.meta["cache"]["status"] == "hit" and pipe.evaluator.evaluations == before

    ref = rows[0][3]
    print(f"\nLUT: {ref.num_layers} layers x {len(ref.configs)} configurations ({', '.join(ref.labels)}) + FP32 rows"
          f" = {len(ref.frame)} rows")
    print(f"{'run':<24s} {'wall s':>8s} {'jobs':>6s} {'s/job':>7s}  same numbers as the first run")
    for name, seconds, jobs, lut in rows:
        same = lut.frame.equals(ref.frame)
        print(f"{name:<24s} {seconds:8.1f} {jobs:6d} {seconds / max(jobs, 1):7.3f}  {'yes' if same else 'NO'}")
    print(f"{'cache hit':<24s} {hit_s:8.2f} {0:6d} {'-':>7s}  {'yes' if hit.frame.equals(ref.frame) else 'NO'}")
    target = rows[0][1] if rows[0][0] == "1 worker" else None
    if target is not None and len(pipe.data.search_val) == 500 and ref.num_layers * len(ref.configs) == 288:
        print(f"\ntarget (1 worker, 288 jobs, 500 images): <= 60 s -> {'met' if target <= 60 else 'MISSED'} ({target:.1f} s)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
