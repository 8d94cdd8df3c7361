"""The quantizable units of a model, as plain records (:class:`UnitInfo`), and the attention matmuls that stay
in float (:class:`AttentionMatmul`).

A unit is what a policy gives one (w_bits, a_bits) pair:

* a Conv2d or Linear layer (``op`` ``conv2d`` / ``linear``): its weight and its input activation;
* under ``quant.scope=hybrid``, the transformer's activation-only units (:data:`ACTIVATION_KINDS`, ``op``
  ``matmul`` / ``layernorm``): ``attention-qk`` (the scaled q and k, operands of q k^T), ``attention-pv`` (the
  softmax probabilities and v, operands of attention x v) and ``layernorm-in`` (the residual stream entering a
  LayerNorm). They carry activation bits only: their ``w_bits`` is ignored (policies write ``null``).

Torch-free: the cost model and the search read these without loading a framework. They are produced by
:func:`hysquant_rl.inventory.inventory` from one traced forward pass.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

KINDS = (
    "conv",
    "depthwise",
    "pointwise",
    "attention-qkv",
    "attention-proj",
    "mlp-fc1",
    "mlp-fc2",
    "classifier",
    "other",
    "attention-qk",
    "attention-pv",
    "layernorm-in",
)
ACTIVATION_KINDS = ("attention-qk", "attention-pv", "layernorm-in")
"""Units with no weight: only their activation bit-width means something."""


@dataclass(frozen=True)
class UnitInfo:
    """One quantizable unit. Shapes are per image (batch dimension dropped); counts are per image.

    Activation-only units (``op`` ``matmul`` or ``layernorm``) have ``params == 0``. A matmul unit's
    ``input_shape`` is one operand's per-image shape (sequences, heads, rows, inner) and ``output_shape`` the
    product's; ``in_channels`` is the reduction length, ``out_channels`` the product's columns, ``tokens`` the
    sequence length, ``heads`` and ``sequences`` as in :class:`AttentionMatmul`. A ``layernorm-in`` unit's
    shapes are the LayerNorm's input and output."""

    index: int  # position in forward order
    name: str  # module name; attention units: "<attention module>.qk" / ".pv"
    op: str  # "conv2d", "linear", "matmul" or "layernorm"
    kind: str  # one of KINDS
    family: str  # "cnn" or "transformer"
    in_channels: int  # in_features for Linear
    out_channels: int  # out_features for Linear
    kernel: tuple[int, int]  # (1, 1) for Linear
    stride: tuple[int, int]  # (1, 1) for Linear
    groups: int
    input_shape: tuple[int, ...]  # as traced at batch 1, batch dim dropped: (C, H, W); Linear (..., C)
    output_shape: tuple[int, ...]
    tokens: int  # rows a Linear multiplies per image (1 for a classifier); H_out * W_out for Conv2d
    params: int  # weight + bias elements
    macs: int  # multiply-accumulates per image
    heads: int = 0  # matmul units
    sequences: int = 0  # matmul units: independent attention problems per image and head

    @property
    def weighted(self) -> bool:
        """False for activation-only units (:data:`ACTIVATION_KINDS`)."""
        return self.kind not in ACTIVATION_KINDS

    @property
    def in_elems(self) -> int:
        """Quantized input-activation elements per image (both operands of a matmul unit)."""
        if self.kind == "attention-qk":  # q and k, same shape
            return 2 * math.prod(self.input_shape)
        if self.kind == "attention-pv":  # probabilities (rows x rows) and v (rows x inner) per head
            seq, heads, rows, inner = self.input_shape
            return seq * heads * rows * (rows + inner)
        return math.prod(self.input_shape)

    @property
    def out_elems(self) -> int:
        """Output elements per image."""
        return math.prod(self.output_shape)

    @property
    def weight_elems(self) -> int:
        if not self.weighted:
            return 0
        return self.out_channels * (self.in_channels // self.groups) * self.kernel[0] * self.kernel[1]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class AttentionMatmul:
    """The two activation x activation matmuls of one attention module, per image."""

    name: str  # the attention module
    heads: int
    tokens: int  # sequence length N
    head_dim: int
    sequences: int  # sequences per image (MobileViT: one per pixel of a patch)
    macs: int  # q k^T plus attention x v

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class OtherOps:
    """What a model runs per inference besides its units and attention matmuls
    (:func:`hysquant_rl.inventory.other_ops`): ``kernels`` (activations, residual adds, ...) and ``views`` (reshapes,
    transposes). The cost model charges each a fixed overhead only (``kernel_overhead_s``, ``view_overhead_s`` of the
    device profile)."""

    kernels: int = 0
    views: int = 0
