"""Inventory of a model's quantizable units, from one traced forward pass.

``scope="linear"``: every Conv2d and Linear. ``scope="hybrid"`` (the default) adds the transformer's
activation-only units (:data:`hysquant_rl.units.ACTIVATION_KINDS`): the ``attention-qk`` and ``attention-pv``
operands of every attention module of a recognised kind (:func:`recognised_attention`: timm's ``Attention``,
which every MobileViT v1 uses), and the input of every ``nn.LayerNorm`` (``layernorm-in``).

Names are ``model.named_modules`` names, as the paper's LUT prints them (e.g. ``stages.0.0.conv1_1x1.conv``);
an attention module's units are ``<module>.qk`` and ``<module>.pv``. MACs are per image and come from the shapes
seen in the trace, so the token count multiplies the Linear layers inside transformer blocks. Attention
matmuls that are not units (``scope="linear"``, or a module of a kind not recognised, reported in one warning
line) are inventoried apart, as :class:`AttentionMatmul`, so cost models can price a hybrid in full.
"""

from __future__ import annotations

import logging
import math

import torch
from timm.layers.attention import Attention
from torch import nn

from hysquant_rl.registry import Registry
from hysquant_rl.settings import SCOPES
from hysquant_rl.units import AttentionMatmul, OtherOps, UnitInfo

log = logging.getLogger(__name__)


ATTENTION: Registry[type[nn.Module]] = Registry("attention module", "an attention class")
"""The attention modules whose matmul operands become ``attention-qk`` and ``attention-pv`` units, by name: each must
compute ``softmax(q k^T * scale) v`` from ``qkv``, ``num_heads`` and ``scale`` as timm's ``Attention`` does (the
quantizer runs it unfused with its operands exposed: :class:`hysquant_rl.quant.model.QuantAttention`). Another kind is
named in one warning and stays float."""
ATTENTION.register("timm.Attention")(Attention)


def recognised_attention(module: nn.Module) -> bool:
    """An attention module whose matmul operands the quantizer can expose: a class of :data:`ATTENTION` (or the
    quantizer's own subclass of one, :class:`hysquant_rl.quant.model.QuantAttention`)."""
    kinds = tuple(cls for _, cls in ATTENTION.items())
    return type(module) in kinds or getattr(type(module), "exposes_attention_units", False)


def is_attention(module: nn.Module) -> bool:
    """Any multi-head attention module (``num_heads`` and ``qkv`` attributes), recognised or not."""
    return hasattr(module, "num_heads") and hasattr(module, "qkv")


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
def inventory(
    model: nn.Module, input_shape: tuple[int, int, int], scope: str = "hybrid"
) -> tuple[list[UnitInfo], list[AttentionMatmul]]:
    """Trace one forward pass of a ``(1, *input_shape)`` zero image and describe every quantizable unit of
    ``scope`` in the order they run, and every attention module whose matmuls are not units."""
    if scope not in SCOPES:
        raise ValueError(f"scope={scope!r} is unknown: use one of {', '.join(SCOPES)}")
    hybrid = scope == "hybrid"
    seen: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    order: list[str] = []
    attn: dict[str, tuple[int, ...]] = {}
    hooks = []
    modules = dict(model.named_modules())
    units_of: dict[str, str] = {}  # attention module -> its qkv layer name (the units run right after it)
    skipped = []
    for name, m in modules.items():
        if isinstance(m, (nn.Conv2d, nn.Linear)):

            def hook(mod, inp, out, name=name):
                if name not in seen:
                    order.append(name)
                    seen[name] = (tuple(inp[0].shape), tuple(out.shape))

            hooks.append(m.register_forward_hook(hook))
        elif hybrid and isinstance(m, nn.LayerNorm):

            def nhook(mod, inp, name=name):
                if name not in seen:
                    order.append(name)
                    seen[name] = (tuple(inp[0].shape), tuple(inp[0].shape))

            hooks.append(m.register_forward_pre_hook(nhook))
        elif is_attention(m):

            def ahook(mod, inp, name=name):
                attn.setdefault(name, tuple(inp[0].shape))

            hooks.append(m.register_forward_pre_hook(ahook))
            if hybrid and recognised_attention(m):
                units_of[name] = f"{name}.qkv"
            elif hybrid:
                skipped.append(f"{name} ({type(m).__name__})")
    if skipped:
        log.warning("attention modules of a kind not recognised stay in float: %s", ", ".join(skipped))
    for name in units_of:  # registered after the qkv layer's own hook, so the units follow it in order

        def uhook(mod, inp, out, name=name):
            if f"{name}.qk" not in seen:
                order.extend((f"{name}.qk", f"{name}.pv"))
                seen[f"{name}.qk"] = seen[f"{name}.pv"] = ((), ())

        hooks.append(modules[name].qkv.register_forward_hook(uhook))
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters())
        model(torch.zeros((1, *input_shape), dtype=param.dtype, device=param.device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()

    classifier = _classifier(model)
    units = []
    for index, name in enumerate(order):
        parent, _, own = name.rpartition(".")
        if parent in units_of and own in ("qk", "pv"):
            units.append(_attention_unit(index, name, own, modules[parent], attn[parent]))
            continue
        m = modules[name]
        in_shape, out_shape = seen[name]
        if isinstance(m, nn.LayerNorm):
            units.append(
                UnitInfo(
                    index=index,
                    name=name,
                    op="layernorm",
                    kind="layernorm-in",
                    family=_family(name, "layernorm-in", in_shape),
                    in_channels=in_shape[-1],
                    out_channels=in_shape[-1],
                    kernel=(1, 1),
                    stride=(1, 1),
                    groups=1,
                    input_shape=_per_image(in_shape),
                    output_shape=_per_image(out_shape),
                    tokens=math.prod(in_shape[:-1]),
                    params=0,
                    macs=0,
                )
            )
            continue
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
        units.append(
            UnitInfo(
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
    matmuls = [_matmul(name, modules[name], shape) for name, shape in attn.items() if name not in units_of]
    return units, matmuls


def _attention_shape(m: nn.Module, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """(heads, sequence length N, head dim, sequences per image) of an attention module's traced input."""
    heads = int(m.num_heads)
    head_dim = int(getattr(m, "head_dim", shape[-1] // heads))
    sequences = math.prod(shape[:-2]) if len(shape) > 2 else 1
    n = shape[-2] if len(shape) > 2 else shape[0]
    return heads, n, head_dim, sequences


def _matmul(name: str, m: nn.Module, shape: tuple[int, ...]) -> AttentionMatmul:
    heads, n, d, sequences = _attention_shape(m, shape)
    return AttentionMatmul(
        name=name, heads=heads, tokens=n, head_dim=d, sequences=sequences, macs=2 * sequences * heads * n * n * d
    )


def _attention_unit(index: int, name: str, own: str, m: nn.Module, shape: tuple[int, ...]) -> UnitInfo:
    """The ``attention-qk`` (q k^T: reduce over the head dim into N x N scores) or ``attention-pv`` (P v: reduce
    over N into N x head-dim outputs) unit of attention module ``m``."""
    heads, n, d, seq = _attention_shape(m, shape)
    qk = own == "qk"
    return UnitInfo(
        index=index,
        name=name,
        op="matmul",
        kind="attention-qk" if qk else "attention-pv",
        family="transformer",
        in_channels=d if qk else n,
        out_channels=n if qk else d,
        kernel=(1, 1),
        stride=(1, 1),
        groups=1,
        input_shape=(seq, heads, n, d),
        output_shape=(seq, heads, n, n if qk else d),
        tokens=n,
        params=0,
        macs=seq * heads * n * n * d,
        heads=heads,
        sequences=seq,
    )


# Calls that launch no kernel of their own on a deployed model: shape queries, eval-mode dropout, assertions, and
# BatchNorm (folded into the preceding convolution by every deployment runtime).
_FREE_CALLS = frozenset(
    "__get__ _assert size dim dropout batch_norm zeros __getitem__ __len__ __iter__ __bool__ __format__".split()
)
# Views and layout changes: free on a GPU runtime, nodes of their own on onnxruntime (with their shape arithmetic).
_VIEW_CALLS = frozenset(
    "view reshape flatten transpose permute unbind unsqueeze squeeze split chunk contiguous expand".split()
)
# Calls that the cost model prices as units or as fixed attention matmuls; layer_norm only under scope=hybrid.
_PRICED_CALLS = frozenset("conv2d linear scaled_dot_product_attention matmul __matmul__ softmax bmm".split())


def other_ops(model: nn.Module, shape: tuple[int, ...], scope: str = "hybrid") -> OtherOps:
    """What one forward pass of ``model`` on a (1, *shape) input runs beyond what the cost model prices as units or
    attention matmuls: kernels (activations, residual adds, concatenations, pooling, and LayerNorm under
    ``scope="linear"``) and views (reshapes, transposes). Counted with a :class:`torch.overrides.TorchFunctionMode`
    over one forward pass; shape queries, eval dropout and BatchNorm (which deployments fold into the convolution)
    are not counted. Each kernel costs the device profile's ``kernel_overhead_s``, each view its
    ``view_overhead_s``."""
    from collections import Counter

    from torch.overrides import TorchFunctionMode

    class _Count(TorchFunctionMode):
        def __init__(self) -> None:
            super().__init__()
            self.calls: Counter[str] = Counter()

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.calls[getattr(func, "__name__", "")] += 1
            return func(*args, **(kwargs or {}))

    priced = _PRICED_CALLS | ({"layer_norm"} if scope == "hybrid" else set())
    param = next(model.parameters(), None)
    x = torch.zeros((1, *shape), dtype=param.dtype if param is not None else torch.float32)
    with torch.no_grad(), _Count() as count:
        model(x)
    views = sum(n for call, n in count.calls.items() if call in _VIEW_CALLS)
    kernels = sum(n for call, n in count.calls.items() if call not in _FREE_CALLS | _VIEW_CALLS | priced)
    return OtherOps(kernels=kernels, views=views)
