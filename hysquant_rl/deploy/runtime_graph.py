"""The *runtime* layout: a policy's ONNX graph in the form a runtime executes as integer kernels.

What a runtime runs fast is its own quantizer's layout. There are two (``layout``), one per runtime
(:mod:`hysquant_rl.deploy.runtimes`):

* ``openvino``: NNCF's placement, which OpenVINO's CPU plugin runs as u8 x i8 kernels: a QuantizeLinear/
  DequantizeLinear pair on each activation input of a quantized Conv, MatMul or Gemm (OpenVINO's FakeQuantize),
  int8 symmetric per-channel weights behind a DequantizeLinear (7-bit on a CPU without VNNI: OpenVINO's u8 x s8
  kernels saturate there too, as NNCF's overflow fix says), BatchNorm folded, nothing on their outputs (OpenVINO
  fuses the requantization into the kernel before the next quantized unit); every other op stays float. Built by the
  same ``quantize_static`` as below, limited to those op types with their outputs left unquantized. The operands of
  a MatMul of two activations (attention's q k^T and p v) are int8 symmetric, zero point 0 (:func:`matmul_operands`),
  as NNCF's ``ModelType.TRANSFORMER`` forces them: the CPU plugin runs such a MatMul as an integer kernel only on
  u8/i8 x i8 inputs without a zero point, and only then tokenizes MatMul-Softmax-MatMul into an int8 MHA ``Subgraph``
  (on a CPU with VNNI or AMX; elsewhere the two MatMuls run as integer kernels of their own); a Softmax output keeps
  uint8 [0, 1] (zero point 0).
* ``onnxruntime`` (described from here on), onnxruntime's own: int8 symmetric per-channel
weights (zero point 0; 7-bit on a CPU without VNNI, as onnxruntime's quantization guide prescribes, else its u8 x s8
kernels saturate), BatchNorm folded into its convolution, biases in int32 at scale ``s_x * s_w``, uint8
activations whose range contains 0, a QuantizeLinear on every quantized op's output, and the SiLU, residual Add,
Concat and pooling between quantized tensors in their QDQ forms, which onnxruntime fuses into ``QLinearConv``,
``QLinearMatMul``, ``QGemm``, ``QLinearSigmoid``, ``QLinearMul``, ``QLinearAdd``, ``QLinearConcat``,
``QLinearSoftmax`` and ``QLinearGlobalAveragePool``. An FP32 unit is a plain float op on float weights, with
Quantize/DequantizeLinear only where an int8 segment begins or ends; LayerNorm always runs in float (onnxruntime
has no integer LayerNorm on the CPU).

How it is built, once per model (:class:`RuntimeGraphs`):

1. the FP32 graph: the model (timm's own forward passes) with every attention's scale folded into the rows of its
   ``qkv`` weight that make q (one float multiply fewer per attention, exact up to float rounding), traced
   (:mod:`hysquant_rl.deploy.onnx_trace`) and pre-processed by onnxruntime's ``quant_pre_process`` (shape inference,
   Conv+BatchNorm folding);
2. the *template*: onnxruntime's own ``quantize_static`` of that graph (QDQ format, per-channel int8 weights, uint8
   activations, every op but LayerNorm; the logits stay float), calibrated on the calibration split with
   ``quant.calibrator`` (min-max, or the percentile rule); its activation ranges are cached for the oracle below.

A policy's graph (:meth:`RuntimeGraphs.graph`) is then derived from the template in milliseconds: the set of nodes
a policy quantizes (:meth:`RuntimeGraphs.quantized_nodes`: the nodes of its int8 units, and every other op whose
float inputs are all quantized, in forward order) keeps the template's Q/DQ; every other node reads its float
inputs back, and the Q/DQ nodes nothing reads any more are dropped. That is exactly what ``quantize_static`` with
``nodes_to_quantize`` set to those nodes writes (the tests compare the two on random policies), at a fraction of
its cost (about 2 s per call on this model, which a search of hundreds of policies cannot afford).

Units map to graph nodes by the module scopes the exporter writes into node names (``/stages/stages.0/...``):
a Conv2d or Linear unit is the Conv (MatMul and its bias Add; Gemm) of its module, an ``attention-qk`` unit the
MatMul of q and k, an ``attention-pv`` unit the Softmax and the MatMul of the probabilities and v, a
``layernorm-in`` unit its LayerNormalization (float on this runtime).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from timm.layers.attention import Attention
from torch import nn

from hysquant_rl.bits import FP32_BITS
from hysquant_rl.deploy.onnx_trace import check, onnx_module, trace
from hysquant_rl.deploy.runtimes import INPUT
from hysquant_rl.errors import HySquantError
from hysquant_rl.io import atomic_write, private_temp_dir

if TYPE_CHECKING:
    from hysquant_rl.policy import QuantPolicy
    from hysquant_rl.units import UnitInfo

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
LAYOUT_VERSION = 3  # bump when the rules that derive a policy's graph change: caches keyed by the layout go stale
FLOAT_ONLY_OPS = ("LayerNormalization",)  # no integer kernel on onnxruntime's CPU provider: always float
_Q, _DQ = "QuantizeLinear", "DequantizeLinear"
LAYOUTS = ("onnxruntime", "openvino")  # the ONNX layouts: onnxruntime's own, NNCF's placement for OpenVINO
_CALIBRATORS = {"minmax": "MinMax", "percentile": "Percentile"}  # quant.calibrator -> onnxruntime's method


# -- the FP32 model as the runtime takes it ---------------------------------------------------------------------
class FoldedAttention(Attention):
    """timm's ``Attention`` with its scale folded into q's rows of ``qkv`` (:func:`fold_attention`): softmax(q k^T) v
    written out, with no scale multiply; q/k norms, masks, gates and dropout are not supported (MobileViT has none)."""

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = (q @ k.transpose(-2, -1)).softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(B, N, self.attn_dim))


def fold_attention(model: nn.Module) -> nn.Module:
    """``model`` (modified in place) with every timm ``Attention`` a :class:`FoldedAttention`: q's rows of the qkv
    weight and bias multiplied by the attention's scale. Raises a one-line error for an attention it cannot fold."""
    for name, m in model.named_modules():
        if type(m) is not Attention:
            continue
        plain = all(isinstance(getattr(m, a, None), nn.Identity) for a in ("q_norm", "k_norm", "norm"))
        if not plain or getattr(m, "gate", None) is not None:
            raise HySquantError(f"attention {name} has q/k norms or a gate: the runtime layout cannot fold its scale")
        with torch.no_grad():
            rows = m.attn_dim  # q's rows come first in qkv
            m.qkv.weight[:rows] *= m.scale
            if m.qkv.bias is not None:
                m.qkv.bias[:rows] *= m.scale
        m.__class__ = FoldedAttention
    return model


def float_graph(model: nn.Module, input_shape: Sequence[int]) -> Any:
    """The FP32 ``ModelProto`` the runtime layout starts from: ``model`` (float, eval; copied, not changed) with its
    attention scales folded, traced, then onnxruntime's ``quant_pre_process`` (shape inference, BatchNorm folding)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    onnx = onnx_module()
    folded = fold_attention(copy.deepcopy(model).eval())
    proto = trace(folded, input_shape)
    with tempfile.TemporaryDirectory() as tmp:
        raw, pre = Path(tmp) / "raw.onnx", Path(tmp) / "pre.onnx"
        onnx.save(proto, str(raw))
        quant_pre_process(str(raw), str(pre))
        return onnx.load(str(pre))


# -- names: graph nodes -> module paths -> units -----------------------------------------------------------------
def module_path(node_name: str) -> str:
    """The module a node (or tensor) name's scopes point at: ``/stages/stages.2/stages.2.1/conv_1x1/Conv`` ->
    ``stages.2.1.conv_1x1`` (a scope that extends the one before it with ``.<child>`` names that child)."""
    parts, prev = [], None
    for scope in node_name.strip("/").split("/")[:-1]:
        parts.append(scope[len(prev) + 1 :] if prev and scope.startswith(prev + ".") else scope)
        prev = scope
    return ".".join(parts)


class Graph:
    """Producer and consumer indices of one ONNX graph (names of nodes and tensors)."""

    def __init__(self, graph: Any) -> None:
        self.nodes = {n.name: n for n in graph.node}
        self.producer = {out: n.name for n in graph.node for out in n.output}
        self.consumers: dict[str, list[str]] = {}
        for n in graph.node:
            for x in n.input:
                self.consumers.setdefault(x, []).append(n.name)
        self.initializers = {t.name for t in graph.initializer}
        floats = {t.name for t in graph.initializer if t.data_type == 1}
        for v in (*graph.input, *graph.value_info, *graph.output):
            if v.type.tensor_type.elem_type == 1:  # FLOAT
                floats.add(v.name)
        self.floats = floats


def unit_nodes(proto: Any, units: Sequence[UnitInfo]) -> list[list[str]]:
    """For each unit (forward order), the names of the graph nodes that are that unit (see the module docstring).
    Raises a one-line error naming a unit the graph does not show."""
    g = Graph(proto.graph)
    by_module: dict[str, list[Any]] = {}
    for n in proto.graph.node:
        by_module.setdefault(module_path(n.name), []).append(n)
    out = []
    for unit in units:
        found: list[str] = []
        if unit.op in ("conv2d", "linear"):
            found = [n.name for n in by_module.get(unit.name, []) if n.op_type in ("Conv", "MatMul", "Gemm", "Add")]
        elif unit.op == "layernorm":
            found = [n.name for n in by_module.get(unit.name, []) if n.op_type == "LayerNormalization"]
        elif unit.op == "matmul":
            attention, _, which = unit.name.rpartition(".")
            nodes = by_module.get(attention, [])
            softmax = [n for n in nodes if n.op_type == "Softmax"]
            reads_softmax = {c for s in softmax for c in g.consumers.get(s.output[0], [])}
            feeds_softmax = {g.producer.get(x) for s in softmax for x in s.input}
            matmuls = [n.name for n in nodes if n.op_type == "MatMul"]
            if which == "qk":
                found = [m for m in matmuls if m in feeds_softmax]
            else:
                found = [s.name for s in softmax] + [m for m in matmuls if m in reads_softmax]
        if not found:
            raise HySquantError(
                f"unit {unit.name} ({unit.kind}) has no node in the exported graph: the runtime layout knows timm's"
                " Conv2d, Linear, Attention and LayerNorm modules; use search.space=simulated for this model"
            )
        out.append(found)
    return out


# -- calibration and the template --------------------------------------------------------------------------------
_VIEWS = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten")  # shape-only ops: a tensor's values pass unchanged
_NON_NEGATIVE = ("Softmax", "Sigmoid", "Relu")  # outputs >= 0 by construction


def matmul_operands(proto: Any) -> dict[str, list[dict[str, Any]]]:
    """onnxruntime's ``TensorQuantOverrides`` of the ``openvino`` layout: int8 symmetric (zero point 0) for each
    activation operand of a MatMul whose two inputs are both activations (attention's q k^T and p v), which is what
    OpenVINO's CPU plugin needs to run it as an integer kernel (u8/i8 x i8, no zero point) and to tokenize
    MatMul-Softmax-MatMul into an int8 ``Subgraph``; NNCF's ``ModelType.TRANSFORMER`` forces these quantizers
    symmetric for the same reason. The first operand when it is non-negative by construction (a Softmax output,
    through shape-only ops) keeps onnxruntime's uint8, whose zero point is 0 there (u8, NNCF's unsigned symmetric)."""
    from onnxruntime.quantization import QuantType

    g = Graph(proto.graph)
    overrides: dict[str, list[dict[str, Any]]] = {}
    for node in proto.graph.node:
        if node.op_type != "MatMul" or any(x in g.initializers for x in node.input):
            continue
        for port, tensor in enumerate(node.input[:2]):
            source = tensor
            while source in g.producer and g.nodes[g.producer[source]].op_type in _VIEWS:
                source = g.nodes[g.producer[source]].input[0]
            if port == 0 and source in g.producer and g.nodes[g.producer[source]].op_type in _NON_NEGATIVE:
                continue
            overrides[tensor] = [{"quant_type": QuantType.QInt8, "symmetric": True}]
    return overrides


def quantize(
    float_path: Path,
    out: Path,
    ranges: Path,
    *,
    images: np.ndarray | None = None,
    calibrator: str = "minmax",
    percentile: float = 99.99,
    nodes: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    layout: str = "onnxruntime",
    int8_weights: bool = True,
) -> None:
    """onnxruntime's ``quantize_static`` of the FP32 graph at ``float_path`` into ``out``, in the runtime layout's
    settings (QDQ, per-channel int8 weights, uint8 activations, float logits; without ``int8_weights`` (a CPU without
    VNNI: :meth:`hysquant_rl.deploy.runtimes.GraphRuntime.int8_weights`), 7-bit weights; ``openvino``: only Conv,
    MatMul and Gemm, their outputs float, the operands of a MatMul of two activations int8 symmetric:
    :func:`matmul_operands`).
    ``images`` (N, C, H, W) calibrate the activation ranges, which are cached in ``ranges`` (a later call without
    images reuses them); ``nodes`` limits the quantized nodes (None: every node but ``exclude``)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self, x: np.ndarray) -> None:
            self.batches = iter([{INPUT: x[i : i + 64]} for i in range(0, len(x), 64)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    if calibrator not in _CALIBRATORS:
        raise HySquantError(
            f"quant.calibrator={calibrator} has no onnxruntime counterpart: use minmax or percentile for"
            " search.space=executable, or search.space=simulated"
        )
    if layout not in LAYOUTS:  # one layout per runtime, named after it
        raise HySquantError(f"unknown runtime layout {layout!r}: use one of {', '.join(LAYOUTS)}")
    options: dict[str, Any] = {"OpTypesToExcludeOutputQuantization": ["Gemm"]}  # the logits stay float
    op_types = None
    if layout == "openvino":
        op_types = ["Conv", "MatMul", "Gemm"]
        options["OpTypesToExcludeOutputQuantization"] = op_types
        options["TensorQuantOverrides"] = matmul_operands(onnx_module().load(str(float_path)))
    if calibrator == "percentile":
        options["CalibPercentile"] = percentile
    logging.getLogger().disabled, quiet = True, logging.getLogger().disabled  # its notes on every call
    try:
        quantize_static(
            str(float_path),
            str(out),
            None if images is None else Reader(np.asarray(images, dtype=np.float32)),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=not int8_weights,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=op_types,
            nodes_to_quantize=list(nodes) if nodes is not None else None,
            nodes_to_exclude=list(exclude),
            calibrate_method=getattr(CalibrationMethod, _CALIBRATORS[calibrator]),
            calibration_cache_path=str(ranges),
            extra_options=options,
        )
    finally:
        logging.getLogger().disabled = quiet


class RuntimeGraphs:
    """The runtime layout of one model (see the module docstring): its FP32 graph, the template, and any policy's
    graph derived from them.

    Args:
        model: the FP32 model (a :class:`~hysquant_rl.quant.model.QuantModel`'s ``model`` is unwrapped first).
        layers: its units, forward order.
        input_shape: one image's (C, H, W).
        calib_images: (N, C, H, W) calibration images (the calibration split).
        calibrator, percentile: ``quant.calibrator`` and ``quant.percentile``.
        layout: ``onnxruntime`` or ``openvino`` (the runtime's: see the module docstring).
        int8_weights: whether weights use all 8 bits (else 7: a CPU without VNNI).
    """

    def __init__(
        self,
        model: nn.Module,
        units: Sequence[UnitInfo],
        input_shape: Sequence[int],
        calib_images: np.ndarray,
        calibrator: str = "minmax",
        percentile: float = 99.99,
        layout: str = "onnxruntime",
        int8_weights: bool = True,
    ) -> None:
        from hysquant_rl.quant.model import float_copy

        onnx = onnx_module()
        start = time.perf_counter()
        self.layout, self.int8_weights = layout, int8_weights
        self.units = list(units)
        self.input_shape = tuple(input_shape)
        self.float = float_graph(float_copy(model), input_shape)
        self.node_names = unit_nodes(self.float, self.units)
        # The files onnxruntime's calibration needs live only while the layout is built (hysquant-runtime-<PID>-*):
        # removed at the end of this call, by the folder's finalizer on an error, and by the next run's sweep after
        # a kill -9 (a Ray worker that Ray ends included); float_path and ranges are written again on use.
        built = private_temp_dir("runtime")
        tmp = Path(built.name)
        float_path, ranges = tmp / "float.onnx", tmp / "ranges.json"
        onnx.save(self.float, str(float_path))
        self.float_only = [n.name for n in self.float.graph.node if n.op_type in FLOAT_ONLY_OPS]
        template = tmp / "template.onnx"
        quantize(
            float_path,
            template,
            ranges,
            images=calib_images,
            calibrator=calibrator,
            percentile=percentile,
            exclude=self.float_only,
            layout=layout,
            int8_weights=int8_weights,
        )
        self.template = onnx.load(str(template))
        identity = f"{LAYOUT_VERSION}:{layout}".encode()
        self.sha256 = hashlib.sha256(identity + self.template.SerializeToString()).hexdigest()
        self._index()
        # A reshape, transpose, split... quantizes its output with its input's parameters (onnxruntime shares them so
        # that the op runs on uint8). Where a policy leaves such an op in float, the tensor it outputs is quantized by
        # its consumer with parameters of its own: onnxruntime's, read from a second template without those ops.
        shared = {t: q for t, q in self._q_of.items() if self._g.nodes[q].input[1] != f"{t}_scale"}
        self._own_params: dict[str, list[Any]] = {}
        if shared:
            unshared = tmp / "unshared.onnx"
            producers = sorted({self._g.producer[t] for t in shared})
            quantize(
                float_path,
                unshared,
                ranges,
                exclude=[*self.float_only, *producers],
                layout=layout,
                int8_weights=int8_weights,
            )
            own = {t.name: t for t in onnx.load(str(unshared)).graph.initializer}
            for t in shared:
                names = (f"{t}_scale", f"{t}_zero_point")
                if all(n in own for n in names):
                    self._own_params[t] = [own[n] for n in names]
        self._ranges = ranges.read_bytes() if ranges.is_file() else None
        self._kept: tempfile.TemporaryDirectory | None = None
        built.cleanup()
        log.info(
            "%s runtime layout: %d nodes, template of %d quantized ops, built in %.1f s",
            layout,
            len(self.float.graph.node),
            len(self._quantizable),
            time.perf_counter() - start,
        )

    @property
    def float_path(self) -> Path:
        """The FP32 graph as a file (for :func:`quantize` again: tests, benchmarks), see :meth:`_file`."""
        return self._file("float.onnx")

    @property
    def ranges(self) -> Path:
        """The calibrated activation ranges as a file (for :func:`quantize` again), see :meth:`_file`."""
        return self._file("ranges.json")

    def _file(self, name: str) -> Path:
        """``float.onnx`` or ``ranges.json`` in a private temporary folder of this process, written on first use and
        removed at exit (swept by a later run if this process is killed)."""
        if self._kept is None:
            self._kept = private_temp_dir("runtime")
            folder = Path(self._kept.name)
            onnx_module().save(self.float, str(folder / "float.onnx"))
            if self._ranges is not None:
                (folder / "ranges.json").write_bytes(self._ranges)
        return Path(self._kept.name) / name

    def _index(self) -> None:
        """What the derivation reads of the template and the FP32 graph."""
        self._g = Graph(self.template.graph)
        self._f = Graph(self.float.graph)
        g = self._g
        self._order = [n.name for n in self.float.graph.node]  # forward (topological) order
        unit_of = {name: u for u, names in enumerate(self.node_names) for name in names}
        self._unit_of = unit_of
        # nodes the template quantizes: some input is read through a DequantizeLinear
        self._quantizable = {
            n for n in self._order if n in g.nodes and any(self._dequantized(x) for x in g.nodes[n].input)
        }
        # template tensors that are quantized activations: original tensor -> its Q node
        self._q_of = {g.nodes[q].input[0]: q for q in g.nodes if g.nodes[q].op_type == _Q}
        # outputs the template writes as quantized: producer's output tensor has a Q (graph outputs renamed by it)
        self._quantized_out = set(self._q_of)
        # a DequantizeLinear's output -> the activation tensor it dequantizes (through its QuantizeLinear)
        self._dq_of_tensor = {
            dq.output[0]: g.nodes[g.producer[dq.input[0]]].input[0]
            for dq in g.nodes.values()
            if dq.op_type == _DQ and dq.input[0] in g.producer and g.nodes[g.producer[dq.input[0]]].op_type == _Q
        }

    def _dequantized(self, tensor: str) -> bool:
        """Whether a template tensor is the output of a DequantizeLinear."""
        producer = self._g.producer.get(tensor)
        return producer is not None and self._g.nodes[producer].op_type == _DQ

    # -- which nodes a policy quantizes --------------------------------------------------------------------------
    def quantized_nodes(self, bits: Sequence[tuple[int, int]] | np.ndarray) -> set[str]:
        """The nodes of the FP32 graph a policy quantizes: the nodes of each unit at 8 bits (not FP32), and every other
        node *between* int8 units: one the template quantizes whose float activation inputs all come out of quantized
        nodes (forward order), and from which an int8 unit is reached through such nodes (backward order): a SiLU,
        residual Add, Concat, pooling or reshape. An op after the last int8 unit of a segment stays float (onnxruntime
        fuses it there, e.g. SiLU into QuickGelu and a residual Add into the LayerNorm after it)."""
        bits = np.asarray(bits)
        if len(bits) != len(self.node_names):
            raise HySquantError(f"a policy of {len(bits)} units for a graph of {len(self.node_names)}")
        int8 = {name for u, names in enumerate(self.node_names) if bits[u, 1] != FP32_BITS for name in names}
        chosen: set[str] = set()
        quantized_tensors: set[str] = set()
        f = self._f
        for name in self._order:
            if name not in self._quantizable:
                continue
            node = f.nodes[name]
            if name in self._unit_of:
                take = name in int8
            else:
                acts = [x for x in node.input if x and x not in f.initializers and x in f.floats]
                take = bool(acts) and all(x in quantized_tensors for x in acts)
            if take:
                chosen.add(name)
                quantized_tensors.update(o for o in node.output if o in self._quantized_out)
        leads = set(int8)  # nodes from which an int8 unit is reached through chosen non-unit nodes
        for name in reversed(self._order):
            if name in chosen and name not in int8:
                readers = (c for o in f.nodes[name].output for c in f.consumers.get(o, ()))
                if any(c in leads for c in readers):
                    leads.add(name)
        return chosen & leads

    # -- a policy's graph ----------------------------------------------------------------------------------------
    def graph(self, bits: Sequence[tuple[int, int]] | np.ndarray) -> Any:
        """The ``ModelProto`` of a policy (L, 2) in the runtime layout (see the module docstring)."""
        return self.derive(self.quantized_nodes(bits))

    def artefact(self, bits: Sequence[tuple[int, int]] | np.ndarray) -> bytes:
        """The policy's graph, serialised: what a runtime opens."""
        return self.graph(bits).SerializeToString()

    def derive(self, chosen: set[str]) -> Any:
        """The template with only ``chosen`` nodes quantized (what ``quantize_static(nodes_to_quantize=chosen)``
        writes): other nodes read their float inputs back, and Q/DQ nodes nothing reads are removed."""
        if not chosen:
            return copy.deepcopy(self.float)
        g, f = self._g, self._f
        proto = copy.deepcopy(self.template)
        graph = proto.graph
        dq_of_tensor = self._dq_of_tensor

        def kept(tensor: str) -> bool:  # a quantized activation whose producer or some consumer is chosen
            producer = g.producer.get(tensor)
            if producer in chosen and self.layout != "openvino":  # openvino: no op's output is quantized
                return True
            dqs = g.consumers.get(g.nodes[self._q_of[tensor]].output[0], [])
            return any(c in chosen for dq in dqs for c in g.consumers.get(g.nodes[dq].output[0], []))

        produced = {out for n in graph.node if n.op_type not in (_Q, _DQ) for out in n.output}
        initializers = {t.name: t for t in graph.initializer}
        float_inits = {t.name: t for t in self.float.graph.initializer}
        for node in graph.node:
            if node.op_type in (_Q, _DQ) or node.name in chosen:
                continue
            original = f.nodes[node.name]
            for i, x in enumerate(node.input):
                if not self._dequantized(x) or (x in dq_of_tensor and kept(dq_of_tensor[x])):
                    continue
                restored = original.input[i]
                if restored in float_inits and (restored in produced or restored in g.producer):
                    alias = f"{restored}_float"  # the template reuses the name for a DequantizeLinear's output
                    if alias not in initializers:
                        t = graph.initializer.add()
                        t.CopyFrom(float_inits[restored])
                        t.name = alias
                        initializers[alias] = t
                    restored = alias
                elif restored in float_inits and restored not in initializers:
                    t = graph.initializer.add()
                    t.CopyFrom(float_inits[restored])
                    initializers[restored] = t
                node.input[i] = restored
        self._unshare(graph, chosen, kept)
        _prune(proto)
        _unalias(graph)
        return proto

    def _unshare(self, graph: Any, chosen: set[str], kept: Any) -> None:
        """Give a kept quantized tensor whose producer stays float (a reshape left in float) its own parameters, as
        onnxruntime's quantizer does (see ``_own_params``)."""
        initializers = {t.name for t in graph.initializer}
        for tensor, (scale, zero) in self._own_params.items():
            if self._g.producer.get(tensor) in chosen or not kept(tensor):
                continue
            for t in (scale, zero):
                if t.name not in initializers:
                    graph.initializer.add().CopyFrom(t)
                    initializers.add(t.name)
            q = self._q_of[tensor]
            for node in graph.node:
                if node.name == q or (node.op_type == _DQ and self._dq_of_tensor.get(node.output[0]) == tensor):
                    node.input[1], node.input[2] = scale.name, zero.name

    def save(
        self, bits: Sequence[tuple[int, int]] | np.ndarray, policy: QuantPolicy, out_dir: str | os.PathLike
    ) -> Path:
        """Write ``out_dir/model.onnx``: the policy's runtime graph with the policy JSON in its metadata
        (``hysquant_policy``), checked by ``onnx.checker``; atomic."""
        proto = self.graph(bits)
        entry = proto.metadata_props.add()
        entry.key, entry.value = "hysquant_policy", json.dumps(policy.to_dict())
        check(proto)
        return atomic_write(Path(out_dir) / ONNX_FILE, lambda f: f.write(proto.SerializeToString()))


def _unalias(graph: Any) -> None:
    """A float initializer restored under ``<name>_float`` (the template's DequantizeLinear took ``<name>``) takes its
    own name back once that DequantizeLinear is gone, as onnxruntime's quantizer leaves it."""
    taken = {o for n in graph.node for o in n.output} | {t.name for t in graph.initializer}
    for t in graph.initializer:
        if t.name.endswith("_float") and t.name[: -len("_float")] not in taken:
            alias, t.name = t.name, t.name[: -len("_float")]
            for node in graph.node:
                for i, x in enumerate(node.input):
                    if x == alias:
                        node.input[i] = t.name


def _prune(proto: Any) -> None:
    """Remove nodes whose outputs nothing reads (Q/DQ left behind), repeatedly, then unused initializers and
    value_info of tensors that no longer exist."""
    graph = proto.graph
    outputs = {o.name for o in graph.output}
    while True:
        read = {x for n in graph.node for x in n.input} | outputs
        dead = [n for n in graph.node if n.op_type in (_Q, _DQ) and not any(o in read for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    read = {x for n in graph.node for x in n.input} | outputs
    for t in [t for t in graph.initializer if t.name not in read]:
        graph.initializer.remove(t)
    alive = read | {o for n in graph.node for o in n.output}
    for v in [v for v in graph.value_info if v.name not in alive]:
        graph.value_info.remove(v)
