"""The shared part of the runtimes that execute an ONNX graph (onnxruntime, OpenVINO): their layouts are
:class:`~hysquant_rl.deploy.runtime_graph.RuntimeGraphs` (a QDQ layout named after the runtime), and their per-unit
latency comes from a per-node profile of the FP32 and int8 graphs (:func:`hysquant_rl.deploy.unit_latency.measure`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from hysquant_rl import machine
from hysquant_rl.deploy.runtime_graph import RuntimeGraphs
from hysquant_rl.deploy.runtimes import Layout, Runtime
from hysquant_rl.deploy.unit_latency import UnitLatency, measure

if TYPE_CHECKING:
    pass


class GraphRuntime(Runtime):
    """A runtime that executes an ONNX graph in a QDQ layout of its own (:mod:`hysquant_rl.deploy.runtime_graph`,
    the layout named after the runtime) and profiles it node by node (:meth:`profile_nodes`)."""

    def layout(self, model, units, input_shape, calib_images, quant, batch_size: int = 1) -> Layout:
        return RuntimeGraphs(
            model, units, input_shape, calib_images, quant.calibrator, quant.percentile, self.name, self.int8_weights()
        )

    def int8_weights(self) -> bool:
        """Whether the layout's weights use all 8 bits: on a CPU without VNNI, x86 u8 x s8 kernels saturate, and the
        layout uses 7-bit weights as the runtime's own quantizer does (:func:`hysquant_rl.machine.has_vnni`)."""
        return machine.has_vnni()

    def profile_nodes(
        self, model: bytes, feed: dict[str, np.ndarray], threads: int, runs: int
    ) -> dict[str, tuple[str, float]]:
        """(op type, median seconds) of each compiled node of ``model`` over ``runs`` profiled runs."""
        raise NotImplementedError

    def unit_latency(self, layout, int8, batch_size, timing) -> UnitLatency:
        return measure(layout, int8, batch_size, timing, self)
