"""onnxruntime: sessions on its CPU provider, batched logits, its per-node profiler, and the identity of the machine a
measurement was made on (for every runtime: :mod:`hysquant_rl.deploy.runtimes`).

A runtime measurement (a latency, a per-unit latency table) is only valid on the machine and runtime that made it:
:func:`machine` names both (CPU model, logical CPUs, the runtime and its version), and every cache of measurements is
keyed by it, so that constants measured on one machine are never used silently on another.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import tempfile
from collections import defaultdict
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from hysquant_rl.errors import HySquantError
from hysquant_rl.hardware.profile import runtime_version

INPUT, OUTPUT = "images", "logits"  # the names of every exported graph's input (B, C, H, W) and output (B, classes)


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise HySquantError("running an ONNX model needs onnxruntime: pip install onnx onnxruntime") from None
    return onnxruntime


def session(model: str | os.PathLike | bytes, threads: int = 1, optimize: bool = True, profile: str | None = None):
    """An onnxruntime CPU session of ``model`` (a path, or a serialised model) on ``threads`` intra-op threads, with
    every graph optimisation (``optimize``; off, the graph runs node by node as written: the QDQ graph's reference
    semantics) and, with ``profile`` (a file prefix), onnxruntime's per-node profiler on."""
    ort = _ort()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    level = ort.GraphOptimizationLevel
    options.graph_optimization_level = level.ORT_ENABLE_ALL if optimize else level.ORT_DISABLE_ALL
    if profile is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile
    try:
        source = model if isinstance(model, bytes) else str(model)
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for a graph it cannot run
        where = "the in-memory model" if isinstance(model, bytes) else model
        raise HySquantError(
            f"onnxruntime cannot run {where} ({type(e).__name__}: {str(e).splitlines()[0]}): re-export it with this"
            " version, or report the policy that produced it"
        ) from None


def profile_nodes(model: bytes, feed: dict[str, np.ndarray], threads: int, runs: int) -> dict[str, tuple[str, float]]:
    """(op type, median seconds) of each node of ``model`` over ``runs`` profiled runs (after 5 unprofiled ones)."""
    with tempfile.TemporaryDirectory() as tmp:
        sess = session(model, threads, profile=str(Path(tmp) / "profile"))
        for _ in range(runs + 5):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    times: dict[str, list[float]] = defaultdict(list)
    ops: dict[str, str] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            name = e["name"][: -len("_kernel_time")]
            times[name].append(e["dur"] / 1e6)
            ops[name] = e.get("args", {}).get("op_name", "")
    # the first 5 runs warm caches: drop each node's first 5 events
    return {name: (ops[name], statistics.median(t[5:] or t)) for name, t in times.items()}


def logits(sess: Any, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits (N, classes) float32 of ``images`` (N, C, H, W) from an onnxruntime session, in batches."""
    images = np.asarray(images, dtype=np.float32)
    out = [sess.run([OUTPUT], {INPUT: images[i : i + batch_size]})[0] for i in range(0, len(images), batch_size)]
    return np.concatenate(out)


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; the platform's processor string elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


@lru_cache(maxsize=1)
def has_vnni() -> bool:
    """Whether the CPU has a VNNI dot product (``avx512_vnni`` or ``avx_vnni`` in ``/proc/cpuinfo``; ARM's int8 dot
    products count too). Without it onnxruntime's u8 x s8 kernels sum pairs of products in saturating 16-bit
    registers, which full 8-bit weights overflow: onnxruntime's quantization guide prescribes 7-bit weights
    (``reduce_range``) on such a CPU, and the runtime layout follows it."""
    if platform.machine().lower() in ("aarch64", "arm64"):
        return True
    try:
        flags = next(
            (line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), ""
        ).split()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def machine(runtime: str = "onnxruntime") -> dict[str, Any]:
    """What a measurement on ``runtime`` depends on besides the model: CPU model, logical CPUs, whether it has VNNI,
    runtime and version."""
    return {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "vnni": has_vnni(), "runtime": runtime_version(runtime)}


def machine_key(runtime: str = "onnxruntime") -> str:
    """A short, file-name-safe key of :func:`machine` (caches of measurements are kept per machine and runtime)."""
    m = machine(runtime)
    text = f"{m['cpu']}|{m['logical_cpus']}|{m['vnni']}|{m['runtime']}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]
