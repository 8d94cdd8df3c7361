"""The runtime layout (``hysquant_rl/deploy/``): a policy's graph as onnxruntime executes it, checked against
onnxruntime's own quantizer and its optimised graph, against onnx's reference evaluator, and the per-unit latency
table measured on the runtime. The digits model on the ``cpu`` profile (executable space: FP32 or W8A8 per unit)."""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

from hysquant_rl import machine
from hysquant_rl.bits import FP32_BITS, to_bits, to_index
from hysquant_rl.deploy import ort
from hysquant_rl.deploy.runtime_graph import module_path, quantize
from hysquant_rl.deploy.runtimes import get
from hysquant_rl.deploy.unit_latency import STEADY, UnitLatency, cached
from hysquant_rl.hardware import load_profile
from hysquant_rl.search.allocation import project
from hysquant_rl.space import choice_mask, neighbours, snap, tied, uniform_policy
from tests.conftest import assert_one_error_line, run_settings


@pytest.fixture(scope="module")
def runtime():
    """The digits pipeline in the executable space of the ``cpu`` profile (its runtime graphs, evaluator and
    measured per-unit latency at batch 1)."""
    from hysquant_rl.pipeline import build

    return build(run_settings("search", ["hardware=cpu", "threads=1"]))


def int8_policy(pipe) -> np.ndarray:
    """Every unit that has an int8 kernel at W8A8, LayerNorm inputs at FP32."""
    return pipe.uniform((8, 8))


def optimized(proto) -> onnx.ModelProto:
    """The graph onnxruntime runs after its optimisations (its fusions into integer kernels)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "optimized.onnx"
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.optimized_model_filepath = str(path)
        options.log_severity_level = 3
        onnxruntime.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return onnx.load(str(path))


# -- names and units ------------------------------------------------------------------------------------------
def test_module_paths_from_exported_names():
    assert module_path("/stages/stages.2/stages.2.1/conv_1x1/Conv") == "stages.2.1.conv_1x1"
    assert module_path("/stages/stages.2/stages.2.1/transformer/transformer.0/attn/qkv/MatMul") == (
        "stages.2.1.transformer.0.attn.qkv"
    )
    assert module_path("/stem/conv/Conv") == "stem.conv" and module_path("/head/fc/Gemm") == "head.fc"


def test_every_unit_is_its_graph_nodes(runtime):
    graph = {n.name: n for n in runtime.layout.float.graph.node}
    for unit, names in zip(runtime.units, runtime.layout.node_names):
        ops = Counter(graph[n].op_type for n in names)
        if unit.op == "conv2d":
            assert ops == {"Conv": 1}, unit.name
        elif unit.op == "linear":
            assert ops in ({"MatMul": 1, "Add": 1}, {"Gemm": 1}), unit.name
        elif unit.op == "layernorm":
            assert ops == {"LayerNormalization": 1}, unit.name
        elif unit.kind == "attention-qk":  # q k^T: the MatMul whose product the softmax reads
            (mm,) = names
            assert ops == {"MatMul": 1} and any(graph[c].op_type == "Softmax" for c in consumers(graph, mm))
        else:  # attention-pv: the softmax and the MatMul of the probabilities and v
            assert ops == {"Softmax": 1, "MatMul": 1}, unit.name
        assert all(module_path(n).startswith(unit.name.rsplit(".", 1)[0]) for n in names), unit.name


def consumers(graph, name):
    out = set(graph[name].output)
    return [n for n, node in graph.items() if out & set(node.input)]


# -- the layout ---------------------------------------------------------------------------------------------------
def test_policy_graphs_are_what_onnxruntime_quantizer_writes(runtime):
    """Derived from the template, a policy's graph equals onnxruntime's ``quantize_static`` with exactly its
    quantized nodes (the independent oracle): same ops, and the same logits to the bit."""
    g, x = runtime.layout, runtime.data.test.x[:64].numpy()
    rng = np.random.default_rng(0)
    for trial in range(2):
        bits = int8_policy(runtime)
        bits[rng.random(len(bits)) < (0.3, 0.6)[trial]] = FP32_BITS
        chosen = g.quantized_nodes(bits)
        with tempfile.TemporaryDirectory() as tmp:
            quantize(g.float_path, Path(tmp) / "oracle.onnx", g.ranges, nodes=sorted(chosen), exclude=g.float_only)
            oracle = onnx.load(str(Path(tmp) / "oracle.onnx"))
        mine = g.graph(bits)
        nodes = [sorted((n.name, n.op_type, tuple(n.input)) for n in p.graph.node) for p in (mine, oracle)]
        assert nodes[0] == nodes[1]  # the same nodes reading the same tensors ...
        assert {t.name for t in mine.graph.initializer} == {t.name for t in oracle.graph.initializer}  # ... and params
        a = ort.logits(ort.session(mine.SerializeToString()), x)
        b = ort.logits(ort.session(oracle.SerializeToString()), x)
        np.testing.assert_array_equal(a, b)


def test_all_int8_export_runs_as_integer_kernels(runtime):
    """onnxruntime's optimised graph of the all-int8 policy: every convolution a QLinearConv, no float Conv, MatMul or
    Gemm fed by a weight DequantizeLinear, no BatchNormalization left; the FP32 policy's graph has no Q/DQ at all."""
    opt = optimized(runtime.layout.graph(int8_policy(runtime)))
    ops = Counter(n.op_type for n in opt.graph.node)
    producer = {o: n for n in opt.graph.node for o in n.output}
    initializers = {t.name for t in opt.graph.initializer}
    for n in opt.graph.node:
        if n.op_type in ("Conv", "FusedConv", "MatMul", "Gemm"):
            weight = producer.get(n.input[1])
            assert not (weight is not None and weight.op_type == "DequantizeLinear"), n.name
    assert ops["BatchNormalization"] == 0 and ops["Conv"] + ops["FusedConv"] == 0
    assert ops["QLinearConv"] == sum(unit.op == "conv2d" for unit in runtime.units)
    assert ops["QLinearMatMul"] >= 18 and ops["QGemm"] == 1  # attention matmuls quantized; the head's logits float
    assert len(initializers) > 0
    fp32 = Counter(n.op_type for n in runtime.layout.graph(np.full((len(runtime.units), 2), 32)).graph.node)
    assert fp32["QuantizeLinear"] == fp32["DequantizeLinear"] == 0


def test_integer_kernels_match_the_files_reference_semantics(runtime):
    """The same file three ways: onnxruntime's integer kernels, onnxruntime running every node as written (Q/DQ as
    float ops), and onnx's reference evaluator (an independent implementation of the ONNX semantics)."""
    from onnx import version_converter
    from onnx.reference import ReferenceEvaluator

    proto = runtime.layout.graph(int8_policy(runtime))
    x = runtime.data.test.x.numpy()
    fused = ort.logits(ort.session(proto.SerializeToString()), x)
    plain = ort.logits(ort.session(proto.SerializeToString(), optimize=False), x)
    assert (fused.argmax(1) == plain.argmax(1)).mean() >= 0.99
    reference = ReferenceEvaluator(version_converter.convert_version(proto, 21)).run(None, {ort.INPUT: x[:8]})[0]
    np.testing.assert_allclose(plain[:8], reference, atol=0.05)


def test_quantized_nodes_follow_the_int8_units(runtime):
    """An FP32 policy quantizes nothing; one int8 convolution quantizes its own node only (its SiLU reads a
    float tensor from the next unit's side); two consecutive int8 convolutions also quantize the SiLU between them."""
    g, n = runtime.layout, len(runtime.units)
    assert g.quantized_nodes(np.full((n, 2), 32)) == set()
    names = [unit.name for unit in runtime.units]
    first, second = names.index("stages.0.0.conv1_1x1.conv"), names.index("stages.0.0.conv2_kxk.conv")
    one = np.full((n, 2), 32)
    one[first] = 8
    assert g.quantized_nodes(one) == set(g.node_names[first])
    two = one.copy()
    two[second] = 8
    silu = {x for x in g.quantized_nodes(two) if "/conv1_1x1/bn/act/" in x}
    assert {s.rsplit("/", 1)[1] for s in silu} == {"Sigmoid", "Mul"}


def test_runtime_evaluator_scores_the_file(runtime):
    """FP32 is its own reference (KL 0); a policy's metrics are those of its file's logits."""
    ev, n = runtime.evaluator, len(runtime.units)
    fp32 = ev.evaluate(np.full((n, 2), 32), "test")
    assert fp32.kl == 0 and fp32.top1 == pytest.approx(
        100 * (ev.fp32("test")[0].argmax(1) == ev.fp32("test")[1]).float().mean().item()
    )
    bits = int8_policy(runtime)
    m = ev.evaluate(bits, "test")
    x, y = runtime.data.test.x.numpy(), runtime.data.test.y.numpy()
    logits = ort.logits(ort.session(runtime.layout.graph(bits).SerializeToString()), x)
    assert m.top1 == pytest.approx(100 * (logits.argmax(1) == y).mean()) and m.kl > 0


# -- per-unit latency ----------------------------------------------------------------------------------------------
def test_unit_latency_table_is_measured_once_per_machine(runtime, tmp_path):
    table = runtime.cost.table
    n = len(runtime.units)
    # the table reproduces its two whole-graph timings exactly (the fit), FP32 and all int8
    assert table.latency(np.full((n, 2), 32)) == pytest.approx(table.measured["fp32"], rel=1e-9)
    assert table.latency(int8_policy(runtime)) == pytest.approx(table.measured["int8"], rel=1e-9)
    assert table.machine == get("onnxruntime").machine() and table.batch_size == 1
    ln = np.array([unit.op == "layernorm" for unit in runtime.units])
    assert (table.int8_s[ln] == table.fp32_s[ln]).all()  # no int8 kernel: its FP32 figure in both
    # the cost model prices with it: per unit, and the profile's energy beside it
    assert runtime.cost.policy_cost(int8_policy(runtime)).latency_s == pytest.approx(table.measured["int8"], rel=1e-9)
    # cached under the machine's key: read back, not measured again; unless the machine was too busy for a table
    # worth keeping (its whole-graph timings varied by more than STEADY), which is then used and not cached
    int8 = ~ln
    first = cached(runtime.layout, int8, 1, load_profile("cpu").timing, tmp_path, get("onnxruntime"))
    # measured just now (not read back): plain Python numbers, which every JSON file built on them can hold
    mixed = int8 & (np.arange(n) % 2 == 0)
    assert all(type(v) is float for v in (*first.quantize_s, *first.dequantize_s, first.boundary(mixed)))
    files = list((tmp_path / "runtime").rglob("*.json"))
    if first.spread > STEADY:
        assert files == []
        return
    assert len(files) == 1 and files[0].parent.name == get("onnxruntime").machine_key()
    stamp = files[0].stat().st_mtime_ns
    again = cached(runtime.layout, int8, 1, load_profile("cpu").timing, tmp_path, get("onnxruntime"))
    assert files[0].stat().st_mtime_ns == stamp and np.array_equal(again.int8_s, first.int8_s)
    doc = json.loads(files[0].read_text())
    assert UnitLatency.from_dict(doc).machine["cpu"] == machine.cpu_model()


# -- the executable space ------------------------------------------------------------------------------------------
def test_executable_choices_of_the_cpu_profile(runtime):
    cpu = load_profile("cpu")
    mask = choice_mask(runtime.units, cpu, "executable")
    for unit, m in zip(runtime.units, mask):
        cells = {tuple(to_bits(cell).tolist()) for cell in np.argwhere(m)}
        assert cells == ({(32, 32)} if unit.kind == "layernorm-in" else {(8, 8), (32, 32)}), unit.name
    assert tied(mask).all()
    moves = neighbours(mask)
    conv = 0
    i8, f = to_index((8, 8)), to_index((32, 32))
    assert tuple(moves[conv, f[0], f[1], 0]) == tuple(i8)  # w down from FP32: to W8A8, both operands
    assert tuple(moves[conv, i8[0], i8[1], 3]) == tuple(f)  # a up from W8A8: to FP32
    assert snap(mask[conv], 2, 5) == tuple(i8)
    # a uniform spec in this space: each unit at the pair where the runtime runs it, else FP32
    weighted = np.array([unit.weighted for unit in runtime.units])
    ln = np.array([unit.kind == "layernorm-in" for unit in runtime.units])
    w4a8, w8a8 = (uniform_policy(p, mask, runtime.units) for p in ((4, 8), (8, 8)))
    assert (w4a8[weighted] == 32).all() and (w4a8[~weighted & ~ln] == 8).all()
    assert (w8a8[~ln] == 8).all() and (w8a8[ln] == 32).all()
    assert not runtime.executes((4, 8)) and runtime.executes((8, 8))


def test_project_moves_to_fp32_where_it_is_cheaper():
    """On a tied space a unit moves between W8A8 and FP32, whichever way saves cost: where a unit's float kernel is
    faster the projection picks FP32 for it; checked against brute force over the 2^5 policies."""
    n = 5
    mask = np.zeros((n, 8, 8), dtype=bool)
    mask[:, 6, 6] = mask[:, 7, 7] = True
    latency = np.zeros((n, 8, 8))
    latency[:, 6, 6] = [1.0, 2.0, 1.0, 3.0, 1.0]  # int8
    latency[:, 7, 7] = [2.0, 1.0, 1.5, 1.0, 3.0]  # FP32: faster on units 1 and 3
    proxy = np.zeros((n, 8, 8))
    proxy[:, 6, 6] = [0.1, 0.5, 0.2, 0.3, 0.05]
    start = np.full((n, 2), 32)
    limit = 6.0
    got = project(start, proxy, mask, {"latency_ms": latency}, {"latency_ms": limit})
    best = min(
        (sum(proxy[l, 6, 6] for l in range(n) if c >> l & 1), c)
        for c in range(2**n)
        if sum(latency[l, 6, 6] if c >> l & 1 else latency[l, 7, 7] for l in range(n)) <= limit
    )
    cost = sum(latency[(l, *to_index(got[l]))] for l in range(n))
    assert cost <= limit and (got[[1, 3]] == 32).all()
    assert sum(proxy[(l, *to_index(got[l]))] for l in range(n)) == pytest.approx(best[0])


def test_apply_refuses_a_policy_the_runtime_cannot_run(runtime, tmp_path, run_here):
    from hysquant_rl.apps.apply import main

    policy = runtime.policy(np.where(np.array([l.weighted for l in runtime.units])[:, None], [4, 8], [8, 8]))
    path = tmp_path / "w4a8.json"
    policy.save(path)
    out = tmp_path / "run"
    proc = run_here(main, f"policy={path}", "hardware=cpu", "export.onnx=true", "threads=1", tmp_path=out)
    line = assert_one_error_line(proc, r"93 unit\(s\) at pairs onnxruntime does not execute \(stem.conv W4A8")
    assert "runs FP32 or W8A8" in line
    assert not (out / "model.onnx").exists() and not (out / "policy.json").exists()


def _damage(doc: dict, damage: str) -> dict | None:
    """A per-unit latency document damaged as a hand edit, a bad disk or another machine would (None: no JSON)."""
    doc = json.loads(json.dumps(doc))
    if damage == "short int8":
        doc["int8_s"] = doc["int8_s"][:-3]
    elif damage == "nan":
        doc["fp32_s"][0] = float("nan")
    elif damage == "zero int8":  # used silently before: W8A8 priced at a tenth of its time
        doc["int8_s"] = [0.0] * len(doc["int8_s"])
    elif damage == "other cpu":
        doc["machine"]["cpu"] = "Some Other CPU"
    elif damage == "huge":
        doc["fixed_s"] = 1e30
    elif damage == "fifo":
        return None
    return doc


@pytest.mark.parametrize("damage", ["short int8", "nan", "zero int8", "other cpu", "huge", "fifo"])
def test_a_damaged_unit_latency_cache_is_named_and_measured_again(runtime, tmp_path, caplog, damage):
    """Issue 30 item 3: a cached table is checked for shape, finiteness, range, machine and whether it reproduces the
    whole-graph timings it was scaled to; one that fails is named in a warning and measured again (no traceback, no
    silent use, no hang on a FIFO)."""
    import logging
    import os

    from hysquant_rl.deploy.unit_latency import layout_key

    table, timing, ort_runtime = runtime.cost.table, load_profile("cpu").timing, get("onnxruntime")
    int8 = np.array([any(a == 8 for _, a in runtime.cost.profile.executable(unit.kind)) for unit in runtime.units])
    sha = layout_key(runtime.layout, int8)
    path = tmp_path / "runtime" / ort_runtime.machine_key() / f"{sha[:16]}_b1_t{timing.threads}.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(table.to_dict()))
    read = cached(runtime.layout, int8, 1, timing, tmp_path, ort_runtime)  # the intact table is read back as it is
    assert np.array_equal(read.int8_s, table.int8_s) and read.measured == table.measured
    doc = _damage(table.to_dict(), damage)
    path.unlink()
    if doc is None:
        os.mkfifo(path)
    else:
        path.write_text(json.dumps(doc))
    with caplog.at_level(logging.WARNING, logger="hysquant_rl.deploy.unit_latency"):
        again = cached(runtime.layout, int8, 1, timing, tmp_path, ort_runtime)
    assert any(f"per-unit latency cache {path} cannot be used" in r.getMessage() for r in caplog.records)
    again.check(int8, sha, 1, timing.threads, ort_runtime.machine())  # measured again: a table that passes
    assert again.machine["cpu"] == machine.cpu_model() and (again.int8_s > 0).any()
