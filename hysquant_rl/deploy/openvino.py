"""OpenVINO's CPU plugin as a runtime plug-in (``conf/runtime/openvino.yaml``; ``hardware.backend=openvino``): a
policy's ONNX graph compiled by OpenVINO's CPU plugin, run, profiled node by node, and saved as OpenVINO's own model
files (``export.openvino=true``: ``model.xml`` and ``model.bin`` beside ``model.onnx``).

OpenVINO reads the ONNX QDQ graph of :mod:`hysquant_rl.deploy.runtime_graph`'s ``openvino`` layout directly: its ONNX
frontend turns each QuantizeLinear/DequantizeLinear pair on an activation into a ``FakeQuantize`` and each int8 weight
behind a DequantizeLinear into an i8 constant with its scale, and its low-precision transformations then run a
Convolution, GroupConvolution or FullyConnected whose inputs carry such FakeQuantize nodes as an integer kernel
(runtime precision u8/i8: :func:`precisions`). That layout is NNCF's placement: quantizers on the activation inputs of
convolutions and matmuls, symmetric per-channel int8 weights, nothing on their outputs (onnxruntime's layout, which
also quantizes outputs and the ops between them, runs slower than FP32 on OpenVINO).

Every model is compiled for the CPU with a fixed thread count (``INFERENCE_NUM_THREADS``, one stream, the latency
hint) and ``INFERENCE_PRECISION_HINT=f32``: on a CPU with bf16 (AVX512-BF16, AMX) OpenVINO would otherwise run every
float op of an "FP32" model in bf16, so that an FP32 unit would not be the FP32 the search evaluated.
"""

from __future__ import annotations

import os
import statistics
from collections import defaultdict
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from hysquant_rl.deploy.graph_runtime import GraphRuntime
from hysquant_rl.errors import HySquantError
from hysquant_rl.hardware.profile import runtime_version

XML_FILE = "model.xml"  # OpenVINO's model files, beside model.onnx: model.xml (graph) and model.bin (weights)


@lru_cache(maxsize=1)
def _core() -> Any:
    runtime_version("openvino")  # one line naming the fix when openvino is not installed
    import openvino

    return openvino.Core()


def config(threads: int, profile: bool = False, precision: str = "f32") -> dict[str, Any]:
    """The CPU plugin's settings for a compiled model: ``threads`` inference threads, one stream, the latency hint,
    ``precision`` for every float op (f32: see the module docstring; ``bf16`` is what the benchmark measures against
    it) and, with ``profile``, per-node performance counters."""
    return {
        "INFERENCE_NUM_THREADS": int(threads),
        "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": precision,
        "PERF_COUNT": bool(profile),
    }


def capabilities() -> list[str]:
    """What the CPU plugin says this CPU offers (``OPTIMIZATION_CAPABILITIES``: ``FP32``, ``INT8``, ``BF16`` ...)."""
    return list(_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def read(model: str | os.PathLike | bytes | Any) -> Any:
    """OpenVINO's ``Model`` of an ONNX file (a path or serialised bytes) or of an OpenVINO ``.xml`` (an OpenVINO
    ``Model``, such as NNCF returns, is taken as it is)."""
    core = _core()
    if not isinstance(model, (str, os.PathLike, bytes)):
        return model
    try:
        return core.read_model(model if isinstance(model, bytes) else str(model))
    except Exception as e:  # OpenVINO raises RuntimeError subclasses of its own for a graph it cannot read
        where = "the in-memory model" if isinstance(model, bytes) else model
        raise HySquantError(
            f"OpenVINO cannot read {where} ({type(e).__name__}: {str(e).strip().splitlines()[0]}): re-export it, or"
            " report the policy that produced it"
        ) from None


class Session:
    """A model compiled by OpenVINO's CPU plugin, with onnxruntime's session interface: ``run(names, feed)`` -> a list
    with the logits (B, classes) float32 (every exported graph has one input and one output)."""

    def __init__(
        self, model: str | os.PathLike | bytes | Any, threads: int = 1, profile: bool = False, precision: str = "f32"
    ) -> None:
        self.compiled = _core().compile_model(read(model), "CPU", config(threads, profile, precision))
        self.request = self.compiled.create_infer_request()

    def run(self, names: Any, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        (images,) = feed.values()
        self.request.infer({0: images})
        return [self.request.get_output_tensor(0).data.copy()]

    def node_times(self) -> dict[str, tuple[str, float]]:
        """(layer type, seconds) of each executed node of the last run (needs ``profile=True``)."""
        return {
            p.node_name: (p.node_type, p.real_time.total_seconds())
            for p in self.request.get_profiling_info()
            if p.status.name == "EXECUTED"
        }


def session(model: str | os.PathLike | bytes | Any, threads: int = 1) -> Session:
    """:class:`Session` of ``model`` on ``threads`` threads."""
    return Session(model, threads)


def profile_nodes(model: bytes, feed: dict[str, np.ndarray], threads: int, runs: int) -> dict[str, tuple[str, float]]:
    """(layer type, median seconds) of each node of the compiled ``model`` over ``runs`` runs, after 5 unrecorded ones.
    OpenVINO names a compiled node after the ONNX node (or tensor) it comes from, with suffixes of its own such as
    ``/WithoutBiases``; nodes it creates itself (``MVN_12``) belong to no exported node."""
    sess = Session(model, threads, profile=True)
    times: dict[str, list[float]] = defaultdict(list)
    ops: dict[str, str] = {}
    for i in range(runs + 5):
        sess.run(None, feed)
        if i >= 5:
            for name, (op, seconds) in sess.node_times().items():
                times[name].append(seconds)
                ops[name] = op
    return {name: (ops[name], statistics.median(t)) for name, t in times.items()}


def precisions(model: str | os.PathLike | bytes | Any, threads: int = 1) -> dict[str, dict[str, int]]:
    """How the CPU plugin runs ``model``'s compute layers: {layer type: {runtime precision: count}} of its
    Convolution, FullyConnected, MatMul and Subgraph (fused attention) layers (``u8``/``i8``: integer kernels;
    ``f32``, ``bf16``: float). A Subgraph's runtime precision is its narrowest input's, which hides a float operand:
    ``Subgraph inputs`` counts each Subgraph's input precisions too (``i8,i8,f32``: q and k int8, v float)."""
    out: dict[str, dict[str, int]] = {}
    for op in Session(model, threads).compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str)
        if kind in ("Convolution", "FullyConnected", "MatMul", "Subgraph"):
            precision = info["runtimePrecision"].astype(str)
            out.setdefault(kind, {})
            out[kind][precision] = out[kind].get(precision, 0) + 1
        if kind == "Subgraph":
            inputs = ",".join(i.get_element_type().get_type_name() for i in op.inputs())
            out.setdefault("Subgraph inputs", {})
            out["Subgraph inputs"][inputs] = out["Subgraph inputs"].get(inputs, 0) + 1
    return out


def save(model: str | os.PathLike | bytes, out_dir: str | os.PathLike) -> Path:
    """Write OpenVINO's model files of an ONNX graph into ``out_dir`` (``model.xml`` and ``model.bin``, weights not
    compressed to fp16: the int8 weights stay int8, the float ones f32) and return the ``.xml`` path. OpenVINO's own
    write errors (a full disk, a folder that cannot be written) are one :class:`~hysquant_rl.io.WriteError` naming the
    file. Callers write into a fresh folder and move the files into place as a set
    (:func:`hysquant_rl.deploy.export.export`)."""
    import errno

    import openvino

    from hysquant_rl.io import WriteError

    out = Path(out_dir)
    try:
        openvino.save_model(read(model), str(out / XML_FILE), compress_to_fp16=False)
    except RuntimeError as e:  # OpenVINO's writer says "basic_ios::clear" (ENOSPC) or "Check 'bin_file' failed"
        cause = " ".join(str(e).split())[:160]
        raise WriteError(errno.EIO, f"OpenVINO could not write its model files: {cause}", str(out / XML_FILE)) from None
    return out / XML_FILE


class OpenVINO(GraphRuntime):
    """OpenVINO's CPU plugin: NNCF's placement in an ONNX QDQ graph (:mod:`hysquant_rl.deploy.runtime_graph`, layout
    ``openvino``), FakeQuantize fused into its neighbours (no boundary nodes of its own), performance counters per
    compiled node; ``export.openvino=true`` adds its ``model.xml``/``model.bin``."""

    name = "openvino"
    files = (XML_FILE, "model.bin")

    def capabilities(self) -> dict[str, Any]:
        return {**super().capabilities(), "openvino": capabilities()}

    def session(self, model, threads: int = 1) -> Session:
        return Session(model, threads)

    def profile_nodes(self, model, feed, threads, runs):
        return profile_nodes(model, feed, threads, runs)

    def anchors(self, layout, calib_images, batch_size=None):  # any batch runs
        import nncf

        images = np.asarray(calib_images, dtype=np.float32)
        dataset = nncf.Dataset([images[i : i + 64] for i in range(0, len(images), 64)])
        graph = layout.float.SerializeToString()
        return {
            "NNCF int8 (default)": nncf.quantize(read(graph), dataset),
            "NNCF int8 (transformer)": nncf.quantize(read(graph), dataset, model_type=nncf.ModelType.TRANSFORMER),
        }

    def export(self, layout, policy, out, files):
        paths = super().export(layout, policy, out, files)
        if files:
            paths["openvino"] = save(paths["onnx"], out)
        return paths


RUNTIME = OpenVINO
