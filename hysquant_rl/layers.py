"""Inventory of a model's quantizable layers (every Conv2d and Linear), from one traced forward pass.

Names are ``model.named_modules`` names, as the paper's LUT prints them (e.g. ``stages.0.0.conv1_1x1.conv``).
MACs are per image and come from the shapes seen in the trace, so the token count multiplies the Linear
layers inside transformer blocks. Attention matmuls (q k^T and attention x v) are not Conv/Linear layers;
they are inventoried apart, as :class:`AttentionMatmul`, so cost models can price a hybrid in full.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from hysquant_rl.units import AttentionMatmul, LayerInfo


def _kind(name: str, module: nn.Module, classifier: nn.Module | None) -> str:
    if module is classifier:
        return "classifier"
    if isinstance(module, nn.Conv2d):
        if module.groups > 1 and module.groups == module.in_channels:
            return "depthwise"
        if tuple(module.kernel_size) == (1, 1) and module.groups == 1:
            return "pointwise"
        return "conv"
    leaf = name.rsplit(".", 2)[-2:]
    parent, own = leaf if len(leaf) == 2 else ("", leaf[0])
    if own == "qkv" or own in ("q", "k", "v", "kv"):
        return "attention-qkv"
    if own == "proj" and "attn" in parent:
        return "attention-proj"
    if own == "fc1" and "mlp" in parent:
        return "mlp-fc1"
    if own == "fc2" and "mlp" in parent:
        return "mlp-fc2"
    return "other"


def _family(name: str, kind: str, input_shape: tuple[int, ...]) -> str:
    if kind.startswith(("attention", "mlp")) or ".transformer." in f".{name}.":
        return "transformer"
    return "cnn"


def _per_image(shape: tuple[int, ...]) -> tuple[int, ...]:
    # A (B*P, N, C) token tensor traced at B=1 keeps its leading dim: it is part of one image.
    return shape[1:] if len(shape) in (2, 4) else shape


def _classifier(model: nn.Module) -> nn.Module | None:
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    return head if isinstance(head, (nn.Linear, nn.Conv2d)) else None


@torch.inference_mode()
def inventory(model: nn.Module, input_shape: tuple[int, int, int]) -> tuple[list[LayerInfo], list[AttentionMatmul]]:
    """Trace one forward pass of a ``(1, *input_shape)`` zero image and describe every Conv2d/Linear
    (in the order they run) and every attention module (by its ``num_heads``/``qkv`` attributes)."""
    seen: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    order: list[str] = []
    attn: dict[str, tuple[int, ...]] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):

            def hook(mod, inp, out, name=name):
                if name not in seen:
                    order.append(name)
                    seen[name] = (tuple(inp[0].shape), tuple(out.shape))

            hooks.append(m.register_forward_hook(hook))
        elif hasattr(m, "num_heads") and hasattr(m, "qkv"):

            def ahook(mod, inp, name=name):
                attn.setdefault(name, tuple(inp[0].shape))

            hooks.append(m.register_forward_pre_hook(ahook))
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters())
        model(torch.zeros((1, *input_shape), dtype=param.dtype, device=param.device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()

    modules = dict(model.named_modules())
    classifier = _classifier(model)
    layers = []
    for index, name in enumerate(order):
        m = modules[name]
        in_shape, out_shape = seen[name]
        kind = _kind(name, m, classifier)
        params = sum(p.numel() for p in m.parameters(recurse=False))
        if isinstance(m, nn.Conv2d):
            kernel, stride, groups = tuple(m.kernel_size), tuple(m.stride), m.groups
            cin, cout = m.in_channels, m.out_channels
            tokens = math.prod(out_shape[2:])
            macs = tokens * cout * (cin // groups) * kernel[0] * kernel[1]
        else:
            kernel, stride, groups = (1, 1), (1, 1), 1
            cin, cout = m.in_features, m.out_features
            tokens = math.prod(in_shape[:-1])  # batch is 1: every leading dim is a token dim
            macs = tokens * cin * cout
        layers.append(
            LayerInfo(
                index=index,
                name=name,
                op="conv2d" if isinstance(m, nn.Conv2d) else "linear",
                kind=kind,
                family=_family(name, kind, in_shape),
                in_channels=cin,
                out_channels=cout,
                kernel=kernel,
                stride=stride,
                groups=groups,
                input_shape=_per_image(in_shape),
                output_shape=_per_image(out_shape),
                tokens=tokens,
                params=params,
                macs=macs,
            )
        )
    matmuls = []
    for name, shape in attn.items():
        m = modules[name]
        heads = int(m.num_heads)
        channels = shape[-1]
        head_dim = int(getattr(m, "head_dim", channels // heads))
        sequences = math.prod(shape[:-2]) if len(shape) > 2 else 1
        n = shape[-2] if len(shape) > 2 else shape[0]
        matmuls.append(
            AttentionMatmul(
                name=name,
                heads=heads,
                tokens=n,
                head_dim=head_dim,
                sequences=sequences,
                macs=2 * sequences * heads * n * n * head_dim,
            )
        )
    return layers, matmuls
