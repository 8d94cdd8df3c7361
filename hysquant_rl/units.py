"""The quantizable units of a model, as plain records: each Conv2d/Linear layer (:class:`LayerInfo`) and
each attention module's activation x activation matmuls (:class:`AttentionMatmul`).

Torch-free: the cost model and the search read these without loading a framework. They are produced by
:func:`hysquant_rl.layers.inventory` from one traced forward pass.
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
)
FAMILIES = ("cnn", "transformer")


@dataclass(frozen=True)
class LayerInfo:
    """One quantizable layer. Shapes are per image (batch dimension dropped); counts are per image."""

    index: int  # position in forward order
    name: str
    op: str  # "conv2d" or "linear"
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

    @property
    def in_elems(self) -> int:
        """Input-activation elements per image."""
        return math.prod(self.input_shape)

    @property
    def out_elems(self) -> int:
        """Output elements per image."""
        return math.prod(self.output_shape)

    @property
    def weight_elems(self) -> int:
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
