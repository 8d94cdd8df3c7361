"""Export of a mixed-precision mobilevit_xxs and its bit-identical reload."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import timm
import torch

from hysquant_rl.deploy.checkpoints import FAKEQUANT_FILE, INT_FILE, export_quantized, load_quantized
from hysquant_rl.errors import HySquantError
from hysquant_rl.inventory import inventory
from hysquant_rl.policy import QuantPolicy
from hysquant_rl.provenance import weights_sha256
from hysquant_rl.quant.model import QuantModel

SPEC = {"name": "mobilevit_xxs", "num_classes": 10, "in_chans": 1}
SHAPE = (1, 32, 32)
# FP32, W4A8 and W2A2 as asked, plus each operand quantized alone.
CYCLE = [(32, 32), (4, 8), (2, 2), (8, 4), (32, 4), (4, 32)]


def build(spec: dict) -> torch.nn.Module:
    return timm.create_model(spec["name"], num_classes=spec["num_classes"], in_chans=spec["in_chans"])


def quantized(granularity: str, seed: int = 0) -> SimpleNamespace:
    """A calibrated mobilevit_xxs with the mixed policy applied, and its logits on a fixed batch."""
    torch.manual_seed(seed)
    model = build(SPEC).eval()
    units = inventory(model, SHAPE)[0]
    qmodel = QuantModel(model, [l.name for l in units], granularity)
    qmodel.calibrate([torch.randn(8, *SHAPE) for _ in range(3)])
    bits = [CYCLE[i % len(CYCLE)] for i in range(len(units))]
    policy = QuantPolicy.from_bits(units, bits, SPEC["name"], weights_sha256(model), method="test")
    x = torch.randn(6, *SHAPE)
    with torch.inference_mode():
        fp32 = qmodel(x)
        qmodel.apply_bits(policy.bits())
        logits = qmodel(x)
    return SimpleNamespace(qmodel=qmodel, units=units, policy=policy, x=x, fp32=fp32, logits=logits)


@pytest.fixture(scope="module", params=["tensor", "channel"])
def exported(request, tmp_path_factory):
    q = quantized(request.param)
    q.granularity = request.param
    q.dir = tmp_path_factory.mktemp(f"export_{request.param}")
    q.paths = export_quantized(q.qmodel, q.policy, SPEC, q.dir)
    return q


def other_init(spec: dict) -> torch.nn.Module:
    torch.manual_seed(12345)  # different random weights: all of them must come from the file
    return build(spec)


def test_load_quantized_reproduces_logits_bit_identically(exported):
    assert not torch.allclose(exported.logits, exported.fp32, atol=1e-3)  # the policy really changes the output
    loaded = load_quantized(exported.paths["int"], other_init)
    assert isinstance(loaded, QuantModel) and not loaded.training
    assert loaded.names == exported.policy.names
    assert loaded.bits() == exported.policy.bits()
    with torch.inference_mode():
        logits = loaded(exported.x)
    assert torch.equal(logits, exported.logits)
    # Calibrated ranges come back too, so other bit-widths can still be applied to the loaded model.
    assert loaded.calibrated
    for mine, theirs in zip(loaded.quantizers(), exported.qmodel.quantizers()):
        assert torch.equal(mine.act_min, theirs.act_min) and torch.equal(mine.act_max, theirs.act_max)


def test_load_quantized_uses_the_stored_activation_qparams(exported, tmp_path):
    doc = torch.load(exported.paths["int"], weights_only=True)
    name = next(
        l.name for l, (_, a) in zip(exported.units, exported.policy.bits()) if a != 32 and l.op in ("conv2d", "linear")
    )
    rec = doc["layers"][name]
    rec["a_scale"] = rec["a_scale"] * 2  # not what the range gives: only the stored value can produce it
    rec["a_zero_point"] = rec["a_zero_point"] + 1
    torch.save(doc, tmp_path / INT_FILE)
    unit = load_quantized(tmp_path / INT_FILE, build).units[exported.policy.names.index(name)]
    delta, zero = unit.act_qparams(rec["a_bits"])
    assert torch.equal(delta, rec["a_scale"]) and torch.equal(zero, rec["a_zero_point"].float())


def test_export_writes_two_files_and_no_temp_files(exported):
    assert exported.paths == {"fakequant": exported.dir / FAKEQUANT_FILE, "int": exported.dir / INT_FILE}
    assert sorted(p.name for p in exported.dir.iterdir()) == sorted([FAKEQUANT_FILE, INT_FILE])


def test_int_file_holds_codes_scales_and_zero_points(exported):
    doc = torch.load(exported.paths["int"], weights_only=True)
    assert doc["format"] == "hysquant-int" and doc["version"] == 2
    assert doc["spec"] == SPEC and doc["policy"] == exported.policy.to_dict()
    assert doc["weight_granularity"] == exported.granularity
    assert doc["softmax"] == "uniform" and doc["act_granularity"] == "tensor"
    assert list(doc["layers"]) == exported.policy.names
    full_state = exported.qmodel.model.state_dict()
    saw_full_range = set()
    operands = 0
    for name, unit in zip(exported.qmodel.names, exported.qmodel.units):
        rec = doc["layers"][name]
        if "operands" in rec:  # an activation-only unit: every operand's calibrated scale and zero point
            assert rec["w_bits"] is None and rec["a_bits"] == unit.a_bits
            for operand, t in unit.quantizers().items():
                o = rec["operands"][operand]
                assert torch.equal(o["a_min"], t.act_min) and torch.equal(o["a_max"], t.act_max)
                if unit.a_bits == 32:
                    assert o["a_scale"] is None and o["a_zero_point"] is None
                else:
                    delta, zero = t.act_qparams(unit.a_bits)
                    assert torch.equal(o["a_scale"], delta) and torch.equal(o["a_zero_point"].float(), zero)
                    operands += 1
            continue
        assert (rec["w_bits"], rec["a_bits"]) == (unit.w_bits, unit.a_bits)
        assert torch.equal(rec["a_min"], unit.act_min) and torch.equal(rec["a_max"], unit.act_max)
        key = f"{name}.weight"
        if unit.w_bits == 32:
            assert rec["w_int"] is None and rec["w_scale"] is None and rec["w_zero_point"] is None
            assert torch.equal(doc["state_dict"][key], full_state[key])
        else:
            q, scale, zero = rec["w_int"], rec["w_scale"], rec["w_zero_point"]
            assert key not in doc["state_dict"]  # stored once, as integers
            assert q.dtype == torch.uint8 and q.shape == unit.weight.shape
            assert 0 <= int(q.min()) and int(q.max()) <= 2**unit.w_bits - 1
            if int(q.max()) == 2**unit.w_bits - 1 and int(q.min()) == 0:
                saw_full_range.add(unit.w_bits)
            assert zero.dtype == torch.int32 and scale.dtype == torch.float32 and zero.shape == scale.shape
            if exported.granularity == "channel":
                assert scale.shape == (unit.weight.shape[0],) + (1,) * (unit.weight.dim() - 1)
            else:
                assert scale.numel() == 1
            # eq. 6 on the stored integers is exactly the weight the in-memory model computes with
            assert torch.equal((q.float() - zero.float()) * scale, unit.quantized_weight(unit.w_bits))
        if unit.a_bits == 32:
            assert rec["a_scale"] is None and rec["a_zero_point"] is None
        else:
            delta, zero = unit.act_qparams(unit.a_bits)
            assert torch.equal(rec["a_scale"], delta) and rec["a_zero_point"].dtype == torch.int32
            assert torch.equal(rec["a_zero_point"].float(), zero)
    assert saw_full_range == {2, 4, 8}  # min-max codes span [0, 2^bits - 1]
    assert operands > 0
    other = {
        k
        for k in full_state
        if not any(
            k == f"{l.name}.weight"
            for l, (w, _) in zip(exported.units, exported.policy.bits())
            if w != 32 and l.weighted
        )
    }
    assert set(doc["state_dict"]) == other


def test_fakequant_file_is_a_loadable_state_dict_with_activation_qparams(exported):
    doc = torch.load(exported.paths["fakequant"], weights_only=True)
    assert doc["format"] == "hysquant-fakequant" and doc["spec"] == SPEC and doc["policy"] == exported.policy.to_dict()
    plain = other_init(SPEC).eval()
    for m in plain.modules():  # the quantized model runs attention unfused (its operands are units)
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
    plain.load_state_dict(doc["state_dict"], strict=True)
    qmodel, policy = exported.qmodel, exported.policy
    # A plain model with these weights is the weight-only fake-quant model.
    try:
        qmodel.apply_bits([(w, 32) for w, _ in policy.bits()])
        with torch.inference_mode():
            weight_only = qmodel(exported.x)
    finally:
        qmodel.apply_bits(policy.bits())
    with torch.inference_mode():
        assert torch.equal(plain(exported.x), weight_only)
    quantized_acts = [n for n, (_, a) in zip(policy.names, policy.bits()) if a != 32]
    assert list(doc["act_qparams"]) == quantized_acts
    for name, unit in zip(policy.names, qmodel.units):
        if name in doc["act_qparams"] and "operands" in doc["act_qparams"][name]:
            entry = doc["act_qparams"][name]
            for operand, t in unit.quantizers().items():
                delta, zero = t.act_qparams(unit.a_bits)
                assert entry["bits"] == unit.a_bits and torch.equal(entry["operands"][operand]["scale"], delta)
                assert torch.equal(entry["operands"][operand]["zero_point"].float(), zero)
        elif name in doc["act_qparams"]:
            entry = doc["act_qparams"][name]
            delta, zero = unit.act_qparams(unit.a_bits)
            assert entry["bits"] == unit.a_bits and torch.equal(entry["scale"], delta)
            assert entry["zero_point"].dtype == torch.int32 and torch.equal(entry["zero_point"].float(), zero)


def test_export_refuses_a_model_that_does_not_match_the_policy(tmp_path):
    torch.manual_seed(0)
    model = build(SPEC).eval()
    units = inventory(model, SHAPE)[0]
    qmodel = QuantModel(model, [l.name for l in units])
    policy = QuantPolicy.uniform(units, 4, 8, SPEC["name"], weights_sha256(model))
    with pytest.raises(HySquantError, match="differ from the policy"):
        export_quantized(qmodel, policy, SPEC, tmp_path)  # policy not applied
    qmodel.apply_bits(policy.bits())
    with pytest.raises(HySquantError, match="not calibrated"):
        export_quantized(qmodel, policy, SPEC, tmp_path)
    with pytest.raises(HySquantError, match="not the quantized model's layers"):
        export_quantized(QuantModel(model, [l.name for l in units[:-1]]), policy, SPEC, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_load_quantized_errors(exported, tmp_path):
    with pytest.raises(HySquantError, match="does not exist"):
        load_quantized(tmp_path / INT_FILE, build)
    (tmp_path / "junk.pt").write_text("not a torch file")
    with pytest.raises(HySquantError, match="cannot read .* as a torch file"):
        load_quantized(tmp_path / "junk.pt", build)
    with pytest.raises(HySquantError, match="is not a 'hysquant-int' file \\(format='hysquant-fakequant'"):
        load_quantized(exported.paths["fakequant"], build)
    with pytest.raises(HySquantError, match="does not fit the model built from its spec"):
        load_quantized(exported.paths["int"], lambda spec: build({**spec, "num_classes": 7}))
    with pytest.raises(HySquantError, match="no Conv2d/Linear named"):
        load_quantized(exported.paths["int"], lambda spec: torch.nn.Sequential(torch.nn.Linear(1, 1)))
