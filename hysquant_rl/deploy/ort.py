"""onnxruntime's CPU provider as a runtime plug-in (``conf/runtime/onnxruntime.yaml``): sessions, its per-node
profiler, and its own quantizer's layout (:mod:`hysquant_rl.deploy.runtime_graph`, layout ``onnxruntime``).

:func:`session` and :func:`profile_nodes` are also what other modules use to run an ONNX graph as written (the
reference semantics of a QDQ graph: ``optimize=False``).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from hysquant_rl.deploy.graph_runtime import GraphRuntime
from hysquant_rl.deploy.runtimes import INPUT, OUTPUT, logits
from hysquant_rl.errors import HySquantError

__all__ = ["INPUT", "OUTPUT", "RUNTIME", "OnnxRuntime", "logits", "profile_nodes", "session"]


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
    with tempfile.TemporaryDirectory(prefix="hysquant-profile-") as tmp:
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


class OnnxRuntime(GraphRuntime):
    """onnxruntime's CPU provider: its own quantizer's QDQ layout, fused into QLinearConv, QLinearMatMul, QGemm and the
    QLinear ops between them; QuantizeLinear and DequantizeLinear are nodes of their own where an int8 segment begins
    or ends."""

    name = "onnxruntime"
    boundary_ops = ("QuantizeLinear", "DequantizeLinear")

    def session(self, model: bytes | str | os.PathLike, threads: int = 1) -> Any:
        return session(model, threads)

    def profile_nodes(self, model, feed, threads, runs):
        return profile_nodes(model, feed, threads, runs)

    def anchors(self, layout, calib_images, batch_size=None):  # any batch runs
        return {"quantize_static int8": quantize_static_int8(layout.float_path, calib_images, self.int8_weights())}


def quantize_static_int8(float_path: str | os.PathLike, images: np.ndarray, int8_weights: bool = True) -> bytes:
    """onnxruntime's ``quantize_static`` of the FP32 graph at ``float_path`` as its documentation has a user run it on
    this CPU: QDQ, per-channel QInt8 weights (``reduce_range`` without VNNI), QUInt8 activations, every op type, MinMax
    on ``images`` (N, C, H, W) in batches of 64."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    images = np.asarray(images, dtype=np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{INPUT: images[i : i + 64]} for i in range(0, len(images), 64)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    import logging

    quiet, logging.getLogger().disabled = logging.getLogger().disabled, True  # its notes on every call
    try:
        with tempfile.TemporaryDirectory(prefix="hysquant-anchor-") as tmp:
            path = Path(tmp) / "quantize_static.onnx"
            quantize_static(
                str(float_path),
                str(path),
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=not int8_weights,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )
            return path.read_bytes()
    finally:
        logging.getLogger().disabled = quiet


RUNTIME = OnnxRuntime
