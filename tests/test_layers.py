"""Layer inventory: names, kinds, families and MACs against timm's published figures."""

from __future__ import annotations

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from hysquant_rl.layers import inventory
from hysquant_rl.units import KINDS


def test_mobilevit_s_macs_match_timm():
    model = timm.create_model("mobilevit_s", num_classes=1000)
    layers, matmuls = inventory(model, (3, 256, 256))
    conv_linear = sum(l.macs for l in layers)
    # torch's own FLOP counter sees the same Conv2d + Linear work (2 FLOPs per MAC)
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, 256, 256))
    counts = counter.get_flop_counts()["Global"]
    assert conv_linear == (counts[torch.ops.aten.convolution] + counts[torch.ops.aten.addmm]) // 2
    # timm publishes 2.03 GMACs at 256 px: Conv2d + Linear (1.82 G) plus the attention matmuls (0.18 G)
    attention = sum(m.macs for m in matmuls)
    assert abs(conv_linear + attention - 2.03e9) / 2.03e9 < 0.02, conv_linear + attention
    assert sum(l.params for l in layers) < sum(p.numel() for p in model.parameters())  # norms not counted
    assert sum(p.numel() for p in model.parameters()) - sum(l.params for l in layers) < 0.02 * 5.6e6


def test_mobilevit_xxs_inventory(small_model):
    layers, matmuls = inventory(small_model, (1, 32, 32))
    assert len(layers) == 72
    assert sum(l.op == "conv2d" for l in layers) == 35 and sum(l.op == "linear" for l in layers) == 37
    assert layers[1].name == "stages.0.0.conv1_1x1.conv" and layers[1].kind == "pointwise"
    byname = {l.name: l for l in layers}
    assert byname["stages.0.0.conv2_kxk.conv"].kind == "depthwise"
    assert byname["stem.conv"].kind == "conv" and byname["stem.conv"].stride == (2, 2)
    assert byname["head.fc"].kind == "classifier" and byname["head.fc"].macs == 320 * 10
    qkv = byname["stages.2.1.transformer.0.attn.qkv"]
    assert qkv.kind == "attention-qkv" and qkv.family == "transformer"
    # 32 px -> stage 2 runs at 4x4, unfolded into 2x2 patches: 4 sequences of 4 tokens = 16 rows
    assert qkv.tokens == 16 and qkv.macs == 16 * qkv.in_channels * qkv.out_channels
    assert {l.kind for l in layers} <= set(KINDS)
    assert {"attention-proj", "mlp-fc1", "mlp-fc2"} <= {l.kind for l in layers}
    assert [l.index for l in layers] == list(range(72))
    assert len(matmuls) == 9 and all(m.macs > 0 for m in matmuls)
