"""Benchmark: LUT build time with 1 and 2 workers, and the cache-hit time (a script, not a test).

    .venv/bin/python benchmarks/lut_build.py                      # digits, 500 search-val images, paper configs
    .venv/bin/python benchmarks/lut_build.py --workers 1 2 4 --replay-off data=fashion_mnist

Each cold build gets an empty LUT cache directory, so every (layer, configuration) job runs; the cache hit
then re-reads the 1-worker build. Wall-clock seconds: "startup" starts the executor (for Ray: Ray itself and
the actors, each of which builds its own pipeline), "build" is :func:`build_lut` on it. Target (issue): 1
worker on 2 cores, 72 layers x 4 configurations on 500 images, at most 60 s.

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

from hysquant_rl.apps import compose_config, plain
from hysquant_rl.lut.build import build_lut
from hysquant_rl.lut.executor import make_executor
from hysquant_rl.lut.table import LUT
from hysquant_rl.pipeline import build
from hysquant_rl.settings import RunSettings

DEFAULTS = ["data.search_val_size=500", "data.test_size=300"]


def config(overrides: list[str]) -> RunSettings:
    """The settings ``hysquant-lut`` resolves with ``overrides``."""
    return RunSettings.from_mapping(plain(compose_config("lut", overrides)))


def timed_build(run: RunSettings, pipe) -> tuple[float, float, LUT]:
    """Seconds to start the executor ``run`` asks for (Ray and its actors; ~0 in-process), seconds of
    :func:`build_lut` on it, and the LUT."""
    start = time.perf_counter()
    executor = make_executor(run, pipe)
    ready = time.perf_counter()
    with executor:
        lut = build_lut(run, pipe, executor=executor)
    return ready - start, time.perf_counter() - ready, lut


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to time (default 1 2)")
    parser.add_argument("--replay-off", action="store_true", help="also time 1 worker without the FP32-prefix replay")
    parser.add_argument("overrides", nargs="*", help=f"Hydra overrides (default: {' '.join(DEFAULTS)})")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    overrides = args.overrides or DEFAULTS
    base = config(overrides)
    cache = base.cache_dir / "bench-lut"  # models for benchmark-only splits
    overrides = [f"paths.cache={cache}", *overrides]
    cfg = config(overrides)
    start = time.perf_counter()
    pipe = build(cfg)
    print(
        f"pipeline: {pipe.spec.name} on {cfg.data.name}, {len(pipe.units)} layers, "
        f"{len(pipe.data.search_val)} search-val images, built in {time.perf_counter() - start:.1f} s"
    )
    print(
        f"machine: {os.cpu_count()} CPU cores, torch {torch.__version__} ({torch.get_num_threads()} threads in-process)"
    )

    runs = [(f"{w} worker{'s' if w > 1 else ''}", [f"lut.workers={w}"]) for w in args.workers]
    if args.replay_off:
        runs.append(("1 worker, replay off", ["lut.workers=1", "eval.prefix_cache_mb=0"]))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        first_dir = None
        for name, extra in runs:
            cache_dir = Path(tmp) / name.replace(" ", "_").replace(",", "")
            first_dir = first_dir or cache_dir
            startup, seconds, lut = timed_build(config([*overrides, *extra, f"lut.cache_dir={cache_dir}"]), pipe)
            rows.append((name, startup, seconds, lut.meta["build"]["evaluated"], lut))
        before = pipe.evaluator.evaluations
        hit_cfg = config([*overrides, "lut.workers=1", f"lut.cache_dir={first_dir}"])
        start = time.perf_counter()
        hit = build_lut(hit_cfg, pipe)
        hit_s = time.perf_counter() - start
        assert hit.meta["cache"]["status"] == "hit" and pipe.evaluator.evaluations == before

    ref = rows[0][-1]
    print(
        f"\nLUT: {ref.num_units} layers x {len(ref.configs)} configurations ({', '.join(ref.labels)}) + FP32 rows"
        f" = {len(ref.frame)} rows"
    )
    print(f"{'run':<22s} {'startup s':>9s} {'build s':>8s} {'total s':>8s} {'jobs':>5s} {'s/job':>6s}  same numbers")
    for name, startup, seconds, jobs, lut in rows:
        same = "yes" if lut.frame.equals(ref.frame) else "NO"
        print(
            f"{name:<22s} {startup:9.1f} {seconds:8.1f} {startup + seconds:8.1f} {jobs:5d}"
            f" {seconds / max(jobs, 1):6.3f}  {same}"
        )
    same = "yes" if hit.frame.equals(ref.frame) else "NO"
    print(f"{'cache hit':<22s} {0:9.1f} {hit_s:8.2f} {hit_s:8.2f} {0:5d} {'-':>6s}  {same}")
    target = rows[0][1] + rows[0][2] if rows[0][0] == "1 worker" else None
    if target is not None and len(pipe.data.search_val) == 500 and ref.num_units * len(ref.configs) == 288:
        print(
            "\ntarget (1 worker, 288 jobs, 500 images): <= 60 s ->"
            f" {'met' if target <= 60 else 'MISSED'} ({target:.1f} s)"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
