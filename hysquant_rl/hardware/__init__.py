"""Device profiles and the cost model: latency, energy, size and BitOps of a policy on a device.

``profile``: the ``conf/hardware/`` YAML files as :class:`DeviceProfile`. ``cost``: the roofline
:class:`CostModel` (backend ``modelled``). ``measured``: :class:`~hysquant_rl.hardware.measured.MeasuredCostModel`,
the same interface with latency and energy measured on the local CUDA GPU (backend ``measured``; it imports
torch, so it is loaded only when a profile asks for it: pricing a policy never imports torch).
"""

from __future__ import annotations

from collections.abc import Sequence

from hysquant_rl.hardware.cost import BUDGET_UNITS, CostModel, LayerCost, PolicyCost
from hysquant_rl.hardware.profile import DeviceProfile, known_profiles, load_profile
from hysquant_rl.units import AttentionMatmul, LayerInfo


def make_cost_model(
    layers: Sequence[LayerInfo],
    matmuls: Sequence[AttentionMatmul],
    profile: DeviceProfile,
    batch_size: int | None = None,
) -> CostModel:
    """The cost model the profile's ``backend`` names: :class:`CostModel` (``modelled``) or
    :class:`MeasuredCostModel` (``measured``, raises :class:`HySquantError` without CUDA)."""
    if profile.backend == "measured":
        from hysquant_rl.hardware.measured import MeasuredCostModel

        return MeasuredCostModel(layers, matmuls, profile, batch_size)
    return CostModel(layers, matmuls, profile, batch_size)


__all__ = [
    "BUDGET_UNITS",
    "CostModel",
    "DeviceProfile",
    "LayerCost",
    "PolicyCost",
    "known_profiles",
    "load_profile",
    "make_cost_model",
]
