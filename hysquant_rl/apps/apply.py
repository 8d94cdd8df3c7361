"""``hysquant-apply policy=FILE``: evaluate a policy on the test split and write the quantized model."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from hysquant_rl.apps import app, plain, run_dir
from hysquant_rl.bits import FP32_BITS, parse_uniform
from hysquant_rl.export import export_quantized
from hysquant_rl.export_onnx import export_onnx
from hysquant_rl.hardware import make_check
from hysquant_rl.pipeline import Pipeline, build
from hysquant_rl.policy import QuantPolicy, complete, validate
from hysquant_rl.settings import RunSettings

log = logging.getLogger(__name__)


def resolve_policy(spec: str, pipe: Pipeline, seed: int) -> QuantPolicy:
    """A policy JSON path, validated against the model (a version-1 file gets the activation-only units at FP32);
    or a uniform spec such as ``W4A8`` or ``FP32`` (activation-only units take its A bits)."""
    uniform = parse_uniform(spec)
    if uniform is not None:
        return pipe.policy([uniform] * len(pipe.layers), method="uniform", seed=seed)
    policy = complete(QuantPolicy.load(Path(spec).expanduser()), pipe.layers)
    validate(policy, pipe.layers, pipe.spec.name, pipe.weights_sha256)
    return policy


def format_metrics(label: str, metrics: dict[str, Any]) -> str:
    """One line: accuracies per split, then the modelled cost."""
    parts = [f"{label:<14}"]
    for split in ("search_val", "test"):
        if split in metrics:
            m = metrics[split]
            parts.append(f"{split} top-1 {m['top1']:6.2f}  top-5 {m['top5']:6.2f}  KL {m['kl']:.4f}")
    c = metrics["cost"]
    parts.append(
        f"latency {c['latency_ms']:.4g} ms  energy {c['energy_mj']:.4g} mJ  size {c['size_mb']:.4g} MB"
        f"  ({c['backend']}: {c['device']}, batch {c['batch_size']}"
        f"{', deployable' if c['deployable'] else ', simulation-only'})"
    )
    return " | ".join(parts)


def apply_policy(run: RunSettings, spec: str, out: Path) -> QuantPolicy:
    """Evaluate the policy ``spec`` on search-val and test; write ``policy.json`` (with those metrics), the
    fake-quantized checkpoint and the integer weights into ``out``."""
    parse_uniform(spec)  # a malformed spec fails before minutes of model and data preparation
    pipe = build(run)
    policy = resolve_policy(spec, pipe, run.seed)
    splits = ("search_val", "test")
    policy.metrics = {**policy.metrics, "apply": pipe.measure(policy.bits(), splits)}
    fp32 = pipe.measure([(FP32_BITS, FP32_BITS)] * len(pipe.layers), splits)
    log.info(format_metrics("FP32", fp32))
    log.info(format_metrics(spec if parse_uniform(spec) else "policy", policy.metrics["apply"]))
    policy.save(out / "policy.json")
    pipe.qmodel.apply_bits(policy.bits())
    paths = export_quantized(pipe.qmodel, policy, pipe.spec.to_dict(), out)
    if run.export_onnx:
        paths["onnx"] = export_onnx(pipe.qmodel, policy, pipe.data.input_shape, out)
    check = make_check(pipe)
    if hasattr(check, "measure"):  # hardware.backend=onnxruntime: is it really faster?
        fp32 = [(FP32_BITS, FP32_BITS)] * len(pipe.layers)
        fp32_ms, policy_ms = (1e3 * check.measure(b).latency_s for b in (fp32, policy.bits()))
        log.info(
            "measured on %s at batch %d: FP32 %.4g ms, policy %.4g ms: %.3gx the speed of FP32",
            check.device,
            check.batch_size,
            fp32_ms,
            policy_ms,
            fp32_ms / policy_ms,
        )
    log.info("wrote %s and %s", out / "policy.json", ", ".join(str(p) for p in paths.values()))
    return policy


def _main(cfg: DictConfig) -> QuantPolicy:
    settings = plain(cfg)
    return apply_policy(RunSettings.from_mapping(settings), str(settings["policy"]), run_dir())


main = app("apply")(_main)
