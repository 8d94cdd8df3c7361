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
from hysquant_rl.hardware import load_profile  # noqa: E402
from tests.conftest import assert_one_error_line, run_settings  # noqa: E402

OPENVINO = ["hardware=cpu", "hardware.backend=openvino", "threads=1"]


@pytest.fixture(scope="module")
def ov():
    """The digits pipeline in OpenVINO's executable space (its layout, evaluator and per-unit latency at batch 1)."""
    from hysquant_rl.pipeline import build

    return build(run_settings("search", OPENVINO))


def fp32(pipe) -> np.ndarray:
    return np.full((len(pipe.units), 2), FP32_BITS)


# -- the profile -----------------------------------------------------------------------------------------------
def test_backend_openvino_makes_openvino_the_runtime_with_its_own_choices(monkeypatch):
    """OpenVINO's choices are its conf file's; attention runs int8 on a CPU with VNNI (one int8 Subgraph), and stays
    float without (no fusion, and activation x activation products would saturate)."""
    from hysquant_rl import machine

    on_ort, on_ov = load_profile("cpu"), load_profile({"name": "cpu", "backend": "openvino"})
    assert on_ort.runtime == "onnxruntime" and on_ov.runtime == "openvino"
    assert on_ort.executable("attention-qk") == ((8, 8),)  # QLinearMatMul
    assert on_ov.executable("conv") == on_ov.executable("mlp-fc1") == ((8, 8),)
    assert on_ov.executable("layernorm-in") == ()
    for vnni, attention in ((True, ((8, 8),)), (False, ())):
        monkeypatch.setattr(machine, "has_vnni", lambda vnni=vnni: vnni)
        profile = load_profile({"name": "cpu", "backend": "openvino"})
        assert profile.executable("attention-qk") == profile.executable("attention-pv") == attention
        assert profile.executable("conv") == ((8, 8),)  # convolutions and Linear run int8 either way


# -- the layout --------------------------------------------------------------------------------------------------
def test_openvino_layout_is_what_the_quantizer_writes(ov):
    """A policy's graph derived from the template equals ``quantize_static`` with exactly its quantized nodes, in the
    OpenVINO settings: Q/DQ on the inputs of the int8 units' Conv/MatMul/Gemm only, none on any output."""
    g = ov.layout
    rng = np.random.default_rng(0)
    bits = ov.uniform((8, 8))
    bits[rng.random(len(bits)) < 0.4] = FP32_BITS
    chosen = g.quantized_nodes(bits)
    int8_units = {n for u, names in enumerate(g.node_names) if bits[u, 1] != FP32_BITS for n in names}
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
    int8 = openvino.precisions(ov.layout.graph(ov.uniform((8, 8))).SerializeToString())
    convs = sum(unit.op == "conv2d" for unit in ov.units)
    linears = sum(unit.op == "linear" for unit in ov.units)
    integer = {k: sum(c for p, c in v.items() if p in ("u8", "i8")) for k, v in int8.items()}
    assert integer["Convolution"] == convs and integer["FullyConnected"] == linears, int8
    float_model = openvino.precisions(ov.layout.float.SerializeToString())
    assert all(p not in ("u8", "i8") for v in float_model.values() for p in v), float_model


def all_int8(pipe) -> np.ndarray:
    """Every unit at W8A8, whatever this CPU's choices: the layout's placement, checked apart from the choice set."""
    return np.full((len(pipe.units), 2), 8)


def test_attention_matmuls_read_symmetric_int8_operands(ov):
    """NNCF's placement for scaled dot-product attention, checked on the file (it holds on any CPU): each operand of
    a MatMul of two activations (q k^T and p v) is read through a DequantizeLinear of int8 with zero point 0, and a
    softmax output through uint8 with zero point 0; what OpenVINO's CPU plugin needs to run the MatMul as an integer
    kernel and fuse MatMul-Softmax-MatMul into an int8 Subgraph."""
    proto = ov.layout.graph(all_int8(ov))
    g = Graph(proto.graph)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}

    def dequantized_weight(x: str) -> bool:
        node = g.nodes.get(g.producer.get(x))
        return node is not None and node.op_type == "DequantizeLinear" and node.input[0] in inits

    found = 0
    for node in proto.graph.node:
        if node.op_type != "MatMul" or any(x in inits or dequantized_weight(x) for x in node.input):
            continue
        for x in node.input[:2]:
            dq = g.nodes[g.producer[x]]
            assert dq.op_type == "DequantizeLinear", (node.name, x)
            zero = inits[dq.input[2]]
            assert not zero.any(), (node.name, x, zero)
            source = g.nodes[g.producer[g.nodes[g.producer[dq.input[0]]].input[0]]]  # the tensor its Q quantized
            assert zero.dtype == np.int8 or (zero.dtype == np.uint8 and source.op_type == "Softmax"), (node.name, x)
        found += 1
    assert found == 2 * sum(unit.kind == "attention-qk" for unit in ov.units) == 18


def test_compiled_attention_runs_int8_as_nncf_places_it(ov, tmp_path):
    """The compiled all-int8 policy, as OpenVINO's CPU plugin reports it. Without VNNI (any x86 CPU, emulated with
    ONEDNN_MAX_CPU_ISA=AVX2 in a process of its own) every attention MatMul runs as an integer kernel; with VNNI the
    plugin fuses each attention into an int8 Subgraph, whose inputs match NNCF's presets on the same units: q, k, v
    all int8 (NNCF default), and with p v left float, q and k int8 (NNCF's model_type=TRANSFORMER)."""
    import subprocess
    import sys

    from hysquant_rl import machine

    path = tmp_path / "int8.onnx"
    path.write_bytes(ov.layout.graph(all_int8(ov)).SerializeToString())
    code = (
        f"import json; from hysquant_rl.deploy.openvino import precisions; print(json.dumps(precisions({str(path)!r})))"
    )
    env = {**__import__("os").environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    avx2 = json.loads(proc.stdout.strip().splitlines()[-1])
    assert avx2["MatMul"] == {"i8": 9, "u8": 9} and "Subgraph" not in avx2, avx2
    if not machine.has_vnni():
        pytest.skip("this CPU has no VNNI: the fused int8 Subgraph is checked where the plugin builds one")
    fused = openvino.precisions(path.read_bytes())
    assert fused["Subgraph inputs"] == {"i8,i8,i8": 9}, fused
    qk_only = all_int8(ov)
    qk_only[[unit.kind == "attention-pv" for unit in ov.units]] = FP32_BITS
    mixed = openvino.precisions(ov.layout.graph(qk_only).SerializeToString())
    import nncf

    calib = ov.data.calib.x.numpy()
    transformer = nncf.quantize(
        openvino.read(ov.layout.float.SerializeToString()),
        nncf.Dataset([calib[i : i + 64] for i in range(0, len(calib), 64)]),
        model_type=nncf.ModelType.TRANSFORMER,
    )
    assert mixed["Subgraph inputs"] == openvino.precisions(transformer)["Subgraph inputs"] == {"i8,i8,f32": 9}


def test_openvino_matches_the_files_reference_semantics(ov):
    """The same file run by OpenVINO's integer kernels and by onnxruntime with every node as written (Q/DQ as float
    ops): the same classes; and the FP32 graph gives the same logits on both runtimes."""
    x = ov.data.test.x.numpy()
    proto = ov.layout.graph(ov.uniform((8, 8))).SerializeToString()
    kernels = ort.logits(openvino.session(proto), x)
    written = ort.logits(ort.session(proto, optimize=False), x)
    assert (kernels.argmax(1) == written.argmax(1)).mean() >= 0.99
    float_bytes = ov.layout.float.SerializeToString()
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
    g = ov.layout
    feed = {ort.INPUT: np.random.default_rng(0).standard_normal((1, *g.input_shape)).astype(np.float32)}
    own = owners(g)
    weighted = np.array([unit.op in ("conv2d", "linear") for unit in ov.units])
    for bits in (fp32(ov), ov.uniform((8, 8))):
        profile = openvino.profile_nodes(g.graph(bits).SerializeToString(), feed, 1, 5)
        per_unit, rest, boundary = attribute(profile, g, own, boundary_ops=())
        assert (per_unit[weighted] > 0).all() and per_unit.sum() > rest and boundary == []
    fq = [name for name, (op, _) in profile.items() if op == "FakeQuantize"]
    unit_of = {name: u for u, names in enumerate(g.node_names) for name in names}
    graph = Graph(g.float.graph)
    # OpenVINO's own transformations add a few FakeQuantize nodes of their own name (copies moved through the
    # attention's reshapes): those have no tensor of ours to follow and count as the graph's fixed part
    generated = [name for name in fq if name.startswith("FakeQuantize_")]
    ours = [name for name in fq if name not in generated]
    readers = [reader_unit(graph, exported_name(name), unit_of) for name in ours]
    int8 = np.array([bool(ov.cost.profile.executable(unit.kind)) for unit in ov.units])
    attention = sum(unit.kind.startswith("attention") for unit in ov.units)
    assert len(generated) <= attention and len(ours) > 10 * len(generated)
    assert all(u >= 0 and int8[u] for u in readers), [(n, u) for n, u in zip(ours, readers) if u < 0 or not int8[u]]
    table = ov.cost.table
    assert table.machine["runtime"].startswith("openvino") and ov.cost.backend == "openvino per-unit"
    assert (table.int8_s[~int8] == table.fp32_s[~int8]).all()  # no int8 choice (LayerNorm inputs): FP32 in both
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
    assert_one_error_line(proc, r"export.openvino=true writes openvino's own files.*hardware.backend=openvino")
    assert not (tmp_path / "policy.json").exists()
