"""Layer inventory: names, kinds, families and MACs against timm's published figures."""

from __future__ import annotations

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from hysquant_rl.inventory import inventory
from hysquant_rl.units import KINDS


def test_mobilevit_s_macs_match_timm():
    model = timm.create_model("mobilevit_s", num_classes=1000)
    units, matmuls = inventory(model, (3, 256, 256), "linear")
    conv_linear = sum(l.macs for l in units)
    # torch's own FLOP counter sees the same Conv2d + Linear work (2 FLOPs per MAC)
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, 256, 256))
    counts = counter.get_flop_counts()["Global"]
    assert conv_linear == (counts[torch.ops.aten.convolution] + counts[torch.ops.aten.addmm]) // 2
    # timm publishes 2.03 GMACs at 256 px: Conv2d + Linear (1.82 G) plus the attention matmuls (0.18 G)
    attention = sum(m.macs for m in matmuls)
    assert abs(conv_linear + attention - 2.03e9) / 2.03e9 < 0.02, conv_linear + attention
    assert sum(l.params for l in units) < sum(p.numel() for p in model.parameters())  # norms not counted
    assert sum(p.numel() for p in model.parameters()) - sum(l.params for l in units) < 0.02 * 5.6e6
    # under the hybrid scope the same matmuls are units: the MACs move from the float part into the units
    units, floating = inventory(model, (3, 256, 256), "hybrid")
    assert floating == [] and sum(u.macs for u in units) == conv_linear + attention


def test_mobilevit_xxs_inventory(small_model):
    units, matmuls = inventory(small_model, (1, 32, 32), "linear")
    assert len(units) == 72
    assert sum(l.op == "conv2d" for l in units) == 35 and sum(l.op == "linear" for l in units) == 37
    assert units[1].name == "stages.0.0.conv1_1x1.conv" and units[1].kind == "pointwise"
    byname = {l.name: l for l in units}
    assert byname["stages.0.0.conv2_kxk.conv"].kind == "depthwise"
    assert byname["stem.conv"].kind == "conv" and byname["stem.conv"].stride == (2, 2)
    assert byname["head.fc"].kind == "classifier" and byname["head.fc"].macs == 320 * 10
    qkv = byname["stages.2.1.transformer.0.attn.qkv"]
    assert qkv.kind == "attention-qkv" and qkv.family == "transformer"
    # 32 px -> stage 2 runs at 4x4, unfolded into 2x2 patches: 4 sequences of 4 tokens = 16 rows
    assert qkv.tokens == 16 and qkv.macs == 16 * qkv.in_channels * qkv.out_channels
    assert {l.kind for l in units} <= set(KINDS)
    assert {"attention-proj", "mlp-fc1", "mlp-fc2"} <= {l.kind for l in units}
    assert [l.index for l in units] == list(range(72))
    assert len(matmuls) == 9 and all(m.macs > 0 for m in matmuls)


def test_mobilevit_xxs_hybrid_units(small_model):
    """Hybrid scope: 9 attention-qk, 9 attention-pv and one layernorm-in per LayerNorm, each right where it runs,
    with shapes and MACs of the matmuls they quantize."""
    units, matmuls = inventory(small_model, (1, 32, 32))
    linear, _ = inventory(small_model, (1, 32, 32), "linear")
    norms = [n for n, m in small_model.named_modules() if isinstance(m, torch.nn.LayerNorm)]
    kinds = [u.kind for u in units]
    assert kinds.count("attention-qk") == 9 and kinds.count("attention-pv") == 9
    assert [u.name for u in units if u.kind == "layernorm-in"] == norms and len(norms) == 21
    assert len(units) == 72 + 9 + 9 + 21 and matmuls == []
    assert [u.name for u in units if u.weighted] == [l.name for l in linear]  # Conv2d/Linear keep their order
    assert [u.index for u in units] == list(range(len(units)))
    names = [u.name for u in units]
    attn = "stages.2.1.transformer.0.attn"
    i = names.index(f"{attn}.qkv")
    assert names[i - 1 : i + 4] == [
        "stages.2.1.transformer.0.norm1",
        f"{attn}.qkv",
        f"{attn}.qk",
        f"{attn}.pv",
        f"{attn}.proj",
    ]
    qk, pv = units[i + 1], units[i + 2]
    # stage 2 at 32 px: 4 sequences of 4 tokens, 4 heads of 16 (dim 64... as timm builds it)
    heads, d = small_model.get_submodule(attn).num_heads, small_model.get_submodule(attn).head_dim
    assert qk.input_shape == (4, heads, 4, d) and qk.output_shape == (4, heads, 4, 4)
    assert qk.macs == pv.macs == 4 * heads * 4 * 4 * d and qk.in_elems == 2 * 4 * heads * 4 * d
    assert pv.in_elems == 4 * heads * 4 * (4 + d)  # probabilities and v
    weightless = [u for u in units if u.kind in ("attention-qk", "attention-pv", "layernorm-in")]
    assert not any(u.weighted or u.params or u.weight_elems for u in weightless)


def test_unrecognised_attention_stays_in_float(caplog):
    """An attention module of another kind: one warning line naming it; its matmuls stay a float part."""

    class OtherAttention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.num_heads, self.qkv, self.proj = 2, torch.nn.Linear(8, 24), torch.nn.Linear(8, 8)

        def forward(self, x):
            q, k, v = self.qkv(x).reshape(*x.shape[:-1], 3, 2, 4).unbind(-3)
            return self.proj((q.softmax(-1) * k * v).flatten(-2))

    model = torch.nn.Sequential(torch.nn.LayerNorm(8), OtherAttention())
    with caplog.at_level("WARNING"):
        units, matmuls = inventory(model, (1, 5, 8))
    assert [u.kind for u in units] == ["layernorm-in", "attention-qkv", "other"]
    assert [m.name for m in matmuls] == ["1"]
    lines = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert lines == ["attention modules of a kind not recognised stay in float: 1 (OtherAttention)"]
