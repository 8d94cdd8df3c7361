"""OpenVINO as the second CPU runtime (``hardware.backend=openvino``): its layout checked against onnxruntime's own
quantizer writing the same nodes, its compiled model against the file's reference semantics (onnxruntime running the
Q/DQ nodes as float ops), its integer kernels by the precisions OpenVINO reports, its per-unit latency table, the
hardware check, the exported OpenVINO model, and its bad input. The digits model on the ``cpu`` profile."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("openvino")

from hysquant_rl.bits import FP32_BITS  # noqa: E402
from hysquant_rl.deploy import openvino, ort  # noqa: E402
from hysquant_rl.deploy.runtime_graph import Graph, quantize  # noqa: E402
from hysquant_rl.deploy.unit_latency import attribute, exported_name, owners, reader_unit  # noqa: E402
from hysquant_rl.errors import HySquantError  # noqa: E402
from hysquant_rl.hardware import load_profile  # noqa: E402
from tests.conftest import assert_one_error_line, run_settings  # noqa: E402

OPENVINO = ["hardware=cpu", "hardware.backend=openvino", "threads=1"]


@pytest.fixture(scope="module")
def ov():
    """The digits pipeline in OpenVINO's executable space (its layout, evaluator and per-unit latency at batch 1)."""
    from hysquant_rl.pipeline import build

    return build(run_settings("search", OPENVINO))


def fp32(pipe) -> np.ndarray:
    return np.full((len(pipe.layers), 2), FP32_BITS)


# -- the profile -----------------------------------------------------------------------------------------------
def test_backend_openvino_makes_openvino_the_runtime_with_its_own_choices():
    on_ort, on_ov = load_profile("cpu"), load_profile({"name": "cpu", "backend": "openvino"})
    assert on_ort.runtime == "onnxruntime" and on_ov.runtime == "openvino"
    assert on_ort.executable("attention-qk") == ((8, 8),)  # QLinearMatMul
    assert on_ov.executable("attention-qk") == on_ov.executable("attention-pv") == ()  # a float subgraph on OpenVINO
    assert on_ov.executable("conv") == on_ov.executable("mlp-fc1") == ((8, 8),)
    assert on_ov.executable("layernorm-in") == ()
    with pytest.raises(HySquantError, match="executable lists onnxruntime but not the profile's runtime openvino"):
        load_profile({"name": "cpu", "backend": "openvino", "executable": {"onnxruntime": {"default": ["W8A8"]}}})


# -- the layout --------------------------------------------------------------------------------------------------
def test_openvino_layout_is_what_the_quantizer_writes(ov):
    """A policy's graph derived from the template equals ``quantize_static`` with exactly its quantized nodes, in the
    OpenVINO settings: Q/DQ on the inputs of the int8 units' Conv/MatMul/Gemm only, none on any output."""
    g = ov.graphs
    rng = np.random.default_rng(0)
    bits = ov.uniform((8, 8))
    bits[rng.random(len(bits)) < 0.4] = FP32_BITS
    chosen = g.quantized_nodes(bits)
    int8_units = {n for u, names in enumerate(g.units) if bits[u, 1] != FP32_BITS for n in names}
    assert chosen and chosen <= int8_units  # no op between units is quantized in this layout
    with tempfile.TemporaryDirectory() as tmp:
        quantize(g.float_path, Path(tmp) / "o.onnx", g.ranges, nodes=sorted(chosen), layout="openvino")
        oracle = onnx.load(str(Path(tmp) / "o.onnx"))
    mine = g.graph(bits)
    nodes = [sorted((n.name, n.op_type, tuple(n.input)) for n in p.graph.node) for p in (mine, oracle)]
    assert nodes[0] == nodes[1]
    inits = {t.name for t in mine.graph.initializer}
    readers = {}
    for n in mine.graph.node:
        for x in n.input:
            readers.setdefault(x, []).append(n)
    for n in mine.graph.node:  # every quantized activation is there for a chosen unit node that reads it
        if n.op_type == "DequantizeLinear" and n.input[0] not in inits:
            assert {r.name for r in readers[n.output[0]]} & chosen, n.name


def test_all_int8_runs_as_integer_kernels_on_openvino(ov):
    """OpenVINO's compiled all-int8 model runs every convolution and every Linear as a u8/i8 kernel (its reported
    runtime precisions); the FP32 model runs none."""
    int8 = openvino.precisions(ov.graphs.graph(ov.uniform((8, 8))).SerializeToString())
    convs = sum(layer.op == "conv2d" for layer in ov.layers)
    linears = sum(layer.op == "linear" for layer in ov.layers)
    integer = {k: sum(c for p, c in v.items() if p in ("u8", "i8")) for k, v in int8.items()}
    assert integer["Convolution"] == convs and integer["FullyConnected"] == linears, int8
    float_model = openvino.precisions(ov.graphs.float.SerializeToString())
    assert all(p not in ("u8", "i8") for v in float_model.values() for p in v), float_model


def test_openvino_matches_the_files_reference_semantics(ov):
    """The same file run by OpenVINO's integer kernels and by onnxruntime with every node as written (Q/DQ as float
    ops): the same classes; and the FP32 graph gives the same logits on both runtimes."""
    x = ov.data.test.x.numpy()
    proto = ov.graphs.graph(ov.uniform((8, 8))).SerializeToString()
    kernels = ort.logits(openvino.session(proto), x)
    written = ort.logits(ort.session(proto, optimize=False), x)
    assert (kernels.argmax(1) == written.argmax(1)).mean() >= 0.99
    float_bytes = ov.graphs.float.SerializeToString()
    np.testing.assert_allclose(
        ort.logits(openvino.session(float_bytes), x), ort.logits(ort.session(float_bytes), x), atol=1e-3
    )
    # the evaluator scores the file as OpenVINO runs it
    m = ov.evaluator.evaluate(ov.uniform((8, 8)), "test")
    assert m.top1 == pytest.approx(100 * (kernels.argmax(1) == ov.data.test.y.numpy()).mean())


# -- per-unit latency --------------------------------------------------------------------------------------------
def test_openvino_profile_is_attributed_to_units(ov):
    """OpenVINO's per-node profile of the FP32 and all-int8 graphs, attributed by name: every convolution and Linear
    unit gets time in both, most of the time is in units, and each FakeQuantize goes to the int8 unit reading it."""
    g = ov.graphs
    feed = {ort.INPUT: np.random.default_rng(0).standard_normal((1, *g.input_shape)).astype(np.float32)}
    own = owners(g)
    weighted = np.array([layer.op in ("conv2d", "linear") for layer in ov.layers])
    for bits in (fp32(ov), ov.uniform((8, 8))):
        profile = openvino.profile_nodes(g.graph(bits).SerializeToString(), feed, 1, 5)
        per_unit, rest, boundary = attribute(profile, g, own, boundary_ops=())
        assert (per_unit[weighted] > 0).all() and per_unit.sum() > rest and boundary == []
    fq = [name for name, (op, _) in profile.items() if op == "FakeQuantize"]
    unit_of = {name: u for u, names in enumerate(g.units) for name in names}
    graph = Graph(g.float.graph)
    readers = [reader_unit(graph, exported_name(name), unit_of) for name in fq]
    assert fq and all(u >= 0 and ov.layers[u].op in ("conv2d", "linear") for u in readers), (fq, readers)
    table = ov.cost.table
    assert table.machine["runtime"].startswith("openvino") and ov.cost.backend == "openvino per-unit"
    attention = np.array([layer.kind in ("attention-qk", "attention-pv") for layer in ov.layers])
    assert (table.int8_s[attention] == table.fp32_s[attention]).all()  # no int8 choice on OpenVINO: FP32 in both
    assert table.latency(fp32(ov)) == pytest.approx(table.measured["fp32"], rel=1e-9)


# -- the hardware check, the search and the files -----------------------------------------------------------------
def test_search_checked_on_openvino_and_its_model_files(ov, tmp_path, run_here):
    """The hardware-feedback loop measures policies with OpenVINO; ``hysquant-apply ... export.openvino=true`` writes
    OpenVINO's model files beside model.onnx, which load and give the ONNX file's logits on OpenVINO."""
    from hysquant_rl.apps.apply import main as apply_main
    from hysquant_rl.apps.search import run_search
    from tests.conftest import search_settings

    overrides = [*OPENVINO, "budget=latency", "budget.latency_ratio=1.2", "hardware.timing.max_cv=10"]
    run = run_settings("search", overrides)
    search = search_settings([*overrides, "search.method=ilp", "search.reference=[W8A8]"])
    summary = run_search(run, search, tmp_path / "search", ov)
    rounds = summary["rounds"]
    assert rounds and all(r["backend"] == "openvino" and r["timing"]["runs"] == 30 for r in rounds)
    for name in ("FP32", "W8A8", "best policy"):
        assert summary["policies"][name]["measured"]["latency_s"] > 0
    assert "Latency measured by openvino" in (tmp_path / "search" / "summary.md").read_text()

    policy = tmp_path / "search" / "best_policy.json"
    apply = [f"policy={policy}", *OPENVINO, "hardware.timing.max_cv=10", "export.openvino=true"]
    proc = run_here(apply_main, *apply, tmp_path=tmp_path / "apply")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "apply"
    assert (out / "model.xml").exists() and (out / "model.bin").exists() and (out / "model.onnx").exists()
    assert not list(out.glob(".*tmp*"))
    x = ov.data.test.x[:64].numpy()
    np.testing.assert_allclose(
        ort.logits(openvino.session(out / "model.xml"), x),
        ort.logits(openvino.session(out / "model.onnx"), x),
        atol=1e-5,
    )
    meta = {p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}
    assert json.loads(meta["hysquant_policy"])["layers"]


def test_export_openvino_needs_the_openvino_layout(tmp_path, run_here):
    from hysquant_rl.apps.apply import main as apply_main

    proc = run_here(apply_main, "policy=W8A8", "hardware=cpu", "export.openvino=true", tmp_path=tmp_path)
    assert_one_error_line(proc, r"export.openvino=true writes OpenVINO's layout.*hardware.backend=openvino")
    assert not (tmp_path / "policy.json").exists()
