"""The paper's quantization as an ONNX QDQ graph (the *simulated* layout), for any bit-widths.

:func:`export_simulated` writes ``model.onnx``: the model's graph (:mod:`hysquant_rl.deploy.onnx_trace`) in which
every quantized unit is what :mod:`hysquant_rl.quant.onnx_ops` writes: QuantizeLinear/DequantizeLinear around each
quantized activation (the attention operands and LayerNorm inputs included), weights as uint8 integer initializers
behind DequantizeLinear, codes inside the policy's ``2^b`` range. ``onnx.checker`` accepts the file, onnxruntime's
CPU provider runs it, and its logits are the fake-quantized model's (checked by the tests on digits, and on
Fashion-MNIST by ``benchmarks/onnx_roundtrip.py``). The policy JSON rides along in the model's metadata
(``hysquant_policy``). FP32 units stay float; an attention whose operands are units runs unfused.

What the file does not promise: that a runtime executes it as integer kernels. onnxruntime keeps its convolutions in
float on weights dequantized at every run (the paper's scheme quantizes a unit's inputs, and onnxruntime's integer
convolution needs a quantized output too): this layout is the paper's simulation made portable. The layout a
runtime executes as integer kernels is :mod:`hysquant_rl.deploy.runtime_graph`'s.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from hysquant_rl.deploy.checkpoints import check_ready
from hysquant_rl.deploy.onnx_trace import check, trace
from hysquant_rl.io import atomic_write
from hysquant_rl.policy import QuantPolicy
from hysquant_rl.quant.model import QuantModel

ONNX_FILE = "model.onnx"


def export_simulated(
    qmodel: QuantModel, policy: QuantPolicy, input_shape: Sequence[int], out_dir: str | os.PathLike
) -> Path:
    """Write ``out_dir/model.onnx`` (see the module docstring) for ``qmodel`` with ``policy`` applied and calibrated;
    ``input_shape`` is one image's (C, H, W). Atomic: a failed export leaves no file. Returns the path."""
    check_ready(qmodel, policy)
    model = qmodel.model.eval()
    with torch.no_grad():  # fills every cache of the policy's bits: the quantizers' parameters enter as constants
        model(torch.zeros((1, *input_shape), dtype=next(model.parameters()).dtype))
    proto = trace(model, input_shape)
    entry = proto.metadata_props.add()
    entry.key, entry.value = "hysquant_policy", json.dumps(policy.to_dict())
    check(proto)
    return atomic_write(Path(out_dir) / ONNX_FILE, lambda f: f.write(proto.SerializeToString()))
