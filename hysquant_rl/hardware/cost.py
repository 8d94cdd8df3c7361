"""Roofline cost model: latency, energy, size and BitOps of every layer at every (w_bits, a_bits).

Per layer ``l`` at weight bits ``w`` and input-activation bits ``a``, with ``B`` = batch size:

* compute precision ``prec = profile.compute_precision(w, a)``: the lowest precision the device executes that
  covers both operands; a layer with either operand at FP32 (32) is not integer-quantized and runs at the
  profile's ``float_precision`` (fp16 tensor cores).
* ``ops = 2 * MACs * B`` [op]
* ``bytes = W_l * t(w) / 8 + bias_l * 4  +  B * (in_l * t(a) / 8 + out_l * o)`` [byte], where ``t(b) = b`` for a
  quantized operand (sub-byte widths packed densely) and the float precision's width (16) for FP32; weights
  move once per batch, activations once per image; bias stays 32-bit; ``o`` is what the consumer (the next
  layer in forward order) reads: 1 byte (int8) when it quantizes its input activation, else 2 bytes (fp16);
  the last layer's output is fp16 logits.
* ``latency = max(ops / peak(prec), bytes / bandwidth) + serial + kernels * kernel_overhead_s`` [s]: the
  roofline, plus the memory time of the kernels that run on their own (``serial``: the softmax, the Q/DQ
  boundary), plus the profile's fixed cost per kernel (launch and framework overhead). A unit runs 1 kernel
  (``attention-pv`` 2: softmax and matmul), plus ``qdq_kernels`` when its input is quantized (and, on such a
  runtime, one more below 8 bits: the export clips the codes in their uint8 container), plus 1 where a
  runtime dequantizes its weight on each run: a quantized weight of a unit that computes in float (an op outside
  ``integer_ops``, or float activations) on a QDQ runtime (``qdq_kernels > 0``); such a unit computes at
  ``dequantized_weight_speed`` x the float peak. The Q/DQ boundary moves ``qdq_kernels * B * in_l * (f + t(a)) /
  8`` bytes (``f``: the float precision's width): each of its kernels reads or writes the tensor once in float and
  once at ``a`` bits, and takes at least ``in_l * B / qdq_elements_per_s`` per kernel where the profile gives that
  rate (a CPU converts fewer elements per second than its bandwidth moves).
* compute runs at ``compute_efficiency`` x the peak (1 on the GPU profiles: the plain roofline; fitted on ``cpu``,
  whose small depthwise and 3x3 convolutions reach a fraction of the large-matmul peak).
* an op outside the profile's ``integer_ops`` computes at ``float_precision`` whatever its bits (simulation-only
  unless FP32).
* energy, paper eqs. 9-11 with the units made explicit:
  ``p_f = (max_power - memory_power) / peak(prec)`` [W / (op/s) = J/op], and
  ``energy = p_f * ops + memory_power * bytes / bandwidth`` [J] (compute at peak, plus memory power over
  the time the transfer takes). The paper's eq. 11 multiplies p_f by latency; a FLOP count is what makes
  J/op come out in joules.
* ``size = W_l * w / 8 + bias_l * 4`` [byte] (FP32 layers: 4 bytes per parameter, the checkpoint size);
  ``BitOps = MACs * w * a`` per image. Size and BitOps do not depend on the batch.

Activation-only units (``quant.scope=hybrid``; :data:`hysquant_rl.units.ACTIVATION_KINDS`) are priced by the same
formulas with no weight and their pair read as ``(a, a)`` (``w`` changes nothing):

* ``attention-qk``: q k^T at ``compute_precision(a, a)`` (int8 or int4 where the profile has it), reading q and k
  at ``t(a)``, writing the scores in fp16 for the softmax (whatever the consumer reads);
* ``attention-pv``: the softmax, a memory-bound float kernel reading the fp16 scores and writing probabilities
  at ``t(a)``, run before (not overlapping) attention x v at ``compute_precision(a, a)``, which reads the
  probabilities and v at ``t(a)``: ``latency = max(compute, matmul bytes / bandwidth) + softmax bytes /
  bandwidth``;
* ``layernorm-in``: memory only (no ops), reading the residual stream at ``t(a)`` and writing what its consumer
  reads; deployable wherever the device moves ``a``-bit activations.

Latency and energy are per inference of one batch of ``batch_size`` images. Attention matmuls that are not units
(``quant.scope=linear``, or an attention module the inventory does not recognise) are priced once at the float
precision, with q/k/v/scores/probabilities moving in fp16 (3 kernels), and added to every policy as the ``fixed``
part, with ``kernel_overhead_s`` for each of the model's kernels that are not units (activations, residual adds)
and ``view_overhead_s`` for each view (reshapes, transposes), counted by :func:`hysquant_rl.inventory.other_ops`.
Overheads cost time, not energy.
BatchNorm, activations, reshapes and (under ``scope=linear``) LayerNorm are not priced (they fuse into
neighbouring kernels on a deployed model, or are not in the inventory).

All (layer, w, a, consumer) costs are tabulated once in numpy arrays; :meth:`CostModel.policy_cost` is a
gather and a sum (tens of microseconds), as the RL search calls it thousands of times.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from hysquant_rl.bits import CHOICES, FP32_BITS, GRID, GRID_BITS, check_bits
from hysquant_rl.budget_kinds import in_budget_units
from hysquant_rl.errors import HySquantError
from hysquant_rl.hardware.profile import DeviceProfile
from hysquant_rl.units import AttentionMatmul, OtherOps, UnitInfo

BIAS_BITS = 32  # biases stay 32-bit (int32 accumulator scale in integer kernels)
INT8_BYTES = 1  # an activation a quantized consumer reads, as the producer's epilogue writes it
# bit-width -> position in CHOICES, -1 where not allowed; one spare -1 at the end so that a lookup with
# mode="clip" maps anything below 0 or above 32 to -1 too
ATTENTION_KERNELS = 3  # a float attention module: q k^T, softmax, attention x v
_INDEX = np.full(FP32_BITS + 2, -1, dtype=np.intp)
_INDEX[list(CHOICES)] = np.arange(len(CHOICES))


@dataclass(frozen=True)
class UnitCost:
    """Cost of one layer (or one fixed unit) at one (w_bits, a_bits), per inference of ``batch_size`` images.

    ``ops``, ``bytes_moved``, ``compute_s`` and ``memory_s`` are the roofline model's terms (modelled under
    every backend); ``latency_s`` and ``energy_j`` are the backend's answer (``backend``).
    """

    name: str
    w_bits: int
    a_bits: int
    precision: str  # compute precision: fp16, int8, int4, ...
    deployable: bool  # runs as real kernels on the device; False: simulation-only
    batch_size: int
    ops: float  # 2 x MACs x batch_size [op]
    bytes_moved: float  # [byte]
    compute_s: float  # ops / peak(precision) [s]
    memory_s: float  # bytes_moved / bandwidth [s]
    latency_s: float  # [s]
    energy_j: float  # [J]
    size_bytes: float  # stored weights + bias [byte], independent of batch
    bitops: int  # MACs x w_bits x a_bits, per image
    backend: str = "modelled"

    @property
    def bound(self) -> str:
        """``"compute"`` or ``"memory"``: which roofline term is larger."""
        return "compute" if self.compute_s >= self.memory_s else "memory"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "bound": self.bound}


@dataclass(frozen=True)
class PolicyCost:
    """Totals of one policy (quantized layers + the fixed part) per inference of ``batch_size`` images."""

    device: str
    backend: str
    batch_size: int
    latency_s: float  # sum of layer latencies + fixed_latency_s [s]
    energy_j: float  # sum of layer energies + fixed_energy_j [J]
    size_bytes: float  # weights + biases of the quantized layers [byte]
    bitops: int  # per image, quantized layers only
    deployable: bool  # every layer's pair runs as real kernels on the device
    unit_latency_s: np.ndarray  # (n_units,) [s]
    unit_energy_j: np.ndarray  # (n_units,) [J]
    unit_deployable: np.ndarray  # (n_units,) bool
    fixed_latency_s: float  # attention matmuls, policy-independent [s]
    fixed_energy_j: float  # [J]

    def totals(self) -> dict[str, float]:
        """Latency [ms], energy [mJ] and size [MB] (:func:`in_budget_units`)."""
        return in_budget_units(lambda field: getattr(self, field))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("unit_latency_s", "unit_energy_j", "unit_deployable"):
            d[k] = d[k].tolist()
        return d


@dataclass(frozen=True)
class Boundaries:
    """Pairwise costs of one budget that a sum over units cannot express: where unit ``edges[e, 0]`` (the producer)
    runs integer and ``edges[e, 1]`` (its consumer) float, the total grows by ``to_float[e]``; the other way round by
    ``to_int[e]`` (on a runtime, the DequantizeLinear or QuantizeLinear of the tensor between them). A unit runs
    integer at a cell whose activations are quantized (a-index below FP32's)."""

    edges: np.ndarray  # (E, 2) int
    to_float: np.ndarray  # (E,)
    to_int: np.ndarray  # (E,)

    def total(self, bits: np.ndarray) -> float:
        """The boundaries' part of a policy (L, 2)'s total."""
        integer = np.asarray(bits)[:, 1] != FP32_BITS
        u, v = integer[self.edges[:, 0]], integer[self.edges[:, 1]]
        return float((self.to_float * (u & ~v)).sum() + (self.to_int * (~u & v)).sum())


class CostModel:
    """Modelled costs of ``layers`` (forward order, as :func:`hysquant_rl.inventory.inventory` returns them) and
    ``matmuls`` on ``profile`` at ``batch_size`` images per inference (default: the profile's).

    Subclasses (the measured backend) replace the latency/energy tables in :meth:`_price`; the totals are
    summed here only.
    """

    backend = "modelled"

    def __init__(
        self,
        units: Sequence[UnitInfo],
        matmuls: Sequence[AttentionMatmul],
        profile: DeviceProfile,
        batch_size: int | None = None,
        other: OtherOps | None = None,
    ) -> None:
        batch = profile.batch_size if batch_size is None else batch_size
        if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
            raise HySquantError(f"batch_size must be a positive integer, got {batch!r}")
        if not units:
            raise HySquantError("the cost model needs at least one quantizable layer")
        self.units = list(units)
        self.matmuls = list(matmuls)
        self.profile = profile
        self.batch_size = int(batch)
        self.device = profile.name
        self.other = other or OtherOps()  # kernels and views that are not units: an overhead each
        self._tabulate()
        self._price()

    @property
    def num_units(self) -> int:
        return len(self.units)

    # -- tables ----------------------------------------------------------------------------------------
    def _tabulate(self) -> None:
        """Policy-independent arrays: indices [layer, w, a, consumer_quantized] over CHOICES."""
        p, batch = self.profile, self.batch_size
        bits = np.array(CHOICES, dtype=np.float64)
        traffic_bits = np.where(bits == FP32_BITS, p.float_bits, bits)  # an FP32 operand moves as fp16
        weights = np.array([l.weight_elems for l in self.units], dtype=np.float64)
        bias = np.array([l.params - l.weight_elems for l in self.units], dtype=np.float64)
        in_elems = np.array([l.in_elems for l in self.units], dtype=np.float64)
        out_elems = np.array([l.out_elems for l in self.units], dtype=np.float64)
        macs = np.array([l.macs for l in self.units], dtype=np.int64)

        # (w, a) -> compute precision, its peak, power per op, deployability; per unit, since an activation-only
        # unit's pair is (a, a) whatever w says (w_eff), and a LayerNorm input deploys wherever a moves
        self._precision = [[p.compute_precision(w, a) for a in CHOICES] for w in CHOICES]
        peak = np.array([[p.peak(c) for c in row] for row in self._precision])  # (8, 8) op/s
        deployable = np.array([[p.is_deployable(w, a) for a in CHOICES] for w in CHOICES])
        n, k = len(self.units), len(CHOICES)
        weighted = np.array([l.weighted for l in self.units])
        self._w_eff = np.where(weighted[:, None, None], np.arange(k)[None, :, None], np.arange(k)[None, None, :])
        self._w_eff = np.broadcast_to(self._w_eff, (n, k, k))
        a_idx = np.broadcast_to(np.arange(k)[None, None, :], (n, k, k))
        peak_u = peak[self._w_eff, a_idx]  # (n, w, a)
        self._deployable = deployable[self._w_eff, a_idx].copy()  # (n, w, a)
        moves = np.array([a == FP32_BITS or a in p.deployable_activation_bits for a in CHOICES])
        norm = np.array([l.op == "layernorm" for l in self.units])
        self._deployable[norm] = moves[None, :]
        # ops without integer kernels on this device compute in float and deploy only unquantized
        self._float_only = np.array([l.op != "layernorm" and l.op not in p.integer_ops for l in self.units])
        fp32 = len(CHOICES) - 1  # CHOICES ends with FP32_BITS
        peak_u[self._float_only] = p.peak(p.float_precision)
        self._deployable[self._float_only] = (self._w_eff == fp32)[self._float_only] & (a_idx == fp32)[self._float_only]

        elem_out = np.array([p.float_bits / 8, INT8_BYTES])
        # q k^T writes its scores for the float softmax whatever the consumer quantizes
        scores = np.array([l.kind == "attention-qk" for l in self.units])
        weight_bytes = weights[:, None] * traffic_bits / 8 + bias[:, None] * BIAS_BITS / 8  # (n, w)
        input_bytes = batch * in_elems[:, None] * traffic_bits / 8  # (n, a)
        output_bytes = batch * out_elems[:, None] * np.where(scores[:, None], elem_out[0], elem_out)  # (n, consumer)
        # attention-pv: the softmax before it reads the fp16 scores and writes probabilities at a bits, a
        # memory-bound kernel of its own (serial: it does not overlap the matmul)
        probs = np.array([l.sequences * l.heads * l.tokens**2 if l.kind == "attention-pv" else 0 for l in self.units])
        softmax_bytes = batch * probs[:, None] * (p.float_bits + traffic_bits[None, :]) / 8  # (n, a)
        # the Q/DQ boundary of a quantized input, and a weight dequantized on each run, as kernels of their own
        quantized = bits != FP32_BITS
        # kernels of the boundary at each a: Q and DQ, and below 8 bits a Clip of the codes in their uint8 container
        boundary = p.qdq_kernels * quantized + ((p.qdq_kernels > 0) & (bits < 8))  # (a,)
        qdq_bytes = boundary * batch * in_elems[:, None] * (p.float_bits + traffic_bits[None, :]) / 8  # (n, a)
        # a quantized weight of a unit computing in float (an op outside integer_ops, or float activations): a QDQ
        # runtime dequantizes it on each run and runs the float kernel on it, at dequantized_weight_speed
        float_compute = self._float_only[:, None, None] | (a_idx == fp32)  # (n, w, a)
        dequantizes = weighted[:, None, None] & quantized[None, :, None] & float_compute & (p.qdq_kernels > 0)
        dq_weight_bytes = weights[:, None, None] * (p.float_bits + traffic_bits[None, :, None]) / 8 * dequantizes
        serial_bytes = (softmax_bytes + qdq_bytes)[:, None, :] + dq_weight_bytes  # (n, w, a)
        own = np.array([2 if l.kind == "attention-pv" else 1 for l in self.units])
        self.kernels = own[:, None, None] + boundary[None, None, :] + dequantizes  # (n, w, a)
        # serial kernels: their memory time (also part of _memory_s), and their latency, where a Q/DQ kernel that
        # converts fewer elements per second than the bandwidth allows takes its element time
        self._serial_memory_s = serial_bytes / p.memory_bandwidth  # (n, w, a)
        qdq_memory_s = qdq_bytes / p.memory_bandwidth  # (n, a)
        qdq_elements_s = boundary * batch * in_elems[:, None] / (p.qdq_elements_per_s or np.inf)  # (n, a)
        self._serial_s = (
            self._serial_memory_s
            + (np.maximum(qdq_memory_s, qdq_elements_s) - qdq_memory_s)[:, None, :]
            + self.kernels * p.kernel_overhead_s
        )  # (n, w, a)
        self._bytes = (
            weight_bytes[:, :, None, None]
            + serial_bytes[..., None]
            + input_bytes[:, None, :, None]
            + output_bytes[:, None, None, :]
        )
        self._ops = 2.0 * macs.astype(np.float64) * batch  # (n,)
        speed = p.compute_efficiency * np.where(dequantizes, p.dequantized_weight_speed, 1.0)  # x peak
        self._compute_s = self._ops[:, None, None] / peak_u / speed  # (n, w, a)
        self._memory_s = self._bytes / p.memory_bandwidth  # (n, w, a, c)
        self._joules_per_op = p.compute_power_w / peak_u  # (n, w, a) J/op, paper eq. 10 less memory power
        self._size = weights[:, None] * bits / 8 + bias[:, None] * BIAS_BITS / 8  # (n, w)
        self._bitops = macs[:, None, None] * (np.array(CHOICES)[self._w_eff] * np.array(CHOICES)[a_idx])  # (n, w, a)
        self._rows = np.arange(len(self.units))
        self._row_offset = self._rows * (len(CHOICES) ** 2 * 2)  # flat offset of each layer's (w, a, c) block

    def _price(self) -> None:
        """Fill ``_latency``/``_energy`` (n, w, a, c) and the fixed part: here the roofline."""
        p = self.profile
        parallel = np.maximum(self._compute_s[..., None], self._memory_s - self._serial_memory_s[..., None])
        self._latency = parallel + self._serial_s[..., None]
        self._energy = (self._ops[:, None, None] * self._joules_per_op)[..., None] + p.memory_power_w * self._memory_s
        self.fixed_items = [self._attention_cost(m) for m in self.matmuls]
        self._sum_fixed()

    def _sum_fixed(self) -> None:
        p = self.profile
        overhead = self.other.kernels * p.kernel_overhead_s + self.other.views * p.view_overhead_s
        self.fixed_latency_s = float(sum(c.latency_s for c in self.fixed_items)) + overhead
        self.fixed_energy_j = float(sum(c.energy_j for c in self.fixed_items))

    def _attention_cost(self, m: AttentionMatmul) -> UnitCost:
        """Roofline of one attention module at the float precision: q k^T, softmax, attention x v, each a
        kernel with its own max(compute, memory); every operand at the float precision (fp16: 2 bytes)."""
        p, batch = self.profile, self.batch_size
        rows = batch * m.sequences * m.heads  # independent (N x d) problems per batch
        n, d, elem = m.tokens, m.head_dim, p.float_bits / 8
        half_ops = float(batch * m.macs)  # 2 ops per MAC, each matmul holds half of m.macs
        kernels = (  # (ops, bytes) of its ATTENTION_KERNELS kernels
            (half_ops, rows * (2 * n * d + n * n) * elem),  # read q, k; write scores
            (0.0, rows * 2 * n * n * elem),  # softmax: read scores, write probabilities
            (half_ops, rows * (n * n + 2 * n * d) * elem),  # read probabilities, v; write output
        )
        raw = p.peak(p.float_precision)
        peak = raw * p.compute_efficiency  # what the kernels reach (energy stays per op at peak, as for units)
        ops = sum(k[0] for k in kernels)
        nbytes = sum(k[1] for k in kernels)
        compute_s, memory_s = ops / peak, nbytes / p.memory_bandwidth
        latency = sum(max(o / peak, b / p.memory_bandwidth) + p.kernel_overhead_s for o, b in kernels)
        energy = ops * p.compute_power_w / raw + p.memory_power_w * memory_s
        return UnitCost(
            name=m.name,
            w_bits=FP32_BITS,
            a_bits=FP32_BITS,
            precision=p.float_precision,
            deployable=True,
            batch_size=batch,
            ops=ops,
            bytes_moved=nbytes,
            compute_s=compute_s,
            memory_s=memory_s,
            latency_s=latency,
            energy_j=energy,
            size_bytes=0.0,
            bitops=0,
            backend=self.backend,
        )

    # -- queries ---------------------------------------------------------------------------------------
    def unit_cost(self, i: int, w_bits: int, a_bits: int, consumer_quantized: bool) -> UnitCost:
        """Cost of layer ``i`` at (w_bits, a_bits); ``consumer_quantized``: the next layer quantizes its input
        activation, so this layer's output is written as int8 (1 byte) instead of fp16."""
        if not 0 <= i < self.num_units:
            raise HySquantError(f"layer index {i} is out of range 0..{self.num_units - 1}")
        w = _INDEX[check_bits(w_bits, "weight bit-width")]
        a = _INDEX[check_bits(a_bits, "activation bit-width")]
        c = int(bool(consumer_quantized))
        return UnitCost(
            name=self.units[i].name,
            w_bits=int(w_bits),
            a_bits=int(a_bits),
            precision=self.profile.float_precision if self._float_only[i] else self._precision[self._w_eff[i, w, a]][a],
            deployable=bool(self._deployable[i, w, a]),
            batch_size=self.batch_size,
            ops=float(self._ops[i]),
            bytes_moved=float(self._bytes[i, w, a, c]),
            compute_s=float(self._compute_s[i, w, a]),
            memory_s=float(self._memory_s[i, w, a, c]),
            latency_s=float(self._latency[i, w, a, c]),
            energy_j=float(self._energy[i, w, a, c]),
            size_bytes=float(self._size[i, w]),
            bitops=int(self._bitops[i, w, a]),
            backend=self.backend,
        )

    def config_cost(self, i: int, w_bits: int, a_bits: int) -> UnitCost:
        """Layer ``i`` inside a chain where every layer runs at (w_bits, a_bits): its consumer is quantized
        when ``a_bits < 32`` and it is not the last layer. Summed over all layers plus the fixed part, this is
        :meth:`policy_cost` of the uniform policy (the LUT's rows)."""
        return self.unit_cost(i, w_bits, a_bits, a_bits != FP32_BITS and i < self.num_units - 1)

    def _indices(self, bits: Sequence[tuple[int, int]] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flat indices into the (layer, w, a, consumer) tables and into the (w, a) tables, per layer."""
        arr = np.asarray(bits)
        if arr.shape != (self.num_units, 2):
            raise HySquantError(
                f"a policy needs one (w_bits, a_bits) pair for each of the {self.num_units} layers, "
                f"got an array of shape {arr.shape}"
            )
        if arr.dtype.kind not in "iu":
            raise HySquantError(f"policy bit-widths must be integers, got {arr.dtype}")
        idx = np.take(_INDEX, arr, mode="clip")  # -1 for anything not in CHOICES
        if (idx < 0).any():
            unit, col = map(int, np.argwhere(idx < 0)[0])
            what = "weight" if col == 0 else "activation"
            check_bits(int(arr[unit, col]), f"layer {self.units[unit].name} {what} bit-width")
        pair = idx[:, 0] * len(CHOICES) + idx[:, 1]
        consumer = np.zeros(self.num_units, dtype=np.intp)
        consumer[:-1] = arr[1:, 1] != FP32_BITS
        return self._row_offset + pair * 2 + consumer, pair

    def policy_cost(self, bits: Sequence[tuple[int, int]] | np.ndarray) -> PolicyCost:
        """Totals of a policy: one (w_bits, a_bits) per layer in forward order (sequence or (n, 2) int array).
        Each layer's output is priced at what the next layer reads (int8 if it quantizes its input)."""
        flat, pair = self._indices(bits)
        latency = self._latency.ravel()[flat]
        energy = self._energy.ravel()[flat]
        rows = self._rows
        deployable = self._deployable.reshape(self.num_units, -1)[rows, pair]
        return PolicyCost(
            device=self.device,
            backend=self.backend,
            batch_size=self.batch_size,
            latency_s=float(latency.sum()) + self.fixed_latency_s,
            energy_j=float(energy.sum()) + self.fixed_energy_j,
            size_bytes=float(self._size[rows, pair // len(CHOICES)].sum()),
            bitops=int(self._bitops.reshape(self.num_units, -1)[rows, pair].sum()),
            deployable=bool(deployable.all()),
            unit_latency_s=latency,
            unit_energy_j=energy,
            unit_deployable=deployable,
            fixed_latency_s=self.fixed_latency_s,
            fixed_energy_j=self.fixed_energy_j,
        )

    def quantized_grid(self, metric: str) -> np.ndarray:
        """Per-unit cost (n, GRID, GRID) of every pair (w, a) of the grid (2..8 and FP32 per operand), ``metric`` one
        of ``latency_s``, ``energy_j``, ``size_bytes``, ``bitops``: a policy's total is the sum over its units plus the
        fixed part (``fixed_latency_s`` / ``fixed_energy_j``; size and BitOps have none). A unit's output is written at
        what its consumer reads (:meth:`policy_cost`); here each unit is priced as if its consumer quantizes its input,
        and a unit whose activations are FP32 also carries what its producer's output costs more when written in float.
        So the sum is exact for energy and size, and for latency exact inside a policy whose activations are all
        quantized, else an upper bound (the extra bytes of a float output priced at the bandwidth, where the producer's
        roofline may hide them under its compute)."""
        q = _INDEX[GRID_BITS]
        consumer = np.ones(self.num_units, dtype=np.intp)
        consumer[-1] = 0  # the logits are written as fp16
        rows = self._rows[:, None, None]
        w, a = q[None, :, None], q[None, None, :]
        if metric in ("latency_s", "energy_j"):
            table = self._latency if metric == "latency_s" else self._energy
            grid = table[rows, w, a, consumer[:, None, None]].copy()
            # the producer's float output, paid by its FP32 consumer (the most it adds over the producer's cells)
            extra = (table[..., 0] - table[..., 1]).reshape(self.num_units, -1).max(axis=1)  # (n,)
            grid[1:, :, -1] += np.maximum(extra[:-1], 0.0)[:, None]
            return grid
        if metric == "size_bytes":
            return np.broadcast_to(self._size[rows, w], (self.num_units, GRID, GRID)).copy()
        if metric == "bitops":
            return self._bitops[rows, w, a].astype(np.float64)
        raise ValueError(f"unknown cost metric {metric!r}")

    def budget_grids(self) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """Per-layer grids (n, GRID, GRID) of every budget in its unit (:mod:`hysquant_rl.budget_kinds`), and each one's
        policy-independent fixed part: a fully quantized policy's total is the grid sum plus the fixed part."""
        fixed_si = {"latency_s": self.fixed_latency_s, "energy_j": self.fixed_energy_j, "size_bytes": 0.0}
        return in_budget_units(self.quantized_grid), in_budget_units(fixed_si.__getitem__)

    def kernel_count(self, bits: Sequence[tuple[int, int]] | np.ndarray) -> int:
        """Kernels a policy launches per inference, as this model counts them: each unit's (its own, its Q/DQ
        boundary, a run-time weight dequantize), 3 per float attention module, and the model's other kernels. Times
        ``kernel_overhead_s``, the launch floor; the model's views are counted apart (``other.views``)."""
        _, pair = self._indices(bits)
        units = int(self.kernels.reshape(self.num_units, -1)[self._rows, pair].sum())
        return units + ATTENTION_KERNELS * len(self.matmuls) + self.other.kernels

    def boundaries(self) -> dict[str, Boundaries]:
        """Pairwise terms of each budget (budget units) that :meth:`budget_grids` cannot express: none for the
        roofline (a runtime's measured model has its int8/float boundaries)."""
        return {}

    def uniform_cost(self, w_bits: int, a_bits: int) -> PolicyCost:
        """:meth:`policy_cost` of every layer at (w_bits, a_bits)."""
        return self.policy_cost([(w_bits, a_bits)] * self.num_units)
