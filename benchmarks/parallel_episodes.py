"""Benchmark: episodes per second of the RL search with ``search.workers`` 1 and 2 (a script, not a test).

    .venv/bin/python benchmarks/parallel_episodes.py                  # Fashion-MNIST, bench settings, 21 episodes
    .venv/bin/python benchmarks/parallel_episodes.py --episodes 41 --workers 1 2 4

Each run is the warm-started agent on the benchmark's configuration (``conf/bench.yaml``: Fashion-MNIST, 2000
search-val images) at batch 64 under the bench's tightest latency budget, ``--episodes`` episodes, one hardware
round. With N > 1 workers the episodes' policies are evaluated on N Ray actors (each builds its own pipeline
first: the start-up is timed apart) on ``cores // N`` threads each. Writes a Markdown table to
``benchmarks/results/parallel_episodes.md`` (``--out`` elsewhere). Time it alone on the machine.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from hysquant_rl.apps import compose_config, plain
from hysquant_rl.apps.search import make_method
from hysquant_rl.io import atomic_write
from hysquant_rl.lut.build import build_lut
from hysquant_rl.lut.executor import RayExecutor
from hysquant_rl.pipeline import build
from hysquant_rl.search.budget import span
from hysquant_rl.search.loop import search
from hysquant_rl.settings import RunSettings, SearchSettings, default_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=21)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--fraction", type=float, default=0.2, help="latency budget, as in bench.plans")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "parallel_episodes.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    base = ["hardware.batch_size=64", "budget.energy_ratio=null", "search.max_rounds=1"]
    run = RunSettings.from_mapping(plain(compose_config("bench", base)))
    pipe = build(run)
    lut = build_lut(run, pipe)
    low, w8a8 = span(pipe.cost, lut.mask())
    limit = low["latency_ms"] + args.fraction * (w8a8["latency_ms"] - low["latency_ms"])
    rows = []
    for n in args.workers:
        overrides = [*base, f"budget.latency_ms={limit!r}", f"search.episodes={args.episodes}", f"search.workers={n}"]
        settings = SearchSettings.from_mapping(plain(compose_config("bench", overrides)))
        start = time.perf_counter()
        executor = RayExecutor(replace(run, threads=default_threads(n)), n) if n > 1 else None
        startup = time.perf_counter() - start
        try:
            with tempfile.TemporaryDirectory() as tmp:
                found = search(settings, pipe, lut, Path(tmp), make_method, log_lut=False, executor=executor)
        finally:
            if executor is not None:
                executor.close()
        episodes = len(found.recorder.history)
        rows.append((n, episodes, len(found.problem.cache), found.wall_s, startup))
        print(f"workers {n}: {episodes} episodes in {found.wall_s:.1f} s ({episodes / found.wall_s:.3f} episodes/s)")
    lines = [
        f"# Parallel episodes: {pipe.spec.name} on {pipe.data.name}, {len(pipe.data.search_val)} search-val images",
        "",
        f"The warm-started agent (agent={settings.agent.name}), batch 64, latency budget {limit:.4g} ms (fraction"
        f" {args.fraction} of the bench's span), one hardware round; {default_threads()} cores. Ray start-up (actors"
        " building their pipelines) is timed apart from the search.",
        "",
        "| workers | episodes | policies evaluated | search wall (s) | episodes/s | speed-up | Ray start-up (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    rate1 = rows[0][1] / rows[0][3]
    for n, episodes, evaluated, wall, startup in rows:
        rate = episodes / wall
        lines.append(
            f"| {n} | {episodes} | {evaluated} | {wall:.1f} | {rate:.3f} | {rate / rate1:.2f}x |"
            f" {'-' if n == 1 else f'{startup:.1f}'} |"
        )
    text = "\n".join(lines) + "\n"
    atomic_write(args.out, lambda fh: fh.write(text.encode()))
    print(text)


if __name__ == "__main__":
    main()
