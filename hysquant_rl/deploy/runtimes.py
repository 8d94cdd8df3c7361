"""The runtimes a deployed model runs on here, in one registry (``hardware.runtime``): what the executable space, the
per-unit latency table, the runtime's accuracy and the hardware check need of each, so that a second runtime is an
entry here and not a second copy of the search.

* ``onnxruntime``: QLinearConv, QLinearMatMul, QGemm and the QLinear ops between them (its
  own quantizer's layout: :mod:`hysquant_rl.deploy.runtime_graph`).
* ``openvino``: Convolution, GroupConvolution and FullyConnected with a FakeQuantize on their
  inputs (NNCF's placement: :mod:`hysquant_rl.deploy.openvino`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from hysquant_rl.errors import HySquantError
from hysquant_rl.hardware.profile import RUNTIMES, runtime_version


@dataclass(frozen=True)
class Runtime:
    """One runtime: ``session(model, threads)`` opens a serialised ONNX graph (``run(None, feed)`` -> [logits]),
    ``profile_nodes(model, feed, threads, runs)`` gives each compiled node's (op type, median seconds), ``name`` also
    names the layout it executes as integer kernels (:class:`~hysquant_rl.deploy.runtime_graph.RuntimeGraphs`), and
    ``boundary_ops`` the node types that are int8/float boundaries of their own (onnxruntime's QuantizeLinear and
    DequantizeLinear; OpenVINO fuses its into the neighbouring kernels and runs a FakeQuantize before an int8 unit)."""

    name: str
    session: Callable[[str | os.PathLike | bytes, int], Any]
    profile_nodes: Callable[[bytes, dict[str, np.ndarray], int, int], dict[str, tuple[str, float]]]
    boundary_ops: tuple[str, ...]

    def version(self) -> str:
        """``<runtime> <version> CPU`` (a one-line error naming the fix when it is not installed)."""
        return runtime_version(self.name)


def _onnxruntime() -> Runtime:
    from hysquant_rl.deploy import ort

    return Runtime("onnxruntime", ort.session, ort.profile_nodes, ("QuantizeLinear", "DequantizeLinear"))


def _openvino() -> Runtime:
    from hysquant_rl.deploy import openvino

    return Runtime("openvino", openvino.session, openvino.profile_nodes, ())


_REGISTRY: dict[str, Callable[[], Runtime]] = {"onnxruntime": _onnxruntime, "openvino": _openvino}
assert set(_REGISTRY) == set(RUNTIMES)


def get(name: str) -> Runtime:
    """The runtime named ``name`` (``hardware.runtime``); a one-line error naming the known ones, or the install
    command when it is known but not installed."""
    if name not in _REGISTRY:
        raise HySquantError(f"unknown runtime {name!r}: known runtimes are {', '.join(_REGISTRY)}")
    runtime = _REGISTRY[name]()
    runtime.version()
    return runtime
