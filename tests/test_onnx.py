"""ONNX QDQ export, run by onnxruntime's CPU provider: the independent check of what the quantized model computes."""

from __future__ import annotations

import copy
import json
import re

import numpy as np
import pytest
import torch

from hysquant_rl.deploy import ort
from hysquant_rl.deploy.simulated_onnx import ONNX_FILE
from hysquant_rl.deploy.simulated_onnx import export_simulated as export_onnx
from hysquant_rl.errors import HySquantError
from hysquant_rl.inventory import inventory
from hysquant_rl.pipeline import deployable
from hysquant_rl.policy import QuantPolicy
from hysquant_rl.provenance import weights_sha256
from hysquant_rl.quant.model import QuantModel

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

CYCLE = [(8, 8), (4, 8), (2, 4), (6, 5), (32, 8), (8, 32), (3, 3), (32, 32)]


def _policy(pipe, spec: str):
    n = len(pipe.units)
    bits = {"FP32": [(32, 32)] * n, "W8A8": [(8, 8)] * n, "W4A8": [(4, 8)] * n}.get(spec)
    return pipe.policy(bits or [CYCLE[i % len(CYCLE)] for i in range(n)], method=spec)


def _nodes(path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


@pytest.mark.parametrize("spec", ["FP32", "W8A8", "W4A8", "mixed"])
def test_onnxruntime_runs_the_export_with_the_fake_quant_logits(digits_pipeline, tmp_path, spec):
    """FP32 within 1e-5 of PyTorch; quantized policies: the same top-1 on the 400 test images (within 0.05 points)
    and the same argmax on at least 99.9 % of them. The graph holds one QuantizeLinear per quantized activation
    tensor and one DequantizeLinear more per quantized weight, with uint8 codes inside the 2^b range."""
    pipe = digits_pipeline
    policy = _policy(pipe, spec)
    pipe.qmodel.apply_bits(policy.bits())
    path = export_onnx(pipe.qmodel, policy, pipe.data.input_shape, tmp_path)
    assert path == tmp_path / ONNX_FILE and sorted(p.name for p in tmp_path.iterdir()) == [ONNX_FILE]
    model = onnx.load(str(path))
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["hysquant_policy"]) == policy.to_dict()
    x, labels = pipe.data.test.x, pipe.data.test.y
    with torch.inference_mode():
        ref = pipe.qmodel(x)
    got = onnx_logits(path, x, batch_size=128)
    assert got.shape == ref.shape
    if spec == "FP32":
        assert (got - ref).abs().max() < 1e-5
        assert "QuantizeLinear" not in _nodes(path)
        return
    bits = policy.bits()
    tensors = sum(len(u.quantizers()) for u, (_, a) in zip(pipe.qmodel.units, bits) if a != 32)
    weights = sum(1 for l, (w, _) in zip(pipe.units, bits) if l.weighted and w != 32)
    counts = _nodes(path)
    assert counts["QuantizeLinear"] == tensors and counts["DequantizeLinear"] == tensors + weights
    codes = [onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == onnx.TensorProto.UINT8]
    assert max(int(c.max()) for c in codes if c.size > 1) <= 255
    agree = (got.argmax(1) == ref.argmax(1)).float().mean().item()
    top1 = lambda logits: 100.0 * (logits.argmax(1) == labels).float().mean().item()  # noqa: E731
    assert agree >= 0.999 and abs(top1(got) - top1(ref)) <= 0.05
    # most images get the same logits to float precision; where they differ, a value that sat on a rounding
    # boundary went to the other code (onnxruntime's float kernels round differently from PyTorch's by an ulp)
    per_image = (got - ref).abs().amax(1)
    assert per_image.median() < 1e-4 and (per_image < 1e-4).float().mean() > 0.5


def test_weight_codes_are_the_int_export_codes(digits_pipeline, tmp_path):
    """Every quantized weight is stored once, as uint8 codes in [0, 2^w - 1]: the model_int.pt codes."""
    pipe = digits_pipeline
    policy = _policy(pipe, "mixed")
    pipe.qmodel.apply_bits(policy.bits())
    model = onnx.load(str(export_onnx(pipe.qmodel, policy, pipe.data.input_shape, tmp_path)))
    stored = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    found = 0
    for quantizer, unit, (w, _) in zip(pipe.qmodel.units, pipe.units, policy.bits()):
        if not unit.weighted or w == 32:
            continue
        codes = quantizer.weight_qparams(w)[0].numpy()
        match = [a for a in stored.values() if a.dtype == np.uint8 and a.shape == codes.shape and (a == codes).all()]
        assert match and int(codes.max()) <= 2**w - 1, unit.name
        found += 1
    assert found == sum(1 for l, (w, _) in zip(pipe.units, policy.bits()) if l.weighted and w != 32)


def test_log2_softmax_channel_ranges_and_shifted_zero_points(small_model, tmp_path):
    """The other quantizer settings export too: log2 probabilities (float ops), per-channel LayerNorm-input ranges
    (per-axis QDQ), and a zero point a uint8 cannot hold (an all-positive input range, Z < 0), which the export
    shifts by whole steps: onnxruntime still gives the PyTorch logits."""
    model = copy.deepcopy(small_model).eval()
    units = inventory(model, (1, 32, 32))[0]
    qm = QuantModel(model, [u.name for u in units], "channel", softmax="log2", act_granularity="channel")
    g = torch.Generator().manual_seed(0)
    calib = torch.rand(32, 1, 32, 32, generator=g) + 0.5  # all-positive images: the stem's Z < 0
    qm.calibrate([calib])
    stem = qm.units[0]
    bits = [(8, 6) if u.weighted else (6, 6) for u in units]
    assert float(stem.act_qparams(6)[1]) < 0
    policy = QuantPolicy.from_bits(units, bits, "mobilevit_xxs", weights_sha256(model))
    qm.apply_bits(policy.bits())
    path = export_onnx(qm, policy, (1, 32, 32), tmp_path)
    x = torch.rand(64, 1, 32, 32, generator=g) + 0.5
    with torch.inference_mode():
        ref = qm(x)
    got = onnx_logits(path, x)
    assert (got.argmax(1) == ref.argmax(1)).float().mean() >= 0.98
    assert (got - ref).abs().amax(1).median() < 1e-3 * ref.abs().max()
    counts = _nodes(path)
    assert counts.get("Pow", 0) >= 9  # one log2 quantizer per attention-pv unit


def test_export_refuses_what_it_cannot_write(digits_pipeline, tmp_path):
    pipe = digits_pipeline
    policy = _policy(pipe, "W8A8")
    pipe.qmodel.apply_bits([(4, 4)] * len(pipe.units))
    with pytest.raises(HySquantError, match="differ from the policy"):
        export_onnx(pipe.qmodel, policy, pipe.data.input_shape, tmp_path)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(HySquantError, match="onnxruntime cannot run"):
        (tmp_path / "junk.onnx").write_bytes(b"not a model")
        onnx_logits(tmp_path / "junk.onnx", torch.zeros(1, 1, 32, 32))


# -- hardware.backend=onnxruntime: the exported graph timed --------------------------------------------------


def onnx_logits(path, images, batch_size=256):
    """onnxruntime's logits of a file (N, classes) for torch images."""
    return torch.from_numpy(ort.logits(ort.session(path), images.numpy(), batch_size))


def _check(pipe, **timing):
    from hysquant_rl.deploy.runtimes import get
    from hysquant_rl.deploy.timing import RuntimeCheck
    from hysquant_rl.hardware.profile import Timing

    timing = Timing(**{"pause_s": 0.01, **timing})
    return RuntimeCheck(deployable(pipe), pipe.data.input_shape, pipe.cost, timing, "simulated", get("onnxruntime"))


def test_onnxruntime_backend_times_the_exported_graph(digits_pipeline, tmp_path):
    """The median of 30 timed runs of the policy's exported graph, cached by policy; the cost it returns is the
    roofline's with that latency. Checked against an independent timing of the same file run by onnxruntime."""
    import statistics
    import time

    pipe = digits_pipeline
    bits = np.array([(8, 8)] * len(pipe.units))
    check = _check(pipe, threads=1, warmup=3, repeats=30, max_cv=10.0)
    m = check.measure(bits)
    assert m.runs == 30 and m.threads == 1 and m.batch_size == pipe.cost.batch_size
    assert m.cv <= 10.0  # a timing is kept only within timing.max_cv (its latency is checked against ours below)
    from hysquant_rl.deploy.timing import cv

    assert cv([1.0, 2.0, 3.0, 10.0]) == pytest.approx((50 / 3) ** 0.5 / 4, rel=1e-12)  # by hand: stdev / mean
    assert check.measure(bits) is m and len(check.measurements) == 1  # cached: not timed twice
    cost, modelled = check.policy_cost(bits), pipe.cost.policy_cost(bits)
    assert cost.backend == "onnxruntime" and cost.latency_s == m.latency_s and "onnxruntime" in cost.device
    assert cost.energy_j == modelled.energy_j and cost.size_bytes == modelled.size_bytes
    policy = pipe.policy(bits)
    pipe.qmodel.apply_bits(policy.bits())
    session = ort.session(export_onnx(pipe.qmodel, policy, pipe.data.input_shape, tmp_path), 1)
    x = np.random.default_rng(1).standard_normal((1, *pipe.data.input_shape)).astype(np.float32)
    for _ in range(3):
        session.run(None, {"images": x})
    times = []
    for _ in range(30):
        start = time.perf_counter()
        session.run(None, {"images": x})
        times.append(time.perf_counter() - start)
    assert statistics.median(times) / 3 < m.latency_s < 3 * statistics.median(times)
    fp32 = check.measure(np.array([(32, 32)] * len(pipe.units)))  # a different graph: another entry
    assert len(check.measurements) == 2 and fp32 is not m


def test_onnxruntime_backend_refuses_an_unsteady_timing(digits_pipeline):
    with pytest.raises(
        HySquantError, match=r"onnxruntime timing too unsteady: CV \d\.\d+ > hardware.timing.max_cv 1e-09"
    ):
        _check(digits_pipeline, repeats=30, warmup=1, max_cv=1e-9).measure([(8, 8)] * len(digits_pipeline.units))


@pytest.mark.parametrize("runtime, fix", [("onnxruntime", "pip install onnx"), ("openvino", "pip install openvino")])
def test_a_runtime_backend_without_its_runtime(monkeypatch, tmp_path, run_here, runtime, fix):
    """A missing runtime (onnxruntime, or OpenVINO, an optional extra) is one error line naming the fix, before any
    search work, and nothing is written."""
    import sys

    from hysquant_rl.apps.search import main as search_main
    from tests.conftest import assert_one_error_line

    monkeypatch.setitem(sys.modules, runtime, None)  # as if not installed: `import <runtime>` fails
    proc = run_here(search_main, "hardware=cpu", f"hardware.backend={runtime}", tmp_path=tmp_path)
    assert_one_error_line(proc, rf"hardware.runtime={runtime} needs {runtime}, which is not installed: {fix}")
    assert not (tmp_path / "best_policy.json").exists() and not (tmp_path / "summary.md").exists()


def test_search_checked_on_onnxruntime(tmp_path, digits_pipeline):
    """The hardware-feedback loop on the cpu profile measures its policy with onnxruntime; the summary puts measured
    FP32, the references and the found policy side by side with the measured speed-up over FP32."""
    from dataclasses import replace

    from hysquant_rl.apps.search import run_search
    from hysquant_rl.hardware import CostModel
    from tests.conftest import run_settings, search_settings

    overrides = [
        "hardware=cpu",
        "hardware.backend=onnxruntime",
        "search.space=simulated",  # the paper's layout timed (tests/test_deploy.py: the runtime's)
        "budget.energy_ratio=0.95",
        "hardware.timing.max_cv=10",
    ]
    run = run_settings("search", overrides)
    base = digits_pipeline
    pipe = replace(base, cost=CostModel(base.units, base.matmuls, run.hardware, other=base.cost.other))
    search = search_settings([*overrides, "search.method=ilp", "search.reference=[W8A8]"])
    summary = run_search(run, search, tmp_path, pipe)
    rounds = summary["rounds"]
    assert rounds and all(r["backend"] == "onnxruntime" and r["timing"]["runs"] == 30 for r in rounds)
    table = summary["policies"]
    assert {"FP32", "W8A8", "best policy"} <= set(table)
    for name in ("FP32", "W8A8", "best policy"):
        assert table[name]["measured"]["latency_s"] > 0 and table[name]["measured"]["runs"] == 30
    speedup = table["FP32"]["measured"]["latency_s"] / table["best policy"]["measured"]["latency_s"]
    assert summary["measured_speedup_over_fp32"] == pytest.approx(speedup)
    text = (tmp_path / "summary.md").read_text()
    assert "Latency measured by onnxruntime" in text and "Measured speed-up of the best policy over FP32" in text


def test_apply_on_onnxruntime_says_how_fast_the_policy_runs(tmp_path, run_here):
    from hysquant_rl.apps.apply import main as apply_main

    overrides = ("policy=W8A8", "hardware=cpu", "hardware.backend=onnxruntime", "hardware.timing.max_cv=10")
    proc = run_here(apply_main, *overrides, tmp_path=tmp_path)  # max_cv: a test must not fail on a busy machine
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(x for x in (proc.stdout + proc.stderr).splitlines() if re.search(r"measured on .*\(onnxruntime", x))
    fp32, policy, speed = (float(v) for v in re.search(r"FP32 (\S+) ms, policy (\S+) ms: (\S+)x", line).groups())
    assert fp32 > 0 and policy > 0 and speed == pytest.approx(fp32 / policy, rel=2e-3)
    # the cost lines say where their latency comes from: each unit measured on this runtime, the policy deployable
    assert re.search(r"\(onnxruntime per-unit: cpu: .*, batch 1, deployable\)", proc.stdout + proc.stderr)
    # W8A8 on the runtime: every unit with an int8 kernel, LayerNorm inputs in float; the file it runs is written
    policy = json.loads((tmp_path / "policy.json").read_text())
    assert {(e["w_bits"], e["a_bits"]) for e in policy["layers"] if e["kind"] != "layernorm-in"} == {(8, 8), (None, 8)}
    assert {e["a_bits"] for e in policy["layers"] if e["kind"] == "layernorm-in"} == {32}
    assert (tmp_path / "model.onnx").exists() and not (tmp_path / "model_int.pt").exists()
