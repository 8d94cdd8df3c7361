"""``hysquant-bench``: figures, not tests. Evaluation throughput of FP32 and quantized models in one run."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from hysquant_rl.io import save_json
from hysquant_rl.pipeline import build
from hysquant_rl.policy import parse_uniform

log = logging.getLogger(__name__)


def throughput(pipe: Any, bits: list[tuple[int, int]], split: str, repeats: int) -> float:
    """Best-of-``repeats`` images/s of a full evaluation (forward passes and metrics) of ``bits``."""
    n = len(pipe.data.split(split))
    best = float("inf")
    for _ in range(repeats):
        pipe.qmodel.apply_bits(bits)
        start = time.perf_counter()
        pipe.evaluator.logits(pipe.data.split(split))
        best = min(best, time.perf_counter() - start)
    return n / best


def run_bench(cfg: Any, out: Path) -> dict[str, Any]:
    pipe = build(cfg)
    split, repeats = str(cfg.bench.split), int(cfg.bench.repeats)
    fp32 = [(32, 32)] * len(pipe.layers)
    quant = [parse_uniform(str(cfg.bench.policy))] * len(pipe.layers)
    pipe.evaluator.evaluate(quant, split)  # warm the weight and activation caches, as a search would be
    fp = throughput(pipe, fp32, split, repeats)
    q = throughput(pipe, quant, split, repeats)
    result = {
        "split": split, "images": len(pipe.data.split(split)), "batch_size": int(cfg.eval.batch_size),
        "fp32_images_per_s": fp, "quantized_images_per_s": q, "quantized_policy": str(cfg.bench.policy),
        "ratio": q / fp,
    }
    print(
        f"evaluation throughput on {split} ({result['images']} images, batch {result['batch_size']}):"
        f" FP32 {fp:.0f} images/s, {cfg.bench.policy} {q:.0f} images/s, ratio {q / fp:.2f} (target >= 0.7)"
    )
    save_json(result, out / "bench_eval.json")
    return result
