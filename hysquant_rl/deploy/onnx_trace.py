"""A PyTorch model traced into an ONNX graph: the one ``torch.onnx.export`` call both exported layouts share.

Opset :data:`OPSET`, a dynamic batch dimension, input ``images`` (B, C, H, W) float32, output ``logits``
(B, classes); no constant folding (folding would turn a DequantizeLinear of integer codes back into float weights);
constants of more than one value become initializers, where a runtime expects weights.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hysquant_rl.deploy.runtimes import INPUT, OUTPUT
from hysquant_rl.errors import HySquantError

OPSET = 17  # LayerNormalization as one op; per-axis QuantizeLinear/DequantizeLinear (13+)


def onnx_module() -> Any:
    """The ``onnx`` package, or a one-line error naming the fix."""
    try:
        import onnx
    except ImportError:
        raise HySquantError("ONNX export needs the onnx package: pip install onnx onnxruntime") from None
    return onnx


def trace(model: nn.Module, input_shape: Sequence[int]) -> Any:
    """``model`` (eval mode, float32) traced at batch 1 into an ONNX ``ModelProto`` (see the module docstring)."""
    onnx = onnx_module()
    example = torch.zeros((1, *input_shape), dtype=next(model.parameters()).dtype)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "model.onnx"
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
            torch.onnx.export(
                model,
                (example,),
                str(raw),
                dynamo=False,
                opset_version=OPSET,
                input_names=[INPUT],
                output_names=[OUTPUT],
                dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
                do_constant_folding=False,
            )
        proto = onnx.load(str(raw))
    constants_to_initializers(proto)
    return proto


def constants_to_initializers(proto: Any) -> None:
    """Constant nodes holding more than one value become initializers (the weights' integer codes among them), so
    that the graph stores them as a runtime expects weights."""
    from onnx import numpy_helper

    keep = []
    for node in proto.graph.node:
        value = next((a.t for a in node.attribute if a.name == "value"), None) if node.op_type == "Constant" else None
        if value is not None and numpy_helper.to_array(value).size > 1:
            tensor = proto.graph.initializer.add()
            tensor.CopyFrom(value)
            tensor.name = node.output[0]
        else:
            keep.append(node)
    del proto.graph.node[:]
    proto.graph.node.extend(keep)


def check(proto: Any) -> None:
    """``onnx.checker`` (full check) of ``proto``, failing in one line."""
    onnx = onnx_module()
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise HySquantError(f"the exported ONNX graph does not pass onnx.checker: {str(e).splitlines()[0]}") from None
