"""Device profiles and the cost model: latency, energy, size and BitOps of a policy on a device.

``profile``: the ``conf/hardware/`` YAML files as :class:`DeviceProfile`. ``cost``: the roofline
:class:`CostModel` (backend ``modelled``). ``measured``: :class:`~hysquant_rl.hardware.measured.MeasuredCostModel`,
the same interface with latency and energy measured on the local CUDA GPU (backend ``measured``; it imports
torch, so it is loaded only when a profile asks for it: pricing a policy never imports torch). ``onnx_backend``:
:class:`~hysquant_rl.hardware.onnx_backend.OnnxRuntimeCheck` (backend ``onnxruntime``), a policy's exported graph
timed by onnxruntime on this CPU; it needs the calibrated quantizer, so the search loop builds it
(:func:`make_check`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hysquant_rl.hardware.cost import BUDGET_UNITS, CostModel, LayerCost, PolicyCost
from hysquant_rl.hardware.profile import DeviceProfile, known_profiles, load_profile
from hysquant_rl.units import AttentionMatmul, LayerInfo, OtherOps


def make_cost_model(
    layers: Sequence[LayerInfo],
    matmuls: Sequence[AttentionMatmul],
    profile: DeviceProfile,
    batch_size: int | None = None,
    other: OtherOps | None = None,
) -> CostModel:
    """The cost model the profile's ``backend`` names: :class:`CostModel` (``modelled``) or
    :class:`MeasuredCostModel` (``measured``, raises :class:`HySquantError` without CUDA); ``onnxruntime`` prices
    with the roofline here (its measurement is the search loop's check)."""
    if profile.backend == "measured":
        from hysquant_rl.hardware.measured import MeasuredCostModel

        return MeasuredCostModel(layers, matmuls, profile, batch_size, other=other)
    return CostModel(layers, matmuls, profile, batch_size, other)


def make_check(pipe: Any) -> Any:
    """What a policy is checked on, for a :class:`~hysquant_rl.pipeline.Pipeline`: its profile's backend.
    ``modelled``: the pipeline's own roofline; ``measured``: kernels timed on the local CUDA GPU; ``onnxruntime``:
    the policy's exported graph timed on this CPU (:class:`~hysquant_rl.hardware.onnx_backend.OnnxRuntimeCheck`,
    which needs the pipeline's calibrated quantizer). Each has ``policy_cost(bits)``, ``backend`` and ``device``."""
    profile = pipe.cost.profile
    if profile.backend == pipe.cost.backend:
        return pipe.cost
    if profile.backend == "onnxruntime":
        from hysquant_rl.hardware.onnx_backend import OnnxRuntimeCheck

        return OnnxRuntimeCheck(pipe.qmodel, pipe.policy, pipe.data.input_shape, pipe.cost, profile.timing)
    return make_cost_model(pipe.layers, pipe.matmuls, profile, other=pipe.cost.other)


__all__ = [
    "BUDGET_UNITS",
    "CostModel",
    "DeviceProfile",
    "LayerCost",
    "PolicyCost",
    "known_profiles",
    "load_profile",
    "make_check",
    "make_cost_model",
]
