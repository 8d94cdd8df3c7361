"""What leaves the search for a runtime: the exports, and one plug-in per runtime.

* :mod:`~hysquant_rl.deploy.runtimes`: the :class:`~hysquant_rl.deploy.runtimes.Runtime` interface and the registry
  of runtime plug-ins, one module each with its ``conf/runtime/<name>.yaml``: onnxruntime (:mod:`~.ort`), OpenVINO
  (:mod:`~.openvino`), ExecuTorch with XNNPACK (:mod:`~.executorch`); :mod:`hysquant_rl.machine`: the CPU a
  measurement was made on and what it executes (VNNI, bf16).
* :mod:`~hysquant_rl.deploy.runtime_graph`: the ONNX runtime layouts (onnxruntime's own quantizer's, NNCF's
  placement for OpenVINO), a policy's graph derived in milliseconds; :mod:`~.runtime_eval` evaluates a policy's
  accuracy on its runtime; :mod:`~.timing` times a policy's file; :mod:`~.unit_latency` measures each unit's latency
  on the runtime, cached per machine.
* :mod:`~hysquant_rl.deploy.export`: the files a user takes away, written as a set; :mod:`~.checkpoints` and
  :mod:`~.simulated_onnx`: the paper's simulated files (PyTorch, and its QDQ graph for any bit-widths);
  :mod:`~.cuda`: kernels timed on a local CUDA GPU (backend ``measured``).

Pricing (:mod:`hysquant_rl.hardware`) never imports this package: a cost model is numbers, a runtime is here. Nothing
above this package names a runtime: the pipeline asks :func:`~hysquant_rl.deploy.runtimes.get` for the one the
settings name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from hysquant_rl.deploy.timing import Measurement
    from hysquant_rl.hardware.cost import PolicyCost


@runtime_checkable
class Check(Protocol):
    """What a found policy is checked on: ``policy_cost(bits)`` prices a policy (L, 2) (latency measured where
    ``measured``), ``backend`` and ``device`` say on what."""

    backend: str
    device: str

    def policy_cost(self, bits: np.ndarray) -> PolicyCost: ...


@runtime_checkable
class TimedCheck(Check, Protocol):
    """A check that times policies on a runtime: :meth:`measure` gives the timing itself (median, CV, runs)."""

    batch_size: int

    def measure(self, bits: np.ndarray) -> Measurement: ...


__all__ = ["Check", "TimedCheck"]
