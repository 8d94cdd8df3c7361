"""Benchmark: the ``cpu`` device profile measured on this machine, and the roofline checked against onnxruntime.

    .venv/bin/python benchmarks/cpu_profile.py            # measure, fit, write conf/hardware/cpu.yaml, then check
    .venv/bin/python benchmarks/cpu_profile.py --check    # only the check, with the committed profile

1. Peaks and bandwidth, from small onnxruntime graphs on ``--threads`` intra-op threads (median of 30 runs after
   warm-up): fp32 ``MatMul`` and uint8 ``MatMulInteger`` (what onnxruntime fuses the export's W8A8 matmuls into) on
   1024 x 1024 x 1024, and an ``Add`` of two 64 MB float tensors (3 x 64 MB moved).
   The fixed time per kernel: chains of 50 and 400 tiny ``Add`` nodes, the slope. The Q/DQ rate: a
   ``QuantizeLinear`` and a ``DequantizeLinear`` over 4M floats, elements per second per kernel.
2. Fitted on the embedded Fashion-MNIST model's exported graph, timed at uniform FP32, W8A8 and W8A32 at batch 1
   and 64 (:class:`hysquant_rl.deploy.timing.RuntimeCheck`): ``view_overhead_s`` (each reshape or
   transpose is a node with its shape arithmetic), ``dequantized_weight_speed`` (a float convolution on weights
   dequantized on each run is not pre-packed) and ``compute_efficiency`` (the fraction of the matmul peak the model's
   small kernels reach), least squares of log(modelled / measured).
3. Writes ``conf/hardware/cpu.yaml`` with these constants and their provenance.
4. Modelled (the roofline with the written profile) against measured (onnxruntime) for uniform and mixed policies at
   batch 1 and 64: Spearman rank correlation, mean absolute percentage error, a table
   (``benchmarks/results/cpu_cost_check.md``, with ``.json``) and a scatter plot (``cpu_cost_check.png``).
"""

from __future__ import annotations

import argparse
import datetime
import logging
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from hysquant_rl.apps import compose_config, plain
from hysquant_rl.bits import FP32_BITS, parse_uniform
from hysquant_rl.deploy import ort
from hysquant_rl.deploy.runtimes import get
from hysquant_rl.deploy.timing import Measurement, RuntimeCheck, cv, run_times
from hysquant_rl.hardware import CostModel, load_profile
from hysquant_rl.hardware.profile import Timing, runtime_version
from hysquant_rl.io import atomic_write, save_json
from hysquant_rl.pipeline import build, deployable
from hysquant_rl.policy import QuantPolicy
from hysquant_rl.settings import RunSettings

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
FOUND = RESULTS / "found_policy_fashion_rl_batch64.json"


def _session(graph, threads: int):
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return ort.session(model.SerializeToString(), threads)


def _median_s(session, feed, runs: int = 30) -> float:
    return statistics.median(run_times(session, feed, 5, runs))


def measure_peaks(threads: int) -> dict[str, float]:
    """fp32 and int8 matmul throughput [op/s], memory bandwidth [byte/s] and the fixed time per kernel [s] under
    onnxruntime."""
    from onnx import TensorProto, helper

    n = 1024
    rng = np.random.default_rng(0)
    out = {}
    for name, dtype, elem, op in (
        ("fp32", np.float32, TensorProto.FLOAT, "MatMul"),
        ("int8", np.uint8, TensorProto.UINT8, "MatMulInteger"),
    ):
        a = helper.make_tensor_value_info("a", elem, [n, n])
        b = helper.make_tensor_value_info("b", elem, [n, n])
        y = helper.make_tensor_value_info("y", TensorProto.INT32 if name == "int8" else elem, [n, n])
        graph = helper.make_graph([helper.make_node(op, ["a", "b"], ["y"])], name, [a, b], [y])
        values = rng.integers(0, 255, (2, n, n)).astype(dtype) if name == "int8" else rng.random((2, n, n), dtype)
        seconds = _median_s(_session(graph, threads), {"a": values[0], "b": values[1]}, runs=10)
        out[name] = 2.0 * n**3 / seconds
    elems = 16 * 2**20  # 64 MB per float tensor
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [elems])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [elems])
    s = helper.make_tensor_value_info("s", TensorProto.FLOAT, [elems])
    graph = helper.make_graph([helper.make_node("Add", ["x", "z"], ["s"])], "add", [x, z], [s])
    data = rng.random((2, elems), np.float32)
    out["bandwidth"] = 3 * 4 * elems / _median_s(_session(graph, threads), {"x": data[0], "z": data[1]})
    # the fixed cost of a kernel: chains of n tiny Adds (16 floats), the slope of time over n
    chain = {}
    for n_nodes in (50, 400):
        t = helper.make_tensor_value_info("t0", TensorProto.FLOAT, [16])
        nodes = [helper.make_node("Add", [f"t{i}", f"t{i}"], [f"t{i + 1}"]) for i in range(n_nodes)]
        end = helper.make_tensor_value_info(f"t{n_nodes}", TensorProto.FLOAT, [16])
        sess = _session(helper.make_graph(nodes, "chain", [t], [end]), threads)
        chain[n_nodes] = _median_s(sess, {"t0": np.ones(16, np.float32)}, runs=100)
    out["kernel_overhead_s"] = (chain[400] - chain[50]) / 350
    # QuantizeLinear then DequantizeLinear (uint8, per tensor) over 4M floats: elements per second per kernel
    elems = 4 * 2**20
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [elems])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [elems])
    scale = helper.make_tensor("s", TensorProto.FLOAT, [], [0.01])
    zero = helper.make_tensor("z", TensorProto.UINT8, [], [128])
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"]),
    ]
    sess = _session(helper.make_graph(nodes, "qdq", [x], [y], [scale, zero]), threads)
    out["qdq_elements_per_s"] = 2 * elems / _median_s(sess, {"x": rng.standard_normal(elems).astype(np.float32)})
    return out


def pipeline(overrides: list[str]):
    run = RunSettings.from_mapping(plain(compose_config("apply", [*overrides, "hardware=cpu", "policy=FP32"])))
    return run, build(run)


def write_profile(peaks: dict[str, float], fitted: dict[str, float], threads: int, fit_note: str) -> Path:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor() or "unknown CPU",
    )
    version, day = runtime_version("onnxruntime"), datetime.date.today().isoformat()
    text = f"""# This machine's CPU as a runtime plug-in runs a deployed model: onnxruntime's CPU provider by default,
# another with hardware.backend=<runtime> (conf/runtime/).
# In the executable space (search.space=auto on this profile) latency is not modelled from the constants below: each
# unit's is measured by onnxruntime on the machine at hand on first use and cached per machine (CPU model, runtime and
# version; hysquant_rl/deploy/unit_latency.py), and backend=onnxruntime times the found policy's whole graph. The
# roofline constants below price the paper's simulated layout (search.space=simulated, where convolutions stay float on
# onnxruntime), and energy (an assumption) and size everywhere. They were measured by benchmarks/cpu_profile.py on the
# machine named in measured_on (rerun it on another CPU: it rewrites this file); a run on another machine says so.
name: cpu
measured_on: "{cpu}, {version}, {threads} intra-op thread(s), {day}"  # the roofline constants below
runtime: onnxruntime  # what runs the deployed model (a plug-in of conf/runtime/): search.space=auto searches the
                      # choices its conf/runtime/<name>.yaml lists (executable)
backend: modelled  # modelled: the roofline with the constants below | a runtime of conf/runtime/ (onnxruntime,
                   # openvino, ...): that runtime's choices, and its timing of the exported model here
batch_size: 1
float_precision: fp32  # no fp16 kernels on this CPU: unquantized units compute in fp32
peak_ops:
  fp32: {peaks["fp32"]:.4g}  # measured: onnxruntime MatMul 1024^3 fp32
  int8: {peaks["int8"]:.4g}  # measured: onnxruntime MatMulInteger 1024^3 uint8 x uint8 (the export's containers)
memory_bandwidth: {peaks["bandwidth"]:.4g}  # bytes/s; measured: onnxruntime Add of two 64 MB float tensors
kernel_overhead_s: {peaks["kernel_overhead_s"]:.4g}  # measured: chains of 50 and 400 tiny Add nodes, the slope
qdq_elements_per_s: {peaks["qdq_elements_per_s"]:.4g}  # measured: QuantizeLinear + DequantizeLinear over 4M floats
# Fitted: {fit_note}
view_overhead_s: {fitted["view_overhead_s"]:.4g}
dequantized_weight_speed: {fitted["dequantized_weight_speed"]:.4g}
compute_efficiency: {fitted["compute_efficiency"]:.4g}
# onnxruntime runs each quantized activation's QuantizeLinear and DequantizeLinear as kernels of their own
qdq_kernels: 2
# Integer kernels onnxruntime's CPU provider fuses the export into: MatMulIntegerToFloat / QLinearMatMul (W8A8)
# and MatMulNBits (weights at 2..8 bits, float activations). Convolutions stay float Conv over dequantized
# weights (QLinearConv needs a quantized output, which the paper's scheme does not have): simulation-only.
integer_ops: [linear, matmul]
deployable_weight_bits: [8]
deployable_activation_bits: [8, 32]
# Not measured (no power counter in this VM): an AMD EPYC 7763 is 280 W for 64 cores, 4.4 W a core, 2 cores
# here; memory power assumed 25 % of it as in the GPU profiles. Energy on this profile is an assumption.
max_power_w: 8.75
memory_power_w: 2.2
timing:  # hardware.backend=onnxruntime
  threads: {threads}
  warmup: 10
  repeats: 30
  max_cv: 0.5  # CVs on this 2-core VM reach 0.34 (benchmarks/results/cpu_cost_check.md); above 0.5 is a busy machine
  attempts: 4  # a timing above max_cv is timed again (its runs pooled, judged on the fastest half) ...
  pause_s: 1.0  # ... after a pause of this many seconds, doubling each time; then the check is reported missing
"""
    path = ROOT / "conf" / "hardware" / "cpu.yaml"
    return atomic_write(path, lambda f: f.write(text.encode()))


FIT_POLICIES = ("FP32", "W8A8", "W8A32")


def fit(pipe, threads: int, overrides: list[str]) -> tuple[dict[str, float], str]:
    """view_overhead_s, dequantized_weight_speed and compute_efficiency: least squares of log(modelled /
    measured) over :data:`FIT_POLICIES` at batch 1 and 64."""
    from dataclasses import replace

    from scipy.optimize import least_squares

    profile = load_profile("cpu")
    points = []
    for batch in (1, 64):
        cost = CostModel(pipe.units, pipe.matmuls, profile, batch, pipe.cost.other)
        timer = RuntimeCheck(
            deployable(pipe), pipe.data.input_shape, cost, Timing(threads=threads), "simulated", get("onnxruntime")
        )
        named = {spec: np.array([parse_uniform(spec)] * len(pipe.units)) for spec in FIT_POLICIES}
        for spec, m in interleaved(timer, named).items():
            points.append((batch, named[spec], m.latency_s))

    def residuals(x: np.ndarray) -> np.ndarray:
        p = replace(
            profile, view_overhead_s=float(x[0]), dequantized_weight_speed=float(x[1]), compute_efficiency=float(x[2])
        )
        models = {b: CostModel(pipe.units, pipe.matmuls, p, b, pipe.cost.other) for b in (1, 64)}
        return np.array([np.log(models[b].policy_cost(bits).latency_s / t) for b, bits, t in points])

    solution = least_squares(
        residuals, x0=[1e-6, 0.5, 0.5], bounds=([0.0, 0.01, 0.01], [1e-3, 1.0, 1.0]), x_scale=[1e-6, 0.1, 0.1]
    )
    fitted = dict(zip(("view_overhead_s", "dequantized_weight_speed", "compute_efficiency"), map(float, solution.x)))
    error = float(np.exp(np.abs(solution.fun)).mean() - 1)
    note = (
        f"least squares of log(modelled / measured) over uniform {', '.join(FIT_POLICIES)} at batch 1 and 64 on the"
        f" embedded model ({' '.join(overrides)}); mean error at the fit {100 * error:.0f} %"
    )
    return fitted, note


def policies(pipe, seed: int) -> dict[str, np.ndarray]:
    n = len(pipe.units)
    out = {spec: np.array([parse_uniform(spec)] * n) for spec in ("FP32", "W8A8", "W4A8", "W8A4", "W4A4", "W8A32")}
    convs = np.array([unit.op == "conv2d" for unit in pipe.units])
    out["FP32 convolutions, W8A8 rest"] = np.where(convs[:, None], FP32_BITS, np.full((n, 2), 8))
    out["W8A8 convolutions, FP32 rest"] = np.where(convs[:, None], 8, np.full((n, 2), FP32_BITS))
    rng = np.random.default_rng(seed)
    for i in range(3):
        out[f"random mixed {i}"] = rng.choice([2, 3, 4, 5, 6, 8, FP32_BITS], size=(n, 2))
    if FOUND.exists():
        out["found (RL, Fashion-MNIST, rtx3080 batch 64)"] = QuantPolicy.load(FOUND).bits()
    return out


def interleaved(timer: RuntimeCheck, named: dict[str, np.ndarray], rounds: int = 5, runs: int = 10) -> dict:
    """Measurements of every policy, its runs spread over ``rounds`` round-robin passes of ``runs`` runs each, so
    that a slow spell of the machine falls on all policies alike."""
    sessions = {name: timer.open(bits) for name, bits in named.items()}
    times: dict[str, list[float]] = {name: [] for name in named}
    for r in range(rounds):
        for name, session in sessions.items():
            times[name] += run_times(session, timer.feed, 5 if r == 0 else 1, runs)
    return {
        name: Measurement(statistics.median(t), cv(t), len(t), timer.batch_size, timer.timing.threads)
        for name, t in times.items()
    }


def check(run, pipe, threads: int) -> dict:
    profile = load_profile("cpu")
    rows = []
    for batch in (1, 64):
        cost = CostModel(pipe.units, pipe.matmuls, profile, batch, pipe.cost.other)
        timer = RuntimeCheck(
            deployable(pipe), pipe.data.input_shape, cost, Timing(threads=threads), "simulated", get("onnxruntime")
        )
        named = policies(pipe, run.seed)
        for name, m in interleaved(timer, named).items():
            modelled = cost.policy_cost(named[name]).latency_s
            rows.append(
                {
                    "policy": name,
                    "batch": batch,
                    "measured_s": m.latency_s,
                    "cv": m.cv,
                    "modelled_s": modelled,
                    "fitted_on": name in FIT_POLICIES,
                }
            )
            print(
                f"batch {batch:2d} {name:45s} measured {1e3 * m.latency_s:8.3f} ms (CV {m.cv:.3f})"
                f"  modelled {1e3 * modelled:8.3f} ms",
                flush=True,
            )
    return {"rows": rows, "runtime": runtime_version("onnxruntime"), "threads": threads}


def report(result: dict, command: str, seconds: float) -> None:
    from scipy.stats import spearmanr

    rows = result["rows"]
    measured = np.array([r["measured_s"] for r in rows])
    modelled = np.array([r["modelled_s"] for r in rows])
    ape = np.abs(modelled - measured) / measured
    groups = {
        "all": np.ones(len(rows), bool),
        "held out (not fitted on)": np.array([not r["fitted_on"] for r in rows]),
        "batch 1": np.array([r["batch"] == 1 for r in rows]),
        "batch 64": np.array([r["batch"] == 64 for r in rows]),
    }
    stats = {
        name: {
            "points": int(sel.sum()),
            "spearman": float(spearmanr(modelled[sel], measured[sel]).statistic),
            "mape": float(ape[sel].mean()),
        }
        for name, sel in groups.items()
    }
    result.update(stats=stats)
    save_json(result, RESULTS / "cpu_cost_check.json")
    lines = [
        "# The roofline on the `cpu` profile against onnxruntime (embedded model, Fashion-MNIST)",
        "",
        f"Measured: the exported QDQ graph timed by {result['runtime']} on this machine's CPU, {result['threads']}"
        " thread(s), median of 50 runs interleaved with the other policies' in 5 rounds (CV in brackets)."
        " Modelled: the roofline with `conf/hardware/cpu.yaml` (peaks, bandwidth, kernel overhead and Q/DQ rate"
        " measured; view overhead, dequantized-weight speed and compute efficiency fitted on uniform"
        f" {', '.join(FIT_POLICIES)}). Produced in {seconds:.0f} s by `.venv/bin/python {command}`.",
        "",
        "Targets: Spearman rho >= 0.9, mean absolute percentage error (MAPE) <= 20 %.",
        "",
        "| points | n | Spearman rho | MAPE |",
        "|---|---|---|---|",
        *[f"| {name} | {v['points']} | {v['spearman']:.3f} | {100 * v['mape']:.1f} % |" for name, v in stats.items()],
        "",
        "| policy | batch | measured (ms) | modelled (ms) | error |",
        "|---|---|---|---|---|",
        *[
            f"| {r['policy']}{' (fitted on)' if r['fitted_on'] else ''} | {r['batch']} |"
            f" {1e3 * r['measured_s']:.3f} ({r['cv']:.2f}) |"
            f" {1e3 * r['modelled_s']:.3f} | {100 * (r['modelled_s'] / r['measured_s'] - 1):+.0f} % |"
            for r in rows
        ],
    ]
    text = "\n".join(lines) + "\n"
    atomic_write(RESULTS / "cpu_cost_check.md", lambda f: f.write(text.encode()))
    print(text)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for batch, marker in ((1, "o"), (64, "s")):
        sel = np.array([r["batch"] == batch for r in rows])
        ax.scatter(1e3 * measured[sel], 1e3 * modelled[sel], marker=marker, label=f"batch {batch}")
    lo, hi = 1e3 * min(measured.min(), modelled.min()) / 1.3, 1e3 * max(measured.max(), modelled.max()) * 1.3
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="modelled = measured")
    ax.set(xscale="log", yscale="log", xlabel="measured latency, onnxruntime CPU (ms)", ylabel="modelled latency (ms)")
    ax.set_title(f"cpu profile: Spearman {stats['all']['spearman']:.2f}, MAPE {100 * stats['all']['mape']:.0f} %")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "cpu_cost_check.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare modelled with measured")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (default: data=fashion_mnist)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    overrides = args.overrides or ["data=fashion_mnist"]
    start = time.perf_counter()
    run, pipe = pipeline(overrides)
    if not args.check:
        peaks = measure_peaks(args.threads)
        print({k: f"{v:.3g}" for k, v in peaks.items()}, flush=True)
        write_profile(
            peaks,
            dict.fromkeys(("view_overhead_s", "dequantized_weight_speed", "compute_efficiency"), 1.0),
            args.threads,
            "pending",
        )
        fitted, note = fit(pipe, args.threads, overrides)
        write_profile(peaks, fitted, args.threads, note)
        print(note, flush=True)
    result = check(run, pipe, args.threads)
    command = " ".join(["benchmarks/cpu_profile.py", *(["--check"] if args.check else []), *overrides])
    report(result, command, time.perf_counter() - start)


if __name__ == "__main__":
    main()
