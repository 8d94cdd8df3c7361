"""Benchmark: modelled latency of timm MobileViT at 256 px on every GPU profile (a script, not a test).

    .venv/bin/python benchmarks/gpu_profiles.py     # writes benchmarks/results/gpu_profiles.md

For mobilevit_xxs, mobilevit_xs and mobilevit_s (random weights: the cost model needs shapes only) at 3x256x256:
the roofline's latency (``hardware.backend=modelled``, with each profile's per-kernel overhead) of uniform FP32,
W8A8 and W4A4 at batch 1 and 64, the kernels it counts, and the launch floor (kernels x ``kernel_overhead_s``).
Every figure is modelled; no GPU measured it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import timm
import torch

from hysquant_rl.hardware import CostModel, load_profile
from hysquant_rl.inventory import inventory, other_ops
from hysquant_rl.io import atomic_write

MODELS = ("mobilevit_xxs", "mobilevit_xs", "mobilevit_s")
PROFILES = ("rtx3080", "a100", "h200")
SHAPE = (3, 256, 256)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gpu_profiles.md")
    args = parser.parse_args()
    lines = [
        "# Modelled latency of MobileViT at 256 px on the GPU profiles",
        "",
        "Roofline of `hysquant_rl/hardware/cost.py` with each profile's constants (`conf/hardware/`), per-kernel"
        " overhead included; modelled, not measured (no GPU at hand). Produced by"
        " `.venv/bin/python benchmarks/gpu_profiles.py`.",
        "",
        "| model | profile | batch | FP32 (ms) | W8A8 (ms) | W4A4 (ms) | kernels | launch floor (ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in MODELS:
        torch.manual_seed(0)
        model = timm.create_model(name).eval()
        units, matmuls = inventory(model, SHAPE)
        other = other_ops(model, SHAPE)
        for profile_name in PROFILES:
            profile = load_profile(profile_name)
            for batch in (1, 64):
                cost = CostModel(units, matmuls, profile, batch, other)
                kernels = cost.kernel_count([(8, 8)] * len(units))
                ms = {
                    spec: 1e3 * cost.uniform_cost(*bits).latency_s
                    for spec, bits in (("FP32", (32, 32)), ("W8A8", (8, 8)), ("W4A4", (4, 4)))
                }
                lines.append(
                    f"| {name} | {profile_name} | {batch} | {ms['FP32']:.3f} | {ms['W8A8']:.3f} | {ms['W4A4']:.3f} |"
                    f" {kernels} | {1e3 * kernels * profile.kernel_overhead_s:.3f} |"
                )
    text = "\n".join(lines) + "\n"
    atomic_write(args.out, lambda f: f.write(text.encode()))
    print(text)


if __name__ == "__main__":
    main()
