"""Device profiles: the Hydra config group ``conf/hardware/`` (one YAML file per device) as a dataclass.

A profile holds the numbers the cost model needs, each cited in its YAML file:

* ``peak_ops``: dense (no sparsity) peak throughput per precision, in ops/s, one MAC counted as 2 ops.
  Keys are ``fp32``, ``fp16``, ``bf16`` or ``int<b>`` (``int8``, ``int4``); a precision the chip has no
  tensor-core path for is left out or set to ``null``.
* ``memory_bandwidth`` in bytes/s, ``max_power_w`` (board power) and ``memory_power_w``, in watts.
* ``float_precision``: the precision an unquantized layer runs at (``fp16``: tensor cores, as deployed).
* ``deployable_weight_bits`` / ``deployable_activation_bits``: which bit-widths real integer kernels take
  on this device. A pair (w, a) is deployable when w is in the first list and a in the second, or when both
  are FP32 (the float model always runs). ``32`` in the activation list means weight-only kernels (integer
  weights, float activations) exist. Every other pair is simulation-only: it can be evaluated with fake
  quantization but has no kernel on this device.
* ``batch_size`` (images per inference; 1 is the edge case) and ``backend`` (``modelled`` or ``measured``).

The rules that read these lists (compute precision, deployability) live here, next to the data.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from hysquant_rl.bits import FP32_BITS, MAX_BITS, MIN_BITS
from hysquant_rl.errors import HySquantError

BACKENDS = ("modelled", "measured")
_PRECISION = re.compile(r"^(fp32|fp16|bf16|int(\d+))$")
_FLOAT_BITS = {"fp32": 32, "fp16": 16, "bf16": 16}


@dataclass(frozen=True)
class DeviceProfile:
    """One device. Units: ops/s, bytes/s, watts. See the module docstring for every field."""

    name: str
    peak_ops: dict[str, float]  # precision -> dense peak ops/s, only precisions the chip executes
    memory_bandwidth: float  # bytes/s
    max_power_w: float  # board power, W
    memory_power_w: float  # power of the memory system at full bandwidth, W
    deployable_weight_bits: tuple[int, ...]
    deployable_activation_bits: tuple[int, ...]  # 32: weight-only kernels (float activations) exist
    float_precision: str = "fp16"
    batch_size: int = 1
    backend: str = "modelled"
    # Integer precisions the chip executes, as (bits, name), narrowest first; derived from peak_ops.
    integer_precisions: tuple[tuple[int, str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ints = sorted((int(m.group(2)), p) for p in self.peak_ops if (m := _PRECISION.match(p)) and m.group(2))
        object.__setattr__(self, "integer_precisions", tuple(ints))

    @property
    def compute_power_w(self) -> float:
        """Power left for arithmetic, max board power minus memory power (paper eq. 9 without p_memory), W."""
        return self.max_power_w - self.memory_power_w

    @property
    def float_bits(self) -> int:
        """Bits per element an unquantized operand moves with (16 for fp16/bf16 compute, 32 for fp32)."""
        return _FLOAT_BITS[self.float_precision]

    def peak(self, precision: str) -> float:
        """Dense peak throughput of ``precision`` in ops/s."""
        try:
            return self.peak_ops[precision]
        except KeyError:
            raise HySquantError(f"device {self.name!r} has no {precision} peak throughput") from None

    def compute_precision(self, w_bits: int, a_bits: int) -> str:
        """The lowest precision this device executes that covers both operands.

        A layer with either operand at FP32 is not integer-quantized: it runs at ``float_precision``. Otherwise
        the narrowest integer precision with at least ``max(w_bits, a_bits)`` bits (W4A8 -> int8; W4A4 -> int4
        where the chip has int4, int8 where it has not). With no wide enough integer path: ``float_precision``.
        """
        if w_bits == FP32_BITS or a_bits == FP32_BITS:
            return self.float_precision
        need = max(w_bits, a_bits)
        for bits, name in self.integer_precisions:
            if bits >= need:
                return name
        return self.float_precision

    def is_deployable(self, w_bits: int, a_bits: int) -> bool:
        """True when (w_bits, a_bits) runs as real kernels on this device; False: simulation-only."""
        if w_bits == FP32_BITS and a_bits == FP32_BITS:
            return True
        return w_bits in self.deployable_weight_bits and a_bits in self.deployable_activation_bits

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("integer_precisions")
        d["deployable_weight_bits"] = list(self.deployable_weight_bits)
        d["deployable_activation_bits"] = list(self.deployable_activation_bits)
        return d


# -- the config group on disk --------------------------------------------------------------------------


def _conf_dir() -> Any:
    """The ``conf/`` tree: the installed ``hysquant_rl.conf`` package, else ``conf/`` beside the package."""
    from importlib import resources

    try:
        root = resources.files("hysquant_rl.conf")
        if root.joinpath("hardware").is_dir():
            return root
    except (ModuleNotFoundError, TypeError):
        pass
    import hysquant_rl

    return Path(hysquant_rl.__file__).resolve().parent.parent / "conf"


def _hardware_files() -> dict[str, Any]:
    folder = _conf_dir().joinpath("hardware")
    if not folder.is_dir():
        return {}
    return {f.name[: -len(".yaml")]: f for f in folder.iterdir() if f.name.endswith(".yaml")}


def known_profiles() -> list[str]:
    """Names of the device profiles in ``conf/hardware/`` (the file names without ``.yaml``), sorted."""
    return sorted(_hardware_files())


def _read_profile(name: str) -> dict[str, Any]:
    import yaml

    files = _hardware_files()
    if name not in files:
        raise HySquantError(
            f"unknown hardware profile {name!r}: known profiles are {', '.join(known_profiles()) or 'none'}"
        )
    data = yaml.safe_load(files[name].read_text())
    if not isinstance(data, dict):
        raise HySquantError(f"hardware profile {name!r} is not a YAML mapping")
    return data


# -- validation ----------------------------------------------------------------------------------------

_REQUIRED = (
    "name",
    "peak_ops",
    "memory_bandwidth",
    "max_power_w",
    "memory_power_w",
    "deployable_weight_bits",
    "deployable_activation_bits",
)


def _number(data: Mapping[str, Any], key: str, where: str) -> float:
    try:
        value = float(data[key])
    except (TypeError, ValueError):
        raise HySquantError(f"{where}: {key} must be a number, got {data[key]!r}") from None
    if not value > 0 and not (key == "memory_power_w" and value == 0):
        raise HySquantError(f"{where}: {key} must be positive, got {data[key]!r}")
    return value


def _bit_list(data: Mapping[str, Any], key: str, where: str) -> tuple[int, ...]:
    value = data[key]
    if value is None:
        return ()
    items = value if isinstance(value, (list, tuple)) else [value]
    out = []
    for b in items:
        if isinstance(b, bool) or not isinstance(b, int) or not (MIN_BITS <= b <= MAX_BITS or b == FP32_BITS):
            raise HySquantError(f"{where}: {key} holds {b!r}; use integers {MIN_BITS}..{MAX_BITS} or 32")
        out.append(b)
    return tuple(sorted(set(out)))


def load_profile(settings: Mapping[str, Any] | str) -> DeviceProfile:
    """Build a :class:`DeviceProfile` from the ``hardware`` settings (a mapping) or a profile name.

    A mapping that lacks some fields is completed from the known profile it names (so
    ``{"name": "a100", "batch_size": 64}`` is A100 at batch 64); a complete mapping may describe any device.
    Raises :class:`HySquantError` for an unknown profile name (listing the known ones) or a bad field.
    """
    data = {"name": settings} if isinstance(settings, str) else dict(settings)
    if any(k not in data for k in _REQUIRED):
        name = data.get("name")
        if not isinstance(name, str):
            raise HySquantError(
                f"hardware config needs a profile name: known profiles are {', '.join(known_profiles()) or 'none'}"
            )
        data = {**_read_profile(name), **data}

    where = f"hardware profile {data.get('name')!r}"
    allowed = {f.name for f in fields(DeviceProfile) if f.init}
    unknown = sorted(k for k in data if k not in allowed and not str(k).startswith("_"))
    if unknown:
        raise HySquantError(f"{where}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise HySquantError(f"{where}: missing field(s) {', '.join(missing)}")

    raw_peaks = data["peak_ops"]
    if not isinstance(raw_peaks, Mapping):
        raise HySquantError(f"{where}: peak_ops must map precisions (fp32, fp16, int8, int4, ...) to ops/s")
    peaks: dict[str, float] = {}
    for precision, value in raw_peaks.items():
        if not _PRECISION.match(str(precision)):
            raise HySquantError(f"{where}: unknown precision {precision!r} in peak_ops; use fp32, fp16, bf16, int<b>")
        if value is not None:  # null: the chip has no such path
            peaks[str(precision)] = _number(raw_peaks, precision, f"{where} peak_ops")

    float_precision = data.get("float_precision", "fp16")
    if float_precision not in _FLOAT_BITS or float_precision not in peaks:
        raise HySquantError(f"{where}: float_precision {float_precision!r} must be a float precision in peak_ops")
    backend = data.get("backend", "modelled")
    if backend not in BACKENDS:
        raise HySquantError(f"{where}: backend {backend!r} is not one of {', '.join(BACKENDS)}")
    batch = data.get("batch_size", 1)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise HySquantError(f"{where}: batch_size must be a positive integer, got {batch!r}")
    max_power = _number(data, "max_power_w", where)
    memory_power = _number(data, "memory_power_w", where)
    if memory_power >= max_power:
        raise HySquantError(f"{where}: memory_power_w ({memory_power}) must be below max_power_w ({max_power})")
    weight_bits = _bit_list(data, "deployable_weight_bits", where)
    if FP32_BITS in weight_bits:
        raise HySquantError(f"{where}: deployable_weight_bits lists integer weight widths only (FP32 always runs)")

    return DeviceProfile(
        name=str(data["name"]),
        peak_ops=peaks,
        memory_bandwidth=_number(data, "memory_bandwidth", where),
        max_power_w=max_power,
        memory_power_w=memory_power,
        deployable_weight_bits=weight_bits,
        deployable_activation_bits=_bit_list(data, "deployable_activation_bits", where),
        float_precision=float_precision,
        batch_size=batch,
        backend=backend,
    )
