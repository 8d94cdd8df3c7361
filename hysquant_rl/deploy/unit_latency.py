"""Per-unit latency measured on the runtime (as HAWQ-V3 measured its per-layer table on its target), cached per
machine: the latency a search prices policies with in the executable space.

How (:func:`measure`): the model's runtime-layout graph (:mod:`hysquant_rl.deploy.runtime_graph`) with every
unit at FP32, and with every unit that can at W8A8, each run by the runtime (:mod:`hysquant_rl.deploy.runtimes`)
with its per-node profiler on (``timing.threads`` threads, the search's batch size, the median of each node over the
runs). Every node of the optimised graph is attributed to a unit by its name (onnxruntime and OpenVINO keep the
exported node and tensor names, with module scopes, through their fusions): a unit's own nodes, and the nodes that
read its output (its SiLU, the reshapes after it, a residual Add it ends; :func:`owners`); what no unit owns is
fixed. A unit's FP32 latency is what its nodes took in the FP32 graph, its int8 latency what they took (its integer
kernels, and on onnxruntime its Q/DQ nodes; on OpenVINO the FakeQuantize before it, :func:`attribute`) in the int8
graph. Profiled node times add up to less than a run's wall time (the executor's own overhead), so both graphs are
also timed whole (interleaved rounds, medians) and the table is scaled to reproduce those two times exactly:
``latency(policy) = fixed + sum of each unit's latency at its choice``.

A policy that mixes FP32 and int8 units also pays Q/DQ nodes where an int8 segment begins or ends, and fusions
change with neighbours: the sum is a model of the whole graph, whose error ``benchmarks/deployment.py`` measures
(Spearman and MAPE over policies); the hardware-feedback loop times the found policy's whole graph.

The table depends on the machine (CPU model, logical CPUs, VNNI and bf16, the runtime and its version:
:meth:`hysquant_rl.deploy.runtimes.Runtime.machine`), the model's graph, the batch size and the threads; it is cached
under ``<paths.cache>/runtime/<machine key>/`` and measured again on another machine or runtime. Every figure built on
it names the machine it was measured on.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hysquant_rl import machine
from hysquant_rl.bits import FP32_BITS, FP32_INDEX
from hysquant_rl.deploy.runtime_graph import Graph, RuntimeGraphs
from hysquant_rl.deploy.runtimes import INPUT, Runtime
from hysquant_rl.deploy.timing import interleaved, side_by_side
from hysquant_rl.errors import HySquantError
from hysquant_rl.hardware.cost import Boundaries, CostModel, PolicyCost
from hysquant_rl.io import save_json
from hysquant_rl.space import choice_mask

if TYPE_CHECKING:
    from hysquant_rl.hardware.profile import DeviceProfile, Timing
    from hysquant_rl.units import AttentionMatmul, OtherOps, UnitInfo

log = logging.getLogger(__name__)
FORMAT, VERSION = "hysquant-unit-latency", 5
CACHE_BYTES = 16 << 20  # a per-unit table is a few kB; a larger file is not one
STEADY = 0.15  # a table is cached only when its whole-graph round medians vary less than this (CV)
_SUFFIXES = re.compile(
    r"(_token_\d+|_nchwc|/QuickGeluFusion/?|_(De)?QuantizeLinear(_\d+)?|/duplicated|_q|/WithoutBiases)+$"
)
_INPUT_QUANTIZE = "FakeQuantize"  # OpenVINO's quantizer on an int8 unit's input: part of that unit's int8 cost


@dataclass(frozen=True)
class UnitLatency:
    """One model's latency model on one machine, per inference of ``batch_size`` images, in seconds:

    * ``fp32_s`` and ``int8_s`` (L,): each unit's own nodes in float and in int8 (a unit without an int8 kernel has
      its FP32 figure in both);
    * ``edges``: ``[u, v, elements]`` where unit v reads (through non-unit ops) a tensor of ``elements`` values that
      unit u writes; where one of them runs int8 and the other float, the graph gains a QuantizeLinear (float -> int8)
      or a DequantizeLinear (int8 -> float) over that tensor, priced by ``quantize_s`` / ``dequantize_s``
      ([seconds per node, seconds per element], fitted on the Q/DQ nodes of the measured graphs);
    * ``fixed_s``: what no unit owns; ``measured``: the whole-graph medians the model reproduces (``fp32``, ``int8``);
      ``machine``: what it was measured on.
    """

    spread: float  # the largest CV of the round medians of the two whole-graph timings: how steady the machine was
    fp32_s: np.ndarray
    int8_s: np.ndarray
    fixed_s: float
    batch_size: int
    threads: int
    measured: dict[str, float]
    machine: dict[str, Any]
    graph_sha256: str
    edges: list[list[int]]
    quantize_s: list[float]
    dequantize_s: list[float]

    def boundary(self, int8: np.ndarray) -> float:
        """Seconds of the Q/DQ nodes a policy's int8/float boundaries add; ``int8`` (L,) bool: units at int8."""
        total = 0.0
        for u, v, elements in self.edges:
            if int8[u] != int8[v]:
                a, b = self.dequantize_s if int8[u] else self.quantize_s
                total += a + b * elements
        return float(total)

    def latency(self, bits: np.ndarray) -> float:
        """Modelled whole-graph latency [s] of a policy (L, 2): fixed, each unit at its choice (int8 where its
        activations are quantized), and the boundaries between int8 and float units."""
        int8 = np.asarray(bits)[:, 1] != FP32_BITS
        return float(self.fixed_s + np.where(int8, self.int8_s, self.fp32_s).sum() + self.boundary(int8))

    def check(
        self, int8: np.ndarray, graph_sha256: str, batch_size: int, threads: int, machine: dict[str, Any]
    ) -> None:
        """Raise ValueError naming what is wrong unless this table is one measured for the units ``int8`` (L,) marks as
        int8-capable, of the layout
        ``graph_sha256`` at ``batch_size`` and ``threads`` on ``machine`` (:meth:`Runtime.machine`), with finite,
        non-negative latencies below an hour, edges between existing units, and columns that reproduce the two
        whole-graph timings it was scaled to (a table edited by hand, damaged, or measured elsewhere fails)."""
        if self.graph_sha256 != graph_sha256:
            raise ValueError("it was measured on another layout of the model")
        if (self.batch_size, self.threads) != (batch_size, threads):
            raise ValueError(f"it was measured at batch {self.batch_size} on {self.threads} thread(s)")
        if self.machine != machine:
            raise ValueError(f"it was measured on {self.machine.get('cpu')} ({self.machine.get('runtime')})")
        units = len(int8)
        for name in ("fp32_s", "int8_s"):
            column = getattr(self, name)
            if column.shape != (units,):
                raise ValueError(f"{name} holds {column.size} values for {units} units")
        numbers = np.concatenate(
            [self.fp32_s, self.int8_s, [self.fixed_s, *self.quantize_s, *self.dequantize_s, *self.measured.values()]]
        )
        if len(self.quantize_s) != 2 or len(self.dequantize_s) != 2 or set(self.measured) != {"fp32", "int8"}:
            raise ValueError("its boundary prices or whole-graph timings are incomplete")
        if not (np.isfinite(numbers).all() and (numbers >= 0).all() and (numbers < 3600).all()):
            raise ValueError("it holds latencies that are not finite numbers in [0, 3600) s")
        if not all(m > 0 for m in self.measured.values()):
            raise ValueError("its whole-graph timings are not positive")
        for edge in self.edges:
            if len(edge) != 3 or not all(isinstance(e, int) and not isinstance(e, bool) for e in edge):
                raise ValueError(f"edge {edge!r} is not [unit, unit, elements]")
            if not (0 <= edge[0] < units and 0 <= edge[1] < units and edge[2] >= 0):
                raise ValueError(f"edge {edge!r} names a unit that does not exist")
        for name, bits in (
            ("fp32", np.full((units, 2), FP32_BITS)),
            ("int8", np.where(int8[:, None], 8, np.full((units, 2), FP32_BITS))),
        ):
            if name == "int8" and not int8.any():
                continue
            modelled, timed = self.latency(bits), self.measured[name]
            if abs(modelled - timed) > 1e-6 * timed + 1e-9:
                raise ValueError(f"its {name} column sums to {modelled:.4g} s, not the {timed:.4g} s it was scaled to")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["fp32_s"], d["int8_s"] = self.fp32_s.tolist(), self.int8_s.tolist()
        return {"format": FORMAT, "version": VERSION, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UnitLatency:
        if d.get("format") != FORMAT or d.get("version") != VERSION:
            raise ValueError(f"not a version-{VERSION} {FORMAT} document")
        fields = {k: v for k, v in d.items() if k not in ("format", "version")}
        fields["fp32_s"], fields["int8_s"] = np.asarray(d["fp32_s"], float), np.asarray(d["int8_s"], float)
        return cls(**fields)


def layout_key(layout: Any, int8: np.ndarray) -> str:
    """What a per-unit table is a table of: the layout (its ``sha256``: the model's weights and calibration in the
    runtime's layout) and which units it measured at int8 (``int8`` (L,) bool)."""
    return hashlib.sha256(layout.sha256.encode() + np.asarray(int8, dtype=bool).tobytes()).hexdigest()


def owners(graphs: RuntimeGraphs) -> dict[str, int]:
    """Original node name -> the unit (index) that owns it: a unit's own nodes, and in forward order every other node
    owned by the unit of its most recently produced input (-1: no unit, e.g. the graph input's reshapes)."""
    g = Graph(graphs.float.graph)
    order = {name: i for i, name in enumerate(n.name for n in graphs.float.graph.node)}
    own = {name: u for u, names in enumerate(graphs.node_names) for name in names}
    for node in graphs.float.graph.node:
        if node.name in own:
            continue
        producers = [g.producer[x] for x in node.input if x in g.producer and own.get(g.producer[x], -1) >= 0]
        own[node.name] = own[max(producers, key=order.__getitem__)] if producers else -1
    return own


def edges(graphs: RuntimeGraphs, own: dict[str, int]) -> list[tuple[int, int, str]]:
    """(u, v, tensor): unit v's node reads ``tensor`` (a float activation), which traces back through non-unit nodes
    to unit u's nodes (u != v)."""
    g = Graph(graphs.float.graph)
    out = []
    for v, names in enumerate(graphs.node_names):
        for name in names:
            for x in g.nodes[name].input:
                if not x or x in g.initializers or x not in g.floats or x not in g.producer:
                    continue
                u = own.get(g.producer[x], -1)
                if u >= 0 and u != v:
                    out.append((u, v, x))
    return out


def exported_name(name: str) -> str:
    """A compiled node's name without the suffixes the runtime adds (onnxruntime's ``_nchwc``, ``_token_3``, Q/DQ
    names; OpenVINO's ``/WithoutBiases``, ``_QuantizeLinear`` or ``_QuantizeLinear_1`` of a FakeQuantize): an
    exported node's or tensor's name."""
    return _SUFFIXES.sub("", name)


def reader_unit(g: Graph, tensor: str, unit_of: dict[str, int]) -> int:
    """The first unit that reads ``tensor``, through non-unit nodes (breadth first), or -1."""
    seen, frontier = {tensor}, [tensor]
    while frontier:
        nxt = []
        for t in frontier:
            for c in g.consumers.get(t, ()):
                if c in unit_of:
                    return unit_of[c]
                nxt += [o for o in g.nodes[c].output if o not in seen]
                seen.update(g.nodes[c].output)
        frontier = nxt
    return -1


def attribute(
    profile: dict[str, tuple[str, float]],
    graphs: RuntimeGraphs,
    own: dict[str, int],
    boundary_ops: Sequence[str] = ("QuantizeLinear", "DequantizeLinear"),
) -> tuple[np.ndarray, float, list[tuple[str, str, float]]]:
    """Per-unit sums (L,) of profiled node times [s] (optimised node name -> (op type, median seconds)), the
    unattributed rest, and the runtime's int8/float boundary nodes (``boundary_ops``) apart as (op type, tensor,
    seconds): an optimised node's name, stripped of the runtime's suffixes, is an exported node's or tensor's name.
    An OpenVINO FakeQuantize belongs to the unit that reads its tensor (it is there because that unit is int8)."""
    g = Graph(graphs.float.graph)
    unit_of = {name: u for u, names in enumerate(graphs.node_names) for name in names}
    per_unit = np.zeros(len(graphs.node_names))
    rest, qdq = 0.0, []
    for name, (op, seconds) in profile.items():
        base = exported_name(name)
        if op in boundary_ops:
            qdq.append((op, base, seconds))
            continue
        if op == _INPUT_QUANTIZE and (reader := reader_unit(g, base, unit_of)) >= 0:
            per_unit[reader] += seconds
            continue
        node = base if base in g.nodes else g.producer.get(base)
        unit = own.get(node, -1) if node is not None else -1
        if unit >= 0:
            per_unit[unit] += seconds
        else:
            rest += seconds
    return per_unit, rest, qdq


def tensor_sizes(graphs: RuntimeGraphs, names: set[str], feed: dict[str, np.ndarray]) -> dict[str, int]:
    """Elements of each named tensor of the FP32 graph at the batch of ``feed`` (the graph run once with them as
    outputs)."""
    import onnx

    proto = copy.deepcopy(graphs.float)
    known = {o for n in proto.graph.node for o in n.output} | {i.name for i in proto.graph.input}
    wanted = sorted(n for n in names if n in known and n not in {o.name for o in proto.graph.output})
    for n in wanted:
        proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(n))
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.log_severity_level = 1, 3
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = onnxruntime.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    values = sess.run(wanted, feed)
    sizes = {n: int(v.size) for n, v in zip(wanted, values)}
    sizes.update({i: int(feed[i].size) for i in feed})
    return sizes


def fit_qdq(samples: list[tuple[str, str, float]], sizes: dict[str, int], op: str) -> list[float]:
    """[seconds per node, seconds per element] of ``op`` nodes, least squares over the measured ones (a single
    measurement, or none: its per-element rate, or 0)."""
    pts = [(sizes[t], s) for o, t, s in samples if o == op and t in sizes]
    if len(pts) < 2:
        return [0.0, pts[0][1] / max(pts[0][0], 1)] if pts else [0.0, 0.0]
    x, y = np.array(pts, dtype=float).T
    b, a = np.polyfit(x, y, 1)
    return [max(float(a), 0.0), max(float(b), 0.0)]


def measure(
    graphs: RuntimeGraphs,
    int8: np.ndarray,
    batch_size: int,
    timing: Timing,
    runtime: Runtime,
    seed: int = 0,
) -> UnitLatency:
    """The latency model of ``graphs`` at ``batch_size`` images on ``runtime`` (see the module docstring); ``int8``
    (L,) bool marks the units that can run at W8A8 on this runtime."""
    start = time.perf_counter()
    n = len(graphs.node_names)
    fp32_bits = np.full((n, 2), FP32_BITS)
    int8_bits = np.where(int8[:, None], np.array([8, 8]), FP32_BITS)
    models = {"fp32": graphs.graph(fp32_bits).SerializeToString(), "int8": graphs.graph(int8_bits).SerializeToString()}
    x = np.random.default_rng(seed).standard_normal((batch_size, *graphs.input_shape)).astype(np.float32)
    feed = {INPUT: x}
    own = owners(graphs)
    links = edges(graphs, own)
    runs = max(10, min(50, int(2.0 / max(1e-4, 0.0005 * batch_size))))  # about 2 s of profiled runs per graph
    profiled = {
        k: attribute(runtime.profile_nodes(m, feed, timing.threads, runs), graphs, own, runtime.boundary_ops)
        for k, m in models.items()
    }
    sessions = {k: runtime.session(v, timing.threads) for k, v in models.items()}
    wall, spread = side_by_side(interleaved(sessions, feed, timing.warmup, timing.repeats, rounds=5))
    (units32, rest32, _), (units8, _, qdq8) = profiled["fp32"], profiled["int8"]
    sizes = tensor_sizes(graphs, {t for *_, t in links} | {t for _, t, _ in qdq8}, feed)
    # the FP32 graph's profile scaled to its wall time gives the FP32 column and the fixed part (what no unit owns)
    scale = wall["fp32"] / (units32.sum() + rest32)
    fp32_s, fixed = units32 * scale, rest32 * scale
    quantize_s, dequantize_s = (
        [float(v * scale) for v in fit_qdq(qdq8, sizes, op)] for op in ("QuantizeLinear", "DequantizeLinear")
    )
    table = UnitLatency(
        spread,
        fp32_s,
        fp32_s.copy(),
        float(fixed),
        batch_size,
        timing.threads,
        {k: float(v) for k, v in wall.items()},
        runtime.machine(),
        layout_key(graphs, int8),
        [[u, v, sizes.get(t, 0)] for u, v, t in links],
        quantize_s,
        dequantize_s,
    )
    # the int8 units' profiled times scaled so that the all-int8 policy reproduces its wall time too
    rest8 = wall["int8"] - fixed - fp32_s[~int8].sum() - table.boundary(int8)
    k = rest8 / max(units8[int8].sum(), 1e-12)
    table.int8_s[:] = np.where(int8, units8 * (k if k > 0 else scale), fp32_s)
    log.info(
        "per-unit latency measured on %s by %s at batch %d (%d thread(s), %.1f s): FP32 %.4g ms, int8 %.4g ms",
        machine.cpu_model(),
        runtime.name,
        batch_size,
        timing.threads,
        time.perf_counter() - start,
        1e3 * wall["fp32"],
        1e3 * wall["int8"],
    )
    return table


def cached(
    graphs: Any,
    int8: np.ndarray,
    batch_size: int,
    timing: Timing,
    cache_dir: str | os.PathLike,
    runtime: Runtime,
) -> UnitLatency:
    """The runtime's per-unit table (:meth:`~hysquant_rl.deploy.runtimes.Runtime.unit_latency`), read from
    ``cache_dir/runtime/<machine key>/`` when it was measured there (on this machine, by the same runtime) for the same
    layout, batch size and threads and passes :meth:`UnitLatency.check`, else measured now and written there (a cache
    that cannot be written only costs a warning; one that fails its checks is named in a warning and replaced)."""
    from hysquant_rl.io import read_regular

    sha = layout_key(graphs, int8)
    path = Path(cache_dir) / "runtime" / runtime.machine_key() / f"{sha[:16]}_b{batch_size}_t{timing.threads}.json"
    if path.exists() or path.is_symlink():
        try:
            table = UnitLatency.from_dict(json.loads(read_regular(path, limit=CACHE_BYTES)))
            table.check(int8, sha, batch_size, timing.threads, runtime.machine())
            return table
        except (OSError, ValueError, KeyError, TypeError, HySquantError) as e:
            log.warning("per-unit latency cache %s cannot be used (%s): measuring again", path, str(e)[:200])
    table = runtime.unit_latency(graphs, int8, batch_size, timing)
    if table.spread > STEADY:
        log.warning(
            "per-unit latency measured on a busy machine (round medians vary by CV %.3f > %g): used for this run, not"
            " cached; stop other jobs for a table worth keeping",
            table.spread,
            STEADY,
        )
        return table
    try:
        save_json(table.to_dict(), path)
    except OSError as e:
        log.warning("cannot write the per-unit latency cache %s (%s): the table is kept for this run only", path, e)
    return table


class RuntimeCostModel(CostModel):
    """:class:`CostModel` whose latency is a runtime's measured per-unit table (:class:`UnitLatency`): a unit at a
    pair with quantized activations costs its int8 latency, at FP32 its FP32 latency, whatever its consumer; the
    fixed part is the table's. Energy, size and BitOps stay the profile's model (no power counter here). ``backend``
    says which runtime measured the table (``onnxruntime per-unit``, ``openvino per-unit``)."""

    def __init__(
        self,
        units: Sequence[UnitInfo],
        matmuls: Sequence[AttentionMatmul],
        profile: DeviceProfile,
        table: UnitLatency,
        other: OtherOps | None = None,
    ) -> None:
        if len(table.fp32_s) != len(units):
            raise HySquantError(f"a per-unit latency table of {len(table.fp32_s)} units for {len(units)} units")
        self.table = table
        self.backend = f"{str(table.machine['runtime']).split()[0]} per-unit"
        super().__init__(units, matmuls, profile, table.batch_size, other)
        self.device = f"{profile.name}: {table.machine['cpu']} ({table.machine['runtime']})"

    def _tabulate(self) -> None:
        super()._tabulate()
        # deployable: exactly the runtime's executable cells (FP32 included); an activation-only unit's w is its a
        cells = choice_mask(self.units, self.profile, "executable")
        a_idx = np.broadcast_to(np.arange(cells.shape[2])[None, None, :], cells.shape)
        self._deployable = cells[np.arange(len(cells))[:, None, None], self._w_eff, a_idx]
        self._float_only[:] = False

    def policy_cost(self, bits: Sequence[tuple[int, int]] | np.ndarray) -> PolicyCost:
        """The per-unit sum of :class:`CostModel`, plus the Q/DQ nodes of the policy's int8/float boundaries."""
        cost = super().policy_cost(bits)
        extra = self.table.boundary(np.asarray(bits)[:, 1] != FP32_BITS)
        return replace(cost, latency_s=cost.latency_s + extra)

    def boundaries(self) -> dict[str, Boundaries]:
        """The latency budget's int8/float boundaries [ms] (the table's edges), for the integer program."""
        edges = np.array([[u, v] for u, v, _ in self.table.edges], dtype=np.intp).reshape(-1, 2)
        size = np.array([e for *_, e in self.table.edges], dtype=float)
        (qa, qb), (da, db) = self.table.quantize_s, self.table.dequantize_s
        return {"latency_ms": Boundaries(edges, 1e3 * (da + db * size), 1e3 * (qa + qb * size))}

    def _price(self) -> None:
        super()._price()  # energy: the profile's model
        quantized = np.ones(self._latency.shape[2], dtype=bool)
        quantized[FP32_INDEX] = False  # a unit's activations at FP32: its float kernels
        t = np.where(quantized[None, :], self.table.int8_s[:, None], self.table.fp32_s[:, None])  # (n, a)
        self._latency = np.broadcast_to(t[:, None, :, None], self._latency.shape).copy()
        self.fixed_latency_s = self.table.fixed_s
