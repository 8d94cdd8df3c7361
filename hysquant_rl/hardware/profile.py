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
* ``kernel_overhead_s``: the fixed time every kernel costs on top of its roofline (launch and framework
  overhead), in seconds; the cost model counts the kernels of each unit, of its Q/DQ boundary and of the rest of
  the model (activations, residual adds: :func:`hysquant_rl.inventory.other_ops`).
* ``view_overhead_s``: the fixed time of each view or layout change (reshape, transpose) of the model, in seconds:
  0 where views are free (GPU runtimes), a node of its own with its shape arithmetic on onnxruntime.
* ``qdq_kernels``: the kernels each quantized activation's boundary runs on its own (``QuantizeLinear`` then
  ``DequantizeLinear``: 2 on a runtime that executes the QDQ graph's nodes, as onnxruntime's CPU provider does
  around a float convolution); 0 where the (re)quantization is fused into the producing kernel's epilogue (the
  integer GPU pipelines the GPU profiles describe). Each such kernel moves the tensor once in the float precision
  and once at ``a`` bits; ``qdq_elements_per_s``, where given, bounds how fast one such kernel converts elements
  (on a CPU it is below what the bandwidth allows).
* ``dequantized_weight_speed``: on a runtime that executes Q/DQ nodes, a unit whose weight is quantized but which
  computes in float (no integer kernel for its op or its float activations) gets its weight from a
  ``DequantizeLinear`` on each run; its float kernel then runs at this fraction of the float peak (onnxruntime cannot
  pre-pack such a weight into its blocked convolution layout). 1 elsewhere.
* ``compute_efficiency``: the fraction of ``peak_ops`` the model's kernels reach (1: the plain roofline).
* ``integer_ops``: the unit ops (``conv2d``, ``linear``, ``matmul``) that have integer kernels; a unit of another
  op computes in ``float_precision`` whatever its bits, is simulation-only unless FP32, and (when the runtime runs
  Q/DQ nodes) dequantizes its weight at run time.
* ``measured_on``: where a measured profile's constants come from (``cpu``: the machine
  ``benchmarks/cpu_profile.py`` ran on); every run that models latency with them says so.
* ``runtime``: the runtime that executes a deployed model on this device (a plug-in of ``hysquant_rl/deploy/`` with
  its ``conf/runtime/<name>.yaml``: :func:`known_runtimes`; ``onnxruntime`` on ``cpu``), or null where none is built in
  (the GPU profiles): with a runtime, ``search.space=auto`` searches its executable choices, and ``backend=<runtime>``
  is allowed. ``backend=<runtime>`` on a CPU profile makes that runtime the runtime (its choices, its per-unit
  latency, its timing).
* ``executable``: the (w, a) pairs each unit kind runs as integer kernels, ``{default: [W8A8], layernorm-in: []}``
  (FP32 is always a choice besides): the runtime's, from its ``conf/runtime/`` file; a profile without a runtime
  may give its own, else they are derived from the deployable bit-widths and ``integer_ops``.
* ``batch_size`` (images per inference; 1 is the edge case) and ``backend``: ``modelled`` (this roofline),
  ``measured`` (isolated kernels on the local CUDA GPU), or a runtime's name (the exported model timed by that runtime
  on this CPU, with the ``timing`` settings).

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

MODEL_BACKENDS = ("modelled", "measured")  # the roofline, or kernels timed on a local CUDA GPU; any other backend is
# a runtime: a plug-in of hysquant_rl/deploy/ described by conf/runtime/<name>.yaml (known_runtimes())
UNIT_OPS = ("conv2d", "linear", "matmul")
_KIND_OPS = {"conv": "conv2d", "depthwise": "conv2d", "pointwise": "conv2d", "attention-qk": "matmul"}
_KIND_OPS |= {"attention-pv": "matmul", "layernorm-in": "layernorm"}  # every other kind is a Linear
_PRECISION = re.compile(r"^(fp32|fp16|bf16|int(\d+))$")
_FLOAT_BITS = {"fp32": 32, "fp16": 16, "bf16": 16}


@dataclass(frozen=True)
class Timing:
    """How a runtime backend (``onnxruntime``, ``openvino``) times a policy's graph: ``threads`` threads, ``warmup``
    untimed runs, the median of ``repeats`` timed runs; a timing whose coefficient of variation (stdev / mean) exceeds
    ``max_cv`` (another process is using the CPU) is timed again, up to ``attempts`` times in all, after pauses of
    ``pause_s`` seconds doubling each time (:mod:`hysquant_rl.deploy.timing`)."""

    threads: int = 1
    warmup: int = 10
    repeats: int = 30
    max_cv: float = 0.25
    attempts: int = 4
    pause_s: float = 1.0


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
    kernel_overhead_s: float = 0.0  # fixed time per kernel (launch + framework) [s]
    view_overhead_s: float = 0.0  # fixed time per view / layout change of the model [s]
    dequantized_weight_speed: float = 1.0  # float kernels on run-time dequantized weights, x float peak
    compute_efficiency: float = 1.0  # fraction of peak_ops a model's kernels reach
    qdq_elements_per_s: float | None = None  # elements one Q/DQ kernel converts per second; None: memory-bound
    qdq_kernels: int = 0  # kernels each quantized activation's Q/DQ boundary runs on its own
    integer_ops: tuple[str, ...] = UNIT_OPS  # unit ops with integer kernels
    timing: Timing = Timing()  # runtime backends only
    runtime: str | None = None  # what executes a deployed model (known_runtimes()), None: no runtime built in
    measured_on: str | None = None  # where the constants were measured (a CPU profile), None: cited sources
    executable_pairs: dict[str, tuple[tuple[int, int], ...]] | None = None  # kind (or "default") -> integer pairs
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

    def executable(self, kind: str) -> tuple[tuple[int, int], ...]:
        """The integer (w, a) pairs a unit of ``kind`` runs as real kernels on this device (FP32, always a choice, is
        not listed): the profile's ``executable`` entry for the kind (or its ``default``), else every deployable pair
        of an op in ``integer_ops``; an activation-only unit's pairs are (a, a)."""
        if self.executable_pairs is not None:
            return self.executable_pairs.get(kind, self.executable_pairs.get("default", ()))
        op = _KIND_OPS.get(kind, "linear")
        activations = [a for a in self.deployable_activation_bits if a != FP32_BITS]
        if op == "layernorm":  # moves a-bit activations wherever the device does
            return tuple((a, a) for a in activations)
        if op not in self.integer_ops:
            return ()
        if op == "matmul":  # activation x activation
            return tuple((a, a) for a in activations)
        return tuple((w, a) for w in self.deployable_weight_bits for a in self.deployable_activation_bits)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("integer_precisions")
        if self.executable_pairs is not None:
            d["executable_pairs"] = {k: [list(p) for p in v] for k, v in self.executable_pairs.items()}
        d["deployable_weight_bits"] = list(self.deployable_weight_bits)
        d["deployable_activation_bits"] = list(self.deployable_activation_bits)
        d["integer_ops"] = list(self.integer_ops)
        return d


def runtime_version(runtime: str) -> str:
    """``<runtime> <version> CPU`` of a runtime of :func:`known_runtimes`, read from its package's metadata without
    importing it (raises :class:`HySquantError` naming the install command of its ``conf/runtime/`` file when it is
    not installed): the install probe every runtime plug-in answers with."""
    from importlib import metadata, util

    conf = runtime_conf(runtime)
    package = str(conf.get("package", runtime))
    try:
        found = util.find_spec(package) is not None
        version = metadata.version(package) if found else None
    except (ImportError, ValueError, metadata.PackageNotFoundError):
        found, version = False, None
    if not found or version is None:
        raise HySquantError(
            f"hardware.runtime={runtime} needs {package}, which is not installed: {conf.get('install', 'install it')}"
        )
    return f"{runtime} {version.split('-')[0].split('+')[0]} CPU"


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


def _conf_files(group: str) -> dict[str, Any]:
    folder = _conf_dir().joinpath(group)
    if not folder.is_dir():
        return {}
    return {f.name[: -len(".yaml")]: f for f in folder.iterdir() if f.name.endswith(".yaml")}


def _hardware_files() -> dict[str, Any]:
    return _conf_files("hardware")


def known_profiles() -> list[str]:
    """Names of the device profiles in ``conf/hardware/`` (the file names without ``.yaml``), sorted."""
    return sorted(_hardware_files())


def known_runtimes() -> list[str]:
    """Names of the runtimes in ``conf/runtime/`` (one file per runtime plug-in of ``hysquant_rl/deploy/``), sorted."""
    return sorted(_conf_files("runtime"))


def backends() -> tuple[str, ...]:
    """Every ``hardware.backend``: the models, then the runtimes."""
    return (*MODEL_BACKENDS, *known_runtimes())


def runtime_executable(name: str) -> dict[str, Any]:
    """A runtime's ``executable`` choices on this CPU: its conf file's ``executable``, with ``without_vnni`` over them
    on a CPU without an int8 dot product (:func:`hysquant_rl.machine.has_vnni`), where some int8 kernels saturate or do
    not fuse."""
    from hysquant_rl import machine

    conf = runtime_conf(name)
    choices = dict(conf.get("executable") or {})
    if not machine.has_vnni():
        choices.update(conf.get("without_vnni") or {})
    return choices


def runtime_conf(name: str) -> dict[str, Any]:
    """The ``conf/runtime/<name>.yaml`` of a runtime plug-in: ``module`` (its plug-in), ``package`` and ``install``
    (its install probe), ``executable`` (its choices per unit kind; ``without_vnni``: those that differ on a CPU
    without VNNI)."""
    import yaml

    files = _conf_files("runtime")
    if name not in files:
        raise HySquantError(f"unknown runtime {name!r}: known runtimes are {', '.join(sorted(files)) or 'none'}")
    data = yaml.safe_load(files[name].read_text())
    if not isinstance(data, dict):
        raise HySquantError(f"conf/runtime/{name}.yaml is not a mapping: reinstall hysquant-rl")
    return data


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
    allowed = {f.name for f in fields(DeviceProfile) if f.init} | {"executable"}
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
    runtimes = known_runtimes()
    if backend not in backends():
        raise HySquantError(f"{where}: backend {backend!r} is not one of {', '.join(backends())}")
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

    overheads = {key: data.get(key, 0.0) for key in ("kernel_overhead_s", "view_overhead_s")}
    for key, value in overheads.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise HySquantError(f"{where}: {key} must be a number of seconds >= 0, got {value!r}")
    fractions = {key: data.get(key, 1.0) for key in ("dequantized_weight_speed", "compute_efficiency")}
    for key, value in fractions.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
            raise HySquantError(f"{where}: {key} must be in (0, 1], got {value!r}")
    rate = data.get("qdq_elements_per_s")
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float)) or rate <= 0):
        raise HySquantError(f"{where}: qdq_elements_per_s must be a positive number or null, got {rate!r}")
    qdq = data.get("qdq_kernels", 0)
    if isinstance(qdq, bool) or not isinstance(qdq, int) or qdq < 0:
        raise HySquantError(f"{where}: qdq_kernels must be an integer >= 0, got {qdq!r}")
    ops = data.get("integer_ops", list(UNIT_OPS))
    if not isinstance(ops, (list, tuple)) or any(o not in UNIT_OPS for o in ops):
        raise HySquantError(f"{where}: integer_ops {ops!r} must list some of {', '.join(UNIT_OPS)}")
    runtime = data.get("runtime")
    if runtime is not None and runtime not in runtimes:
        raise HySquantError(f"{where}: runtime {runtime!r} is not one of {', '.join(runtimes)} (or null)")
    if backend in runtimes:
        if runtime is None:
            raise HySquantError(
                f"{where}: backend {backend} times this machine's CPU, but the profile describes no runtime: use"
                f" hardware=cpu hardware.backend={backend}, or hardware.backend=modelled"
            )
        runtime = backend  # a CPU profile timed on a runtime searches that runtime's choices
    if runtime is not None:  # a runtime that is not installed fails here, at the app boundary, before any work
        runtime_version(runtime)

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
        kernel_overhead_s=float(overheads["kernel_overhead_s"]),
        view_overhead_s=float(overheads["view_overhead_s"]),
        qdq_kernels=qdq,
        dequantized_weight_speed=float(fractions["dequantized_weight_speed"]),
        compute_efficiency=float(fractions["compute_efficiency"]),
        qdq_elements_per_s=None if rate is None else float(rate),
        integer_ops=tuple(ops),
        timing=_timing(data.get("timing"), where),
        runtime=runtime,
        measured_on=None if data.get("measured_on") is None else str(data["measured_on"]),
        executable_pairs=_executable(
            runtime_executable(runtime)
            if runtime is not None
            else data.get("executable", data.get("executable_pairs")),
            where if runtime is None else f"conf/runtime/{runtime}.yaml",
        ),
    )


def _executable(raw: Any, where: str) -> dict[str, tuple[tuple[int, int], ...]] | None:
    """``executable`` (a runtime's, from its ``conf/runtime/`` file): {kind or ``default``: [pairs as ``W8A8`` or
    [8, 8]]} -> kind -> integer (w, a) pairs; None: derived from the profile's deployable bit-widths."""
    from hysquant_rl.bits import parse_uniform
    from hysquant_rl.units import KINDS

    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise HySquantError(f"{where}: executable must map unit kinds (or default) to lists of pairs such as [W8A8]")
    out = {}
    for kind, pairs in raw.items():
        if kind != "default" and kind not in KINDS:
            raise HySquantError(
                f"{where}: executable names unknown unit kind {kind!r}: use default or {', '.join(KINDS)}"
            )
        parsed = []
        for pair in pairs or []:
            wa = parse_uniform(pair) if isinstance(pair, str) else tuple(pair) if isinstance(pair, list) else None
            if wa is None or len(wa) != 2 or FP32_BITS in wa or not all(MIN_BITS <= int(b) <= MAX_BITS for b in wa):
                raise HySquantError(f"{where}: executable.{kind} holds {pair!r}; list integer pairs such as W8A8")
            parsed.append((int(wa[0]), int(wa[1])))
        out[str(kind)] = tuple(parsed)
    return out


def _timing(raw: Any, where: str) -> Timing:
    if raw is None:
        return Timing()
    if not isinstance(raw, Mapping):
        raise HySquantError(f"{where}: timing must be a mapping of {', '.join(f.name for f in fields(Timing))}")
    unknown = sorted(set(raw) - {f.name for f in fields(Timing)})
    if unknown:
        raise HySquantError(f"{where}: unknown timing field(s) {', '.join(unknown)}")
    t = Timing(**raw)
    counts = {"threads": t.threads, "warmup": t.warmup, "repeats": t.repeats, "attempts": t.attempts}
    for key, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "warmup" else 1):
            raise HySquantError(f"{where}: timing.{key} must be a positive integer, got {value!r}")
    if t.repeats < 30:
        raise HySquantError(f"{where}: timing.repeats is {t.repeats}; a median needs at least 30 runs")
    # NaN compares false with everything: "cv > max_cv" would never trip, switching the steadiness check off
    if isinstance(t.max_cv, bool) or not isinstance(t.max_cv, (int, float)) or not 0 < t.max_cv < float("inf"):
        raise HySquantError(f"{where}: timing.max_cv must be a positive number, not NaN or infinite, got {t.max_cv!r}")
    if isinstance(t.pause_s, bool) or not isinstance(t.pause_s, (int, float)) or not 0 <= t.pause_s < 3600:
        raise HySquantError(f"{where}: timing.pause_s must be a number of seconds in [0, 3600), got {t.pause_s!r}")
    return t
