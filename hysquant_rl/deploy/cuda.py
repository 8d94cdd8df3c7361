"""Measured backend: time each layer's real kernel on the local CUDA GPU and read board energy from NVML.

What is timed, per layer, at the cost model's batch size, on random inputs of the traced shapes:

* the float kernel, at the profile's ``float_precision`` (fp16): ``F.conv2d`` (channels-last input, the layer's
  stride and groups, padding inferred from the traced input/output sizes, dilation 1) or ``F.linear`` (the
  layer's tokens as rows). It prices every (w, a) pair whose compute precision is the float one, and every
  pair of a convolution: PyTorch exposes no integer convolution on CUDA.
* the int8 kernel of a Linear: ``torch._int_mm`` (cuBLASLt int8 x int8 -> int32 GEMM, no requantization
  epilogue), rows padded to at least 17 and K, N to multiples of 8 as the kernel requires. It prices every
  pair with an integer compute precision, int4 too: PyTorch has no int4 x int4 GEMM, so W4A4 on Ampere is
  timed as int8. Where the int8 call fails, the float kernel is used and :attr:`MeasuredCostModel.timed`
  says why.
* each attention module whose matmuls are not units: ``softmax(q k^T * scale) v`` in the float dtype, shaped
  (batch * sequences, heads, tokens, head_dim).

Activation-only units (``quant.scope=hybrid``: attention operands, LayerNorm inputs) are not timed: their
cost stays the roofline's, and :attr:`MeasuredCostModel.timed` says so per unit.

So the measured table tells which kernels PyTorch can run here: sub-byte traffic and the consumer's output
precision are not measured (``consumer_quantized`` does not change what is timed). Latency: CUDA events around
single calls, median over ``repeats`` after ``warmup`` calls. Energy: NVML's total-energy counter (mJ) over a
window of at least ``energy_window_s`` of back-to-back calls, divided by the calls: board energy, static power
and launch gaps included. Without NVML (``pynvml`` from the ``nvidia-ml-py`` package missing, or a GPU without
the counter) energy stays modelled and :attr:`MeasuredCostModel.energy_source` says so. ``ops``,
``bytes_moved``, ``compute_s``, ``memory_s`` and ``size_bytes`` of every :class:`LayerCost` stay modelled.

Importing this module needs neither CUDA nor pynvml; building a :class:`MeasuredCostModel` needs CUDA.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hysquant_rl.errors import HySquantError
from hysquant_rl.hardware.cost import CostModel
from hysquant_rl.hardware.profile import DeviceProfile
from hysquant_rl.units import AttentionMatmul, OtherOps, UnitInfo

NO_CUDA = "hardware.backend=measured needs a CUDA GPU; use hardware.backend=modelled"
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
_CONV_KINDS = ("conv", "depthwise", "pointwise")

Kernel = Callable[[], Any]


def is_linear(unit: UnitInfo) -> bool:
    """Whether an inventoried layer is a Linear (else a Conv2d), from its kind or, for a classifier or an
    unnamed layer, from its shapes: a Linear's last input dim is in_features and its rows are the tokens."""
    if unit.kind in _CONV_KINDS:
        return False
    if unit.kind.startswith(("attention", "mlp")):
        return True
    return (
        unit.input_shape[-1] == unit.in_channels
        and unit.output_shape[-1] == unit.out_channels
        and unit.tokens * unit.in_channels == unit.in_elems
    )


def _padding(size_in: int, size_out: int, kernel: int, stride: int, name: str) -> int:
    pad = max(0, ((size_out - 1) * stride + kernel - size_in + 1) // 2)
    if (size_in + 2 * pad - kernel) // stride + 1 != size_out:
        raise HySquantError(f"cannot infer the padding of {name} from its traced shapes (dilated or asymmetric?)")
    return pad


def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


def float_kernel(
    unit: UnitInfo, batch: int, dtype: torch.dtype, device: torch.device, gen: torch.Generator
) -> tuple[Kernel, str]:
    """The layer as a float kernel on ``device``: (callable, description of what it runs)."""
    bias = unit.params > unit.weight_elems
    if is_linear(unit):
        k, n = unit.in_channels, unit.out_channels
        m = batch * unit.in_elems // k
        x = torch.randn(m, k, device=device, dtype=dtype, generator=gen)
        w = torch.randn(n, k, device=device, dtype=dtype, generator=gen)
        b = torch.randn(n, device=device, dtype=dtype, generator=gen) if bias else None
        return (lambda: F.linear(x, w, b)), f"F.linear {dtype} ({m}x{k}) @ ({k}x{n})"
    c, h, wd = unit.input_shape
    _, ho, wo = unit.output_shape
    pad = (
        _padding(h, ho, unit.kernel[0], unit.stride[0], unit.name),
        _padding(wd, wo, unit.kernel[1], unit.stride[1], unit.name),
    )
    x = torch.randn(batch, c, h, wd, device=device, dtype=dtype, generator=gen)
    x = x.contiguous(memory_format=torch.channels_last)  # the tensor-core layout of cuDNN
    w = torch.randn(unit.out_channels, c // unit.groups, *unit.kernel, device=device, dtype=dtype, generator=gen)
    w = w.contiguous(memory_format=torch.channels_last)
    b = torch.randn(unit.out_channels, device=device, dtype=dtype, generator=gen) if bias else None
    fn = lambda: F.conv2d(x, w, b, stride=unit.stride, padding=pad, groups=unit.groups)  # noqa: E731
    return fn, f"F.conv2d {dtype} channels_last {tuple(x.shape)} k{unit.kernel} s{unit.stride} g{unit.groups}"


def int8_kernel(unit: UnitInfo, batch: int, device: torch.device, gen: torch.Generator) -> tuple[Kernel | None, str]:
    """A Linear layer as ``torch._int_mm`` on ``device``: (callable, description), or (None, why not)."""
    if not is_linear(unit):
        return None, "convolution: PyTorch has no int8 convolution on CUDA"
    if not hasattr(torch, "_int_mm"):
        return None, "torch._int_mm is not available in this PyTorch"
    k, n = unit.in_channels, unit.out_channels
    m = batch * unit.in_elems // k
    mp, kp, np_ = max(m, 17), _round_up(k, 8), _round_up(n, 8)  # _int_mm: rows > 16, K and N multiples of 8
    x = torch.randint(-128, 128, (mp, kp), device=device, dtype=torch.int8, generator=gen)
    w = torch.randint(-128, 128, (np_, kp), device=device, dtype=torch.int8, generator=gen)
    fn = lambda: torch._int_mm(x, w.t())  # noqa: E731  (column-major mat2, as cuBLASLt wants it)
    try:
        fn()
        torch.cuda.synchronize(device)
    except RuntimeError as e:
        return None, f"torch._int_mm failed: {str(e).splitlines()[0]}"
    padded = "" if (mp, kp, np_) == (m, k, n) else f", padded from ({m}x{k}) @ ({k}x{n})"
    return fn, f"torch._int_mm int8 ({mp}x{kp}) @ ({kp}x{np_}) -> int32{padded}"


def attention_kernel(
    m: AttentionMatmul, batch: int, dtype: torch.dtype, device: torch.device, gen: torch.Generator
) -> tuple[Kernel, str]:
    """softmax(q k^T * scale) v of one attention module: (callable, description)."""
    shape = (batch * m.sequences, m.heads, m.tokens, m.head_dim)
    q, k, v = (torch.randn(shape, device=device, dtype=dtype, generator=gen) for _ in range(3))
    scale = m.head_dim**-0.5
    fn = lambda: torch.softmax((q @ k.transpose(-2, -1)) * scale, dim=-1) @ v  # noqa: E731
    return fn, f"softmax(q k^T) v {dtype} {shape}"


def median_latency(fn: Kernel, warmup: int, repeats: int) -> float:
    """Median seconds of one call of ``fn`` (CUDA events), after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) for start, end in events) / 1e3  # ms -> s


class EnergyMeter:
    """NVML's total-energy counter of one GPU (``nvmlDeviceGetTotalEnergyConsumption``, mJ since driver load).

    ``available`` is False (and ``reason`` says why) without pynvml or on a GPU without the counter.
    """

    def __init__(self, device: torch.device) -> None:
        self.available, self.reason = False, ""
        try:
            import pynvml
        except ImportError:
            self.reason = "pynvml is not installed (pip install nvidia-ml-py)"
            return
        try:
            pynvml.nvmlInit()
            props = torch.cuda.get_device_properties(device)
            bus_id = f"{props.pci_domain_id:08X}:{props.pci_bus_id:02X}:{props.pci_device_id:02X}.0"
            try:  # CUDA and NVML may number GPUs differently; the PCI address is the same
                handle = pynvml.nvmlDeviceGetHandleByPciBusId(bus_id)
            except pynvml.NVMLError:
                handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
            pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        except pynvml.NVMLError as e:
            self.reason = f"NVML energy counter unavailable: {e}"
            return
        self._nvml, self._handle, self.available = pynvml, handle, True

    def joules(self) -> float:
        return self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) / 1e3

    def joules_per_call(self, fn: Kernel, window_s: float) -> float:
        """Board energy of one call [J]: back-to-back calls for at least ``window_s`` seconds, counter delta
        divided by the number of calls (the counter updates every few ms, so the window must be long)."""
        torch.cuda.synchronize()
        e0, t0, calls = self.joules(), time.perf_counter(), 0
        while True:
            fn()
            calls += 1
            if calls % 16 == 0 and time.perf_counter() - t0 >= window_s:
                break
        torch.cuda.synchronize()
        return (self.joules() - e0) / calls

    def close(self) -> None:
        if self.available:
            self._nvml.nvmlShutdown()


class MeasuredCostModel(CostModel):
    """:class:`CostModel` whose latency (and, with NVML, energy) tables are measured on the local CUDA GPU.

    Same interface; policy totals are summed by :class:`CostModel`. ``timed`` lists, per layer and per
    attention module, the kernels run and their median latency [s] and energy [J]; ``gpu_name`` names the GPU.
    Measuring takes about ``2 * energy_window_s`` per layer (float + int8 kernel) with NVML.
    """

    backend = "measured"

    def __init__(
        self,
        units: Sequence[UnitInfo],
        matmuls: Sequence[AttentionMatmul],
        profile: DeviceProfile,
        batch_size: int | None = None,
        *,
        other: OtherOps | None = None,
        warmup: int = 10,
        repeats: int = 50,
        energy_window_s: float = 0.25,
        seed: int = 0,
    ) -> None:
        if not torch.cuda.is_available():
            raise HySquantError(NO_CUDA)
        if warmup < 0 or repeats < 1 or energy_window_s <= 0:
            raise HySquantError("measured backend: warmup >= 0, repeats >= 1 and energy_window_s > 0 are required")
        self.warmup, self.repeats, self.energy_window_s, self.seed = warmup, repeats, energy_window_s, seed
        super().__init__(units, matmuls, profile, batch_size, other)

    def _measure(self, fn: Kernel, meter: EnergyMeter) -> tuple[float, float | None]:
        latency = median_latency(fn, self.warmup, self.repeats)
        energy = meter.joules_per_call(fn, self.energy_window_s) if meter.available else None
        return latency, energy

    @torch.inference_mode()
    def _price(self) -> None:
        super()._price()  # the modelled tables: energy stays modelled where NVML is missing
        device = torch.device("cuda", torch.cuda.current_device())
        dtype = _DTYPES[self.profile.float_precision]
        gen = torch.Generator(device=device).manual_seed(self.seed)
        batch = self.batch_size
        self.gpu_name = torch.cuda.get_device_name(device)
        meter = EnergyMeter(device)
        self.energy_source = "nvml" if meter.available else f"modelled ({meter.reason})"
        # (w, a) pairs whose compute precision is an integer one take the int8 kernel where there is one
        integer = np.array([[prec.startswith("int") for prec in row] for row in self._precision])[..., None]
        latency, energy = self._latency.copy(), self._energy.copy()
        self.timed: list[dict[str, Any]] = []
        try:
            for i, unit in enumerate(self.units):
                if not unit.weighted:  # attention operands and LayerNorm inputs: no isolated kernel timed yet
                    self.timed.append({"name": unit.name, "modelled": "activation-only unit: roofline cost"})
                    continue
                fl_fn, fl_desc = float_kernel(unit, batch, dtype, device, gen)
                t_float, e_float = self._measure(fl_fn, meter)
                record: dict[str, Any] = {
                    "name": unit.name,
                    "float": {"kernel": fl_desc, "latency_s": t_float, "energy_j": e_float},
                }
                int_fn, int_desc = int8_kernel(unit, batch, device, gen)
                t_int, e_int = t_float, e_float
                if int_fn is not None:
                    t_int, e_int = self._measure(int_fn, meter)
                    record["int8"] = {"kernel": int_desc, "latency_s": t_int, "energy_j": e_int}
                else:
                    record["int8"] = {"kernel": f"float kernel ({int_desc})"}
                self.timed.append(record)
                latency[i] = np.where(integer, t_int, t_float)
                if meter.available:
                    energy[i] = np.where(integer, e_int, e_float)
            fixed = []
            for m, modelled in zip(self.matmuls, self.fixed_items):
                fn, desc = attention_kernel(m, batch, dtype, device, gen)
                t, e = self._measure(fn, meter)
                self.timed.append({"name": m.name, "float": {"kernel": desc, "latency_s": t, "energy_j": e}})
                fixed.append(replace(modelled, latency_s=t, energy_j=modelled.energy_j if e is None else e))
        finally:
            meter.close()
        self._latency, self._energy, self.fixed_items = latency, energy, fixed
        self._sum_fixed()
