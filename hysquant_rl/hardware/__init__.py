"""Device profiles and the cost model: latency, energy, size and BitOps of a policy on a device.

``profile``: the ``conf/hardware/`` YAML files as :class:`DeviceProfile`. ``cost``: the roofline
:class:`CostModel` (backend ``modelled``), torch-free: pricing a policy never loads a framework. What measures a
policy on real hardware (onnxruntime on this CPU, kernels on a CUDA GPU, per-unit latency tables measured on the
runtime) is :mod:`hysquant_rl.deploy`'s; nothing here imports it.
"""

from __future__ import annotations

from hysquant_rl.hardware.cost import CostModel, PolicyCost, UnitCost
from hysquant_rl.hardware.profile import DeviceProfile, known_profiles, load_profile

__all__ = [
    "CostModel",
    "DeviceProfile",
    "UnitCost",
    "PolicyCost",
    "known_profiles",
    "load_profile",
]
