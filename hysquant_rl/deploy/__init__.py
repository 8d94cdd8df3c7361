"""What leaves the search for a runtime, and the checks a found policy is measured by.

* :mod:`~hysquant_rl.deploy.checkpoints`: PyTorch files of a quantized model (fake-quant and integer weights) in the
  paper's simulation, which reload to the same logits.
* :mod:`~hysquant_rl.deploy.simulated_onnx`: the paper's quantization as an ONNX QDQ graph, for any bit-widths.
* :mod:`~hysquant_rl.deploy.runtime_graph`: the *runtime* layout, the graph a runtime executes as integer kernels
  (onnxruntime's own quantizer's layout, or NNCF's placement for OpenVINO), derived per policy in milliseconds;
  :mod:`~hysquant_rl.deploy.runtime_eval` evaluates a policy's accuracy on it.
* :mod:`~hysquant_rl.deploy.timing`: a policy's graph timed on this CPU (backends ``onnxruntime``, ``openvino``);
  :mod:`~hysquant_rl.deploy.unit_latency`: per-unit latency measured on the runtime, cached per machine;
  :mod:`~hysquant_rl.deploy.cuda`: kernels timed on a local CUDA GPU (backend ``measured``).
* :mod:`~hysquant_rl.deploy.runtimes`: the registry of runtimes; :mod:`~hysquant_rl.deploy.ort` (onnxruntime, and the
  identity of the machine a figure was measured on) and :mod:`~hysquant_rl.deploy.openvino` (OpenVINO's CPU plugin,
  and its own model files).

Pricing (:mod:`hysquant_rl.hardware`) never imports this package: a cost model is numbers, a runtime is here.
:func:`make_check` picks what a policy is checked on, for a pipeline: a :class:`Check`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from hysquant_rl.deploy.timing import Measurement
    from hysquant_rl.hardware.cost import PolicyCost
    from hysquant_rl.pipeline import Pipeline


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


def make_check(pipe: Pipeline) -> Check:
    """What a policy of ``pipe`` is checked on, by its profile's ``backend``: ``modelled``: the pipeline's own cost
    model; ``measured``: kernels timed on the local CUDA GPU (:class:`~hysquant_rl.deploy.cuda.MeasuredCostModel`);
    ``onnxruntime`` or ``openvino``: the policy's graph timed on this CPU by that runtime
    (:class:`~hysquant_rl.deploy.timing.RuntimeCheck`), in the runtime's layout in the executable space and in the
    paper's layout in the simulated one."""
    from hysquant_rl.hardware.profile import RUNTIMES

    profile = pipe.cost.profile
    if profile.backend == "measured":
        from hysquant_rl.deploy.cuda import MeasuredCostModel

        return MeasuredCostModel(pipe.layers, pipe.matmuls, profile, other=pipe.cost.other)
    if profile.backend not in RUNTIMES:
        return pipe.cost
    from hysquant_rl.deploy.runtimes import get
    from hysquant_rl.deploy.timing import RuntimeCheck

    space = "executable" if pipe.graphs is not None else "simulated"
    return RuntimeCheck(graph_of(pipe), pipe.data.input_shape, pipe.cost, profile.timing, space, get(profile.backend))


def graph_of(pipe: Pipeline) -> Callable[[np.ndarray], bytes]:
    """A policy (L, 2) of ``pipe`` -> its serialised ONNX graph, the file a user deploys: the runtime layout in the
    executable space, the paper's simulated layout otherwise."""
    if pipe.graphs is not None:
        graphs = pipe.graphs
        return lambda bits: graphs.graph(bits).SerializeToString()

    def simulated(bits: np.ndarray) -> bytes:
        from hysquant_rl.deploy.simulated_onnx import export_simulated

        policy = pipe.policy(bits)
        pipe.qmodel.apply_bits(policy.bits())
        with tempfile.TemporaryDirectory() as tmp:
            return Path(export_simulated(pipe.qmodel, policy, pipe.data.input_shape, tmp)).read_bytes()

    return simulated


__all__ = ["Check", "TimedCheck", "graph_of", "make_check"]
