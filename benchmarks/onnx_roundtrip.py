"""Benchmark: the ONNX QDQ export run by onnxruntime against the fake-quantized PyTorch model (a script, not a test).

    .venv/bin/python benchmarks/onnx_roundtrip.py                                   # Fashion-MNIST, embedded model
    .venv/bin/python benchmarks/onnx_roundtrip.py --policy runs/x/best_policy.json  # plus a found mixed policy

For uniform FP32, W8A8, W4A8 and each ``--policy`` file: export ``model.onnx`` in the paper's simulated layout
(:func:`hysquant_rl.deploy.simulated_onnx.export_simulated`), run it with onnxruntime's CPU provider on the whole
test split, and compare with the PyTorch fake-quant logits: top-1 of each, argmax agreement, largest logit
difference. (The runtime layout's round trip is ``benchmarks/deployment.py``'s.) Writes a Markdown table to
``benchmarks/results/onnx_roundtrip.md`` (``--out`` elsewhere).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch

from hysquant_rl.apps import compose_config, plain
from hysquant_rl.apps.apply import resolve_policy
from hysquant_rl.deploy import ort
from hysquant_rl.deploy.simulated_onnx import export_simulated
from hysquant_rl.io import atomic_write
from hysquant_rl.pipeline import build
from hysquant_rl.settings import RunSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--policy", nargs="*", default=[], help="policy JSON files (found policies) to add")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "onnx_roundtrip.md")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (default: data=fashion_mnist)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    overrides = args.overrides or ["data=fashion_mnist"]
    run = RunSettings.from_mapping(plain(compose_config("apply", [*overrides, "policy=FP32"])))
    pipe = build(run)
    x, y = pipe.data.test.x, pipe.data.test.y
    rows = []
    start = time.perf_counter()
    for spec in ["FP32", "W8A8", "W4A8", *args.policy]:
        policy = resolve_policy(spec, pipe, run.seed)
        pipe.qmodel.apply_bits(policy.bits())
        with torch.inference_mode():
            ref = pipe.evaluator.logits(pipe.data.test)[0]
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            path = export_simulated(pipe.qmodel, policy, pipe.data.input_shape, tmp)
            export_s = time.perf_counter() - t0
            session = ort.session(path, torch.get_num_threads())
            got = torch.from_numpy(ort.logits(session, x.numpy(), run.eval.batch_size))
        label = spec if not spec.endswith(".json") else f"found ({policy.provenance.get('method')}, {Path(spec).name})"
        row = {
            "policy": label,
            "torch": 100.0 * (ref.argmax(1) == y).float().mean().item(),
            "onnxruntime": 100.0 * (got.argmax(1) == y).float().mean().item(),
            "agreement": 100.0 * (ref.argmax(1) == got.argmax(1)).float().mean().item(),
            "max_diff": (ref - got).abs().max().item(),
            "export_s": export_s,
        }
        rows.append(row)
        print(row, flush=True)
    command = " ".join(["benchmarks/onnx_roundtrip.py", *[f"--policy {p}" for p in args.policy], *overrides])
    lines = [
        f"# ONNX QDQ export run by onnxruntime: {pipe.spec.name} on {run.data.name}",
        "",
        f"{len(x)} test images; onnxruntime {__import__('onnxruntime').__version__} CPU provider, all graph"
        " optimisations; PyTorch logits of the fake-quantized model. Measured on this machine's CPU in"
        f" {time.perf_counter() - start:.0f} s by `.venv/bin/python {command}`.",
        "",
        "| policy | PyTorch top-1 | onnxruntime top-1 | argmax agreement (%) | largest logit difference | export (s) |",
        "|---|---|---|---|---|---|",
        *[
            f"| {r['policy']} | {r['torch']:.2f} | {r['onnxruntime']:.2f} | {r['agreement']:.2f} |"
            f" {r['max_diff']:.3g} | {r['export_s']:.1f} |"
            for r in rows
        ],
    ]
    text = "\n".join(lines) + "\n"
    atomic_write(args.out, lambda f: f.write(text.encode()))
    print(text)


if __name__ == "__main__":
    main()
