"""``hysquant-apply policy=FILE``: evaluate a policy on the test split and write the quantized model."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from hysquant_rl.apps import app, plain, run_dir
from hysquant_rl.bits import FP32_BITS, parse_uniform
from hysquant_rl.deploy import TimedCheck
from hysquant_rl.errors import HySquantError
from hysquant_rl.pipeline import Pipeline, build, export, make_check
from hysquant_rl.policy import QuantPolicy, complete, validate
from hysquant_rl.settings import RunSettings

if TYPE_CHECKING:
    from hysquant_rl.hardware.profile import DeviceProfile
    from hysquant_rl.units import UnitInfo

log = logging.getLogger(__name__)


def resolve_policy(spec: str, pipe: Pipeline, seed: int) -> QuantPolicy:
    """A policy JSON path, validated against the model (a version-1 file gets the activation-only units at FP32);
    or a uniform spec such as ``W4A8`` or ``FP32`` (activation-only units take its A bits)."""
    uniform = parse_uniform(spec)
    if uniform is not None:  # in the executable space, units the runtime cannot run at the pair stay FP32
        return pipe.policy(pipe.uniform(uniform), method="uniform", seed=seed)
    policy = complete(QuantPolicy.load(Path(spec).expanduser()), pipe.units)
    validate(policy, pipe.units, pipe.spec.name, pipe.weights_sha256)
    return policy


def check_executable(policy: QuantPolicy, units: list[UnitInfo], profile: DeviceProfile) -> None:
    """A one-line error naming the units whose (w, a) the profile's runtime does not execute (its executable choices:
    :func:`hysquant_rl.space.choice_mask`), with the fix."""
    from hysquant_rl.bits import label, to_index
    from hysquant_rl.space import choice_mask

    mask = choice_mask(units, profile, "executable")
    bad = [
        f"{unit.name} {label(*b)}"
        for unit, b, m in zip(units, policy.bits(), mask)
        if not m[tuple(to_index(b if unit.weighted else (b[1], b[1])))]
    ]
    runs = sorted({label(*p) for kind in {unit.kind for unit in units} for p in profile.executable(kind)})
    if bad:
        shown = ", ".join(bad[:5]) + (f", ... {len(bad) - 5} more" if len(bad) > 5 else "")
        raise HySquantError(
            f"the policy has {len(bad)} unit(s) at pairs {profile.runtime} does not execute ({shown}):"
            f" on hardware={profile.name} a unit runs FP32 or {'/'.join(runs)};"
            " search the policy with this profile, or apply it with search.space=simulated"
        )


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
    """Evaluate the policy ``spec`` on search-val and test; write ``policy.json`` (with those metrics) and the
    quantized model as a set (:func:`hysquant_rl.pipeline.export`: the runtime's deployable file in the executable
    space, and its own files with ``export.<runtime>``; the fake-quantized checkpoint and the integer weights, and the
    simulated QDQ graph with ``export.onnx``, in the simulated one) into ``out``."""
    if parse_uniform(spec) is None:  # a malformed spec or a file that cannot be read fails before minutes of work
        QuantPolicy.load(Path(spec).expanduser())
    pipe = build(run)
    policy = resolve_policy(spec, pipe, run.seed)
    if pipe.space == "executable":  # before anything is written: a runtime file holds only what it executes
        check_executable(policy, pipe.units, pipe.cost.profile)
    splits = ("search_val", "test")
    policy.metrics = {**policy.metrics, "apply": pipe.measure(policy.bits(), splits)}
    fp32 = pipe.measure([(FP32_BITS, FP32_BITS)] * len(pipe.units), splits)
    log.info(format_metrics("FP32", fp32))
    log.info(format_metrics(spec if parse_uniform(spec) else "policy", policy.metrics["apply"]))
    policy.save(out / "policy.json")
    paths = export(pipe, policy, out, run.export)
    check = make_check(pipe)
    if isinstance(check, TimedCheck):  # hardware.backend=onnxruntime or openvino: is it really faster?
        fp32 = [(FP32_BITS, FP32_BITS)] * len(pipe.units)
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
