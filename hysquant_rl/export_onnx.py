"""ONNX export of a quantized model as a QDQ graph, and its inference with onnxruntime.

:func:`export_onnx` writes ``model.onnx``: the model's graph (opset :data:`OPSET`, a dynamic batch dimension, input
``images`` (B, C, H, W) float32, output ``logits`` (B, classes)) in which every quantized unit is what
:mod:`hysquant_rl.quant.onnx_ops` writes: QuantizeLinear/DequantizeLinear around each quantized activation (the
attention operands and LayerNorm inputs included), weights as uint8 integer initializers behind
DequantizeLinear, codes inside the policy's ``2^b`` range. ``onnx.checker`` accepts the file, onnxruntime's CPU
provider runs it, and its logits are the fake-quantized model's (checked by the tests on digits, and on
Fashion-MNIST by ``benchmarks/onnx_roundtrip.py``). The policy JSON rides along in the model's metadata
(``hysquant_policy``). FP32 units stay float; an attention whose operands are units runs unfused.

What the file does not promise: that onnxruntime fuses every QDQ pattern into integer kernels. Which pairs it
executes as integer kernels is a property of the runtime, measured, not assumed (see the README).
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from hysquant_rl.errors import HySquantError
from hysquant_rl.export import check_ready
from hysquant_rl.io import atomic_write
from hysquant_rl.policy import QuantPolicy
from hysquant_rl.quant.model import QuantModel

ONNX_FILE = "model.onnx"
OPSET = 17  # LayerNormalization as one op; per-axis QuantizeLinear/DequantizeLinear (13+)
INPUT, OUTPUT = "images", "logits"


def _onnx():
    try:
        import onnx
    except ImportError:
        raise HySquantError("ONNX export needs the onnx package: pip install onnx onnxruntime") from None
    return onnx


def export_onnx(
    qmodel: QuantModel, policy: QuantPolicy, input_shape: Sequence[int], out_dir: str | os.PathLike
) -> Path:
    """Write ``out_dir/model.onnx`` (see the module docstring) for ``qmodel`` with ``policy`` applied and calibrated;
    ``input_shape`` is one image's (C, H, W). Atomic: a failed export leaves no file. Returns the path."""
    onnx = _onnx()
    check_ready(qmodel, policy)
    model = qmodel.model.eval()
    example = torch.zeros((1, *input_shape), dtype=next(model.parameters()).dtype)
    path = Path(out_dir) / ONNX_FILE
    with torch.no_grad():  # fills every cache of the policy's bits: the quantizers' parameters enter as constants
        model(example)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / ONNX_FILE
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
                do_constant_folding=False,  # folding would turn DequantizeLinear(codes) back into float weights
            )
        proto = onnx.load(str(raw))
    _constants_to_initializers(proto)
    entry = proto.metadata_props.add()
    entry.key, entry.value = "hysquant_policy", json.dumps(policy.to_dict())
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise HySquantError(f"the exported ONNX graph does not pass onnx.checker: {str(e).splitlines()[0]}") from None
    return atomic_write(path, lambda f: f.write(proto.SerializeToString()))


def _constants_to_initializers(proto) -> None:
    """Constant nodes holding more than one value become initializers (the weights' uint8 codes among them), so that
    the graph stores them as a runtime expects weights."""
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


def onnx_session(path: str | os.PathLike | bytes, threads: int = 1):
    """An onnxruntime CPU session of ``path`` (or a serialised model) on ``threads`` intra-op threads (all graph
    optimisations on)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise HySquantError("running an ONNX model needs onnxruntime: pip install onnxruntime") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        model = path if isinstance(path, bytes) else str(path)
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for a graph it cannot run
        where = "the in-memory model" if isinstance(path, bytes) else path
        raise HySquantError(
            f"onnxruntime cannot run {where} ({type(e).__name__}: {str(e).splitlines()[0]}): re-export it with this"
            " version, or report the policy that produced it"
        ) from None


def onnx_logits(path: str | os.PathLike, images: torch.Tensor, batch_size: int = 256, threads: int = 1) -> torch.Tensor:
    """Logits (N, classes) of ``images`` (N, C, H, W) from onnxruntime running ``path``, in batches."""
    session = onnx_session(path, threads)
    out = [
        session.run([OUTPUT], {INPUT: images[i : i + batch_size].float().numpy()})[0]
        for i in range(0, len(images), batch_size)
    ]
    return torch.from_numpy(np.concatenate(out))
