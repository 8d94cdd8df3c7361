"""What the deployment benchmarks share: settings from the conf tree, models on their runtimes (a found policy's file,
the runtime's own int8), their test top-1, and side-by-side timing (interleaved rounds, medians, 1 thread)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from hysquant_rl import machine
from hysquant_rl.apps import compose_config, plain
from hysquant_rl.deploy import runtimes
from hysquant_rl.deploy.runtimes import INPUT, logits
from hysquant_rl.deploy.timing import interleaved
from hysquant_rl.io import atomic_write, save_json
from hysquant_rl.pipeline import Pipeline
from hysquant_rl.settings import RunSettings, SearchSettings
from hysquant_rl.space import choice_mask

RESULTS = Path(__file__).parent / "results"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # where this workplace keeps its real photos
Model = tuple[str, Any]  # (runtime name, what that runtime's session opens: deployable bytes or its own model object)


def settings(overrides: list[str]) -> tuple[RunSettings, SearchSettings]:
    cfg = plain(compose_config("search", overrides))
    return RunSettings.from_mapping(cfg), SearchSettings.from_mapping(cfg)


def threads() -> int:
    """Every CPU this process may use (accuracy runs; timing uses 1 thread)."""
    return max(1, len(os.sched_getaffinity(0)))


def open_session(model: Model, n_threads: int) -> Any:
    """A session of ``model`` on its runtime (``openvino-bf16``: OpenVINO with ``INFERENCE_PRECISION_HINT=bf16``, every
    float op in bf16: what the OpenVINO benchmark measures against the f32 the search evaluates)."""
    runtime, artefact = model
    if runtime == "openvino-bf16":
        from hysquant_rl.deploy import openvino

        return openvino.Session(artefact, n_threads, precision="bf16")
    return runtimes.get(runtime).session(artefact, n_threads)


def test_top1(pipe: Pipeline, model: Model) -> float:
    """Top-1 [%] of a model on the test split (held in memory or streamed), run by its runtime."""
    sess, hits = open_session(model, threads()), 0
    for x, y in pipe.data.test.batches(256):
        hits += int((logits(sess, x.numpy(), 64).argmax(1) == y.numpy()).sum())
    return 100.0 * hits / len(pipe.data.test)


def calibration_images(pipe: Pipeline) -> np.ndarray:
    return np.concatenate([x.numpy() for x, _ in pipe.data.calib.batches(256)]).astype(np.float32)


def runtime_anchors(pipe: Pipeline, batch: int | None = None) -> dict[str, Model]:
    """The runtime's own uniform int8 of the pipeline's FP32 model, calibrated on the same images as ours
    (:meth:`hysquant_rl.deploy.runtimes.Runtime.anchors`), for ``batch`` images where its programs fix their batch."""
    runtime = pipe.runtime
    made = runtime.anchors(pipe.layout, calibration_images(pipe), batch)
    return {name: (runtime.name, m) for name, m in made.items()}


def policy_model(pipe: Pipeline, bits: np.ndarray, batch: int | None = None) -> Model:
    """A policy's deployable file on the pipeline's runtime (for ``batch`` images where its programs fix their batch;
    default: the layout's)."""
    if batch is not None and pipe.runtime.static_batch:
        return (pipe.runtime.name, pipe.layout.artefact(np.asarray(bits), batch))
    return (pipe.runtime.name, pipe.layout.artefact(np.asarray(bits)))


def at_batch(pipe: Pipeline, models: dict[str, Model], policies: dict[str, np.ndarray], batch: int) -> dict[str, Model]:
    """``models`` (the policies' files, the runtime's own int8 and any others) as they run at ``batch`` images: the
    same where the runtime runs any batch; else every policy and anchor built again for ``batch`` (ExecuTorch)."""
    if not pipe.runtime.static_batch or batch == pipe.layout.batch_size:
        return models
    rebuilt = {k: policy_model(pipe, b, batch) for k, b in policies.items()} | runtime_anchors(pipe, batch)
    return {k: rebuilt[k] for k in models if k in rebuilt}


def side_by_side(models: dict[str, Model], shape: tuple[int, ...], batch: int, rounds: int, runs: int) -> dict:
    """Median seconds per run of each model at ``batch`` images on 1 thread: ``rounds`` interleaved rounds of ``runs``
    runs each (the median of the round medians), so that a slow spell of the machine falls on every model alike."""
    import statistics

    feed = {INPUT: np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)}
    sessions = {k: open_session(v, 1) for k, v in models.items()}
    medians = interleaved(sessions, feed, 10, runs, rounds)
    return {k: {"latency_s": statistics.median(v), "rounds": v} for k, v in medians.items()}


def agreement(fused: np.ndarray, reference: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """A round trip's figures: a runtime's logits (N, classes) on its integer kernels against a reference's on the
    same N images (``labels`` (N,)): top-1 of each [%], argmax agreement [%], largest and mean logit difference."""
    return {
        "images": len(labels),
        "integer_top1": float(100 * (fused.argmax(1) == labels).mean()),
        "float_ops_top1": float(100 * (reference.argmax(1) == labels).mean()),
        "argmax_agreement": float(100 * (fused.argmax(1) == reference.argmax(1)).mean()),
        "max_logit_diff": float(np.abs(fused - reference).max()),
        "mean_logit_diff": float(np.abs(fused - reference).mean()),
    }


def pipe_mask(pipe: Pipeline) -> np.ndarray:
    return choice_mask(pipe.units, pipe.cost.profile, pipe.space)


def machine_record(pipe_or_runtime: Any) -> dict[str, Any]:
    """What every figure is measured on: the runtime's machine identity and the CPU's capabilities."""
    runtime = getattr(pipe_or_runtime, "runtime", pipe_or_runtime)
    return {**runtime.machine(), "capabilities": runtime.capabilities(), "describe": machine.describe()}


def write_report(result: dict[str, Any], out: Path, text: str) -> None:
    """A benchmark's results: ``out`` (markdown, ``text``) and the JSON beside it, each written atomically; printed."""
    save_json(result, out.with_suffix(".json"))
    atomic_write(out, lambda f: f.write(text.encode()))
    print(text)
