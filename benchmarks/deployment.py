"""Benchmark: what runs fast on this machine's CPU, side by side in one run, against onnxruntime's own quantizer.

    .venv/bin/python benchmarks/deployment.py            # the full benchmark (about 25 min on 2 cores)
    .venv/bin/python benchmarks/deployment.py --quick    # fewer episodes, batch 64 only, no 256 px part

Part 1, the embedded Fashion-MNIST model (``data=fashion_mnist``) on ``hardware=cpu hardware.backend=onnxruntime``
at batch 64, the executable space (FP32 or W8A8 per unit; accuracy measured by onnxruntime on each policy's file):
searches ILP-KL, ``local`` and ``rl`` under a latency budget (``--ratio`` of FP32), then times side by side
(interleaved rounds of ``timing.repeats`` runs, medians, 1 thread, batch 1 and 64): FP32; onnxruntime's
``quantize_static`` of the same FP32 graph as a user runs it (QDQ, per-channel int8 weights, uint8 activations, every
op, its own MinMax calibration on the same images); our uniform W8A8; the three found policies; and random mixes, on
which the per-unit latency model (``hysquant_rl/deploy/unit_latency.py``) is scored (Spearman, MAPE). Test top-1 of
each on the 10k test images (onnxruntime). The found RL policy's file is run three ways (onnxruntime's integer kernels,
onnxruntime with graph optimisations off: the Q/DQ nodes as float ops, and onnx's reference evaluator on a sample).

Part 2, timm ``mobilevit_xxs`` at 256 px with random weights (latency only) through the whole pipeline, on a
synthetic image folder: FP32, ``quantize_static`` int8, our W8A8 and the fastest policy the latency model finds
(the integer program over per-unit latency and boundaries), timed side by side at batch 1 and 8.

Part 3: a latency budget below every executable policy is refused before any search, with the fastest policy measured.

    .venv/bin/python benchmarks/deployment.py --runtime openvino   # the same on OpenVINO (about 25 min)

With ``--runtime openvino`` parts 1 and 2 run on ``hardware.backend=openvino`` (OpenVINO's layout, choices, per-unit
latency, accuracy and timing) and the anchors are NNCF's own int8 of the same FP32 graph (``nncf.quantize`` on the
same calibration images, default and ``model_type=TRANSFORMER``: what a user would pick instead), with onnxruntime's
FP32 beside them; the budgets are the fastest policy the latency model finds (x 1.005) and midway between it and FP32.
The round trip runs each file on OpenVINO's integer kernels against onnxruntime running its Q/DQ nodes as float ops
(the file's fake-quant semantics). The compiled models' runtime precisions and the CPU's capabilities (bf16 or not)
are reported.

    .venv/bin/python benchmarks/deployment.py --runtime executorch --data cifar10 --batch 8 --episodes 20

With ``--runtime executorch`` (ExecuTorch with XNNPACK, the mobile path) the anchor is ``XNNPACKQuantizer``'s uniform
int8, every program is lowered for the batch it is timed at (an ExecuTorch program fixes its batch), the searches
answer the dual question (``budget=accuracy budget.max_drop=--max-drop``: the lowest latency within that many points
of FP32's search-val top-1), and the round trip runs each ``.pte`` on XNNPACK's integer kernels against the converted
PT2E module in PyTorch (the numerics the search evaluates). ``--data cifar10`` is the shipped CIFAR-10 model (32 px,
10 000 test images; the archive ``--data-root``, default this workplace's shared data folder); ``--batch`` is the
search's batch and the second timing batch.

Writes ``benchmarks/results/deployment.md`` and ``deployment.json`` (``deployment-<runtime>.*`` with another
``--runtime``); every figure is measured on this machine, which the report names.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import (
    RESULTS,
    SHARED_DATA,
    Model,
    agreement,
    at_batch,
    machine_record,
    pipe_mask,
    policy_model,
    runtime_anchors,
    settings,
    side_by_side,
    test_top1,
    threads,
    write_report,
)
from scipy.stats import spearmanr

from hysquant_rl.apps.search import run_search
from hysquant_rl.bits import FP32_BITS
from hysquant_rl.deploy import ort, runtimes
from hysquant_rl.errors import HySquantError
from hysquant_rl.hardware.profile import known_runtimes
from hysquant_rl.io import save_json
from hysquant_rl.lut.build import build_lut
from hysquant_rl.pipeline import Pipeline, build
from hysquant_rl.policy import QuantPolicy
from hysquant_rl.settings import RunSettings

METHODS = (("ilp-kl", ["search.method=ilp"]), ("local", ["search.method=local"]), ("rl", []))
log = logging.getLogger("deployment")


def anchors(pipe: Pipeline) -> dict[str, Model]:
    """What a user would run instead: the runtime's own quantizer's int8 (onnxruntime: ``quantize_static``; OpenVINO:
    NNCF's two presets, with onnxruntime's FP32 beside them for the speed of the two runtimes; ExecuTorch:
    ``XNNPACKQuantizer``)."""
    out = runtime_anchors(pipe)
    if pipe.runtime.name == "openvino":
        out["onnxruntime FP32"] = ("onnxruntime", pipe.layout.float.SerializeToString())
    return out


# -- part 1 --------------------------------------------------------------------------------------------------------
def budgets(args: argparse.Namespace, pipe: Pipeline) -> dict[str, list[str]]:
    """The budgets the searches run at, as overrides. onnxruntime: latency budgets (x FP32) at the latency the model
    gives uniform W8A8, and ``--tighter`` times that. OpenVINO, where int8 is not faster than FP32 everywhere: the
    fastest policy the model finds (x 1.005), and midway between it and FP32. ExecuTorch: the dual question, the
    lowest latency within ``--max-drop`` points of FP32's search-val top-1."""
    from hysquant_rl.search.budget import cheapest

    if args.runtime == "executorch":
        return {f"max_drop {args.max_drop}": ["budget=accuracy", f"budget.max_drop={args.max_drop}"]}
    fp32 = pipe.cost.uniform_cost(32, 32).latency_s
    if args.runtime == "onnxruntime":
        int8_ratio = pipe.cost.policy_cost(pipe.uniform((8, 8))).latency_s / fp32
        ratios = {"int8": round(int8_ratio, 4), "tighter": round(args.tighter * int8_ratio, 4)}
    else:
        fastest = pipe.cost.policy_cost(cheapest(pipe.cost, pipe_mask(pipe), "latency_ms")).latency_s / fp32
        ratios = {"midway": round((1 + fastest) / 2, 4), "fastest": round(1.005 * fastest, 4)}
    return {k: ["budget=latency", f"budget.latency_ratio={r}"] for k, r in ratios.items()}


def data_overrides(args: argparse.Namespace) -> list[str]:
    """``--data`` (and its archive) as overrides; the real-photo sets read this workplace's shared folder by default."""
    if args.data == "fashion_mnist":
        return ["data=fashion_mnist"]
    archives = {"cifar10": "cifar10-jpeg.zip", "imagenette": "imagenette-224.zip"}
    root = args.data_root or SHARED_DATA / archives[args.data]
    if not Path(root).exists():
        raise SystemExit(f"error: {root} does not exist: pass --data-root /path/to/the/{args.data}/archive")
    return [f"data={args.data}", f"data.root={root}"]


def part1(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    base = [*data_overrides(args), "hardware=cpu", f"hardware.backend={args.runtime}"]
    base += [f"hardware.batch_size={args.batch}", "search.max_rounds=2"]
    run, _ = settings(base)
    start = time.perf_counter()
    pipe = build(run)
    lut = build_lut(run, pipe)
    n = len(pipe.units)
    found: dict[str, np.ndarray] = {}
    searches = {}
    for (budget, overrides), (method, extra) in itertools.product(budgets(args, pipe).items(), METHODS):
        t0 = time.perf_counter()
        episodes = [f"search.episodes={args.episodes}"] if method != "ilp-kl" else []
        _, search = settings([*base, *overrides, *extra, *episodes])
        name, out = f"{method}, {budget} budget", work / f"{method}-{budget.replace(' ', '_')}"
        try:
            summary = run_search(run, search, out, pipe)
        except HySquantError as e:
            searches[name] = {"budget": overrides[-1], "error": str(e)}
            continue
        found[name] = np.array(QuantPolicy.load(out / "best_policy.json").bits())
        searches[name] = {
            "budget": overrides[-1],
            "episodes": summary["episodes"],
            "wall_s": time.perf_counter() - t0,
            "budget_ms": summary["budgets"].get("latency_ms"),
            "rounds": len(summary["rounds"]),
            "measured_speedup": summary.get("measured_speedup_over_fp32"),
            "unchecked": summary.get("unchecked"),
        }
        log.warning("%s: %s", name, searches[name])
    policies = {"FP32": np.full((n, 2), FP32_BITS), "W8A8 (ours)": pipe.uniform((8, 8)), **found}
    rng = np.random.default_rng(0)
    for f in (0.1, 0.3, 0.5, 0.7, 0.9):
        mix = pipe.uniform((8, 8))
        mix[rng.random(n) < f] = FP32_BITS
        policies[f"random {int(100 * f)} % FP32"] = mix
    models: dict[str, Model] = {k: policy_model(pipe, b) for k, b in policies.items()}
    anchor = anchors(pipe)
    models.update(anchor)
    if args.runtime == "openvino" and pipe.runtime.capabilities()["bf16"]:  # bf16 for every float op, measured
        rl_bits = next((b for k, b in found.items() if k.startswith("rl")), policies["W8A8 (ours)"])
        models["OpenVINO FP32, bf16 hint"] = ("openvino-bf16", pipe.layout.artefact(policies["FP32"]))
        models["rl policy, bf16 hint"] = ("openvino-bf16", pipe.layout.artefact(rl_bits))
    accuracy = {k: test_top1(pipe, m) for k, m in models.items() if not k.startswith("random")}
    timing, prediction = {}, {}
    for batch in (1, args.batch) if not args.quick else (args.batch,):
        timed = at_batch(pipe, models, policies, batch)
        runs = 200 if batch == 1 else max(5, 1280 // batch)
        timing[batch] = side_by_side(timed, pipe.data.input_shape, batch, args.rounds, runs)
        table = pipe.cost.table if batch == pipe.cost.batch_size else unit_table(run, pipe, batch)
        prediction[batch] = predict(table, policies, timing[batch])
    rl = next((b for k, b in found.items() if k.startswith("rl")), policies["W8A8 (ours)"])
    checked = {"RL policy": rl, "W8A8 (ours)": policies["W8A8 (ours)"]}
    checked |= {"FP32": policies["FP32"]} if args.runtime == "executorch" else {}
    roundtrip = {k: round_trip(pipe, b, args.runtime) for k, b in checked.items()}
    return {
        "machine": machine_record(pipe),
        "anchors": list(anchor),
        "precisions": precisions(models, pipe.runtime) if args.runtime == "openvino" else None,
        "model": pipe.spec.to_dict(),
        "budgets": {k: s.get("budget") for k, s in searches.items()},
        "data": args.data,
        "batch": args.batch,
        "searches": searches,
        "policies": {
            k: {"fp32_units": int((b[:, 1] == FP32_BITS).sum()), "bits": b.tolist()} for k, b in policies.items()
        },
        "test_top1": accuracy,
        "timing": timing,
        "prediction": prediction,
        "roundtrip": roundtrip,
        "wall_s": time.perf_counter() - start,
        "lut_s": lut.meta.get("build", {}).get("wall_s"),
    }


def precisions(models: dict[str, Model], runtime: Any) -> dict[str, Any]:
    """What OpenVINO's CPU plugin runs each OpenVINO model's compute layers in, and what the CPU offers (bf16 or
    not): {"capabilities": [...], model: {layer type: {precision: count}}}."""
    from hysquant_rl.deploy import openvino

    out: dict[str, Any] = {"capabilities": runtime.capabilities()}
    for name, (runtime, graph) in models.items():
        if runtime == "openvino" and not name.startswith("random"):
            out[name] = openvino.precisions(graph)
    return out


def unit_table(run: RunSettings, pipe: Pipeline, batch: int):
    from hysquant_rl.deploy.unit_latency import cached

    int8 = np.array([any(a == 8 for _, a in run.hardware.executable(unit.kind)) for unit in pipe.units])
    runtime = runtimes.get(run.hardware.runtime)
    return cached(pipe.layout, int8, batch, run.hardware.timing, run.cache_dir, runtime)


def predict(table, policies: dict[str, np.ndarray], timing: dict) -> dict[str, Any]:
    """The latency model's figure of each policy against its measurement: per policy, Spearman and MAPE over all."""
    rows = {k: (table.latency(b), timing[k]["latency_s"]) for k, b in policies.items()}
    modelled, measured = (np.array(v) for v in zip(*rows.values()))
    return {
        "rows": {k: {"modelled_s": m, "measured_s": t} for k, (m, t) in rows.items()},
        "spearman": float(spearmanr(modelled, measured).statistic),
        "mape": float(np.mean(np.abs(modelled / measured - 1))),
        "n": len(rows),
    }


def round_trip(pipe: Pipeline, bits: np.ndarray, runtime: str = "onnxruntime") -> dict[str, Any]:
    """The policy's file three ways on the test split: the runtime's integer kernels, Q/DQ as float ops (onnxruntime
    running every node as written: the file's fake-quant semantics), the reference evaluator; on ExecuTorch
    :func:`round_trip_pte`."""
    if runtime == "executorch":
        return round_trip_pte(pipe, bits)
    from onnx import version_converter
    from onnx.reference import ReferenceEvaluator

    proto = pipe.layout.graph(bits)
    x, y = pipe.data.test.x.numpy(), pipe.data.test.y.numpy()
    fused = ort.logits(runtimes.get(runtime).session(proto.SerializeToString(), threads()), x)
    plain_ = ort.logits(ort.session(proto.SerializeToString(), threads(), optimize=False), x)
    sample = x[:64]
    reference = ReferenceEvaluator(version_converter.convert_version(proto, 21)).run(None, {ort.INPUT: sample})[0]
    return {
        **agreement(fused, plain_, y),
        "reference_sample": len(sample),
        "reference_max_diff": float(np.abs(plain_[:64] - reference).max()),
        "reference_agreement": float(100 * (fused[:64].argmax(1) == reference.argmax(1)).mean()),
    }


def round_trip_pte(pipe: Pipeline, bits: np.ndarray) -> dict[str, Any]:
    """The policy's ``.pte`` on XNNPACK's integer kernels against its converted PT2E module in PyTorch (the runtime's
    reference numerics, what the search evaluates) on the whole test split."""
    from hysquant_rl.deploy.executorch import ModuleSession

    x, y = pipe.data.test.x.numpy(), pipe.data.test.y.numpy()
    program = pipe.runtime.session(pipe.layout.artefact(np.asarray(bits)), 1)
    fused = ort.logits(program, x, 64 * pipe.layout.batch_size)
    plain_ = ort.logits(ModuleSession(pipe.layout.converted(np.asarray(bits)), threads()), x)
    return agreement(fused, plain_, y)


# -- part 2 --------------------------------------------------------------------------------------------------------
def synthetic_folder(root: Path, classes: int = 2, per_class: int = 24, size: int = 256) -> Path:
    """An ImageFolder tree of random images (train/ and val/), so that the pipeline runs at ``size`` px."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def random_weights(path: Path, classes: int = 2) -> Path:
    """timm mobilevit_xxs with random (seeded) weights as a local checkpoint: the 256 px part times, not scores."""
    import timm
    import torch

    torch.manual_seed(0)
    torch.save(timm.create_model("mobilevit_xxs", num_classes=classes).state_dict(), path)
    return path


def part2(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """timm mobilevit_xxs at 256 px on the runtime: FP32, the anchors, our W8A8 and the fastest policy found."""
    root = synthetic_folder(work / "images")
    weights = random_weights(work / "mobilevit_xxs_random.pt")
    out = {}
    for batch in (1, 8):
        overrides = [
            "model=mobilevit_xxs",
            "model.pretrained=false",
            f"model.checkpoint={weights}",
            "model.num_classes=2",
            "data=imagenet",
            f"data.root={root}",
            "data.num_classes=2",
            "data.calib_size=16",
            "data.search_val_size=16",
            "data.test_size=16",
            "data.workers=0",
            "hardware=cpu",
            f"hardware.backend={args.runtime}",
            f"hardware.batch_size={batch}",
        ]
        run, _ = settings(overrides)
        pipe = build(run)
        n = len(pipe.units)
        from hysquant_rl.search.budget import cheapest

        fastest = cheapest(pipe.cost, pipe_mask(pipe), "latency_ms")
        policies = {"FP32": np.full((n, 2), FP32_BITS), "W8A8 (ours)": pipe.uniform((8, 8)), "fastest found": fastest}
        models: dict[str, Model] = {k: policy_model(pipe, b) for k, b in policies.items()}
        models.update(anchors(pipe))
        timing = side_by_side(models, pipe.data.input_shape, batch, args.rounds, 20 if batch == 1 else 5)
        out[batch] = {
            "timing": timing,
            "fastest_fp32_units": int((fastest[:, 1] == FP32_BITS).sum()),
            "units": n,
            "modelled_s": {k: pipe.cost.table.latency(b) for k, b in policies.items()},
        }
    return out


# -- part 3 --------------------------------------------------------------------------------------------------------
def part3(work: Path) -> str:
    base = ["data=fashion_mnist", "hardware=cpu", "hardware.backend=onnxruntime", "hardware.batch_size=64"]
    run, search = settings([*base, "budget=latency", "budget.latency_ratio=0.3", "search.method=ilp"])
    try:
        run_search(run, search, work / "refused")
    except HySquantError as e:
        return str(e)
    return "not refused"


# -- the report ----------------------------------------------------------------------------------------------------
def ms(x: float) -> str:
    return f"{1e3 * x:.3f}"


def markdown(r: dict[str, Any], command: str) -> str:
    p1 = r["part1"]
    m = p1["machine"]
    runtime = r.get("runtime", "onnxruntime")
    quantizer = {
        "onnxruntime": "onnxruntime's own quantizer",
        "openvino": "NNCF, OpenVINO's own quantizer",
        "executorch": "XNNPACKQuantizer, ExecuTorch's own quantizer",
    }[runtime]
    why = {
        "onnxruntime": "uniform W8A8's latency, and tighter",
        "openvino": "midway between FP32 and the fastest policy, and the fastest policy (x 1.005)",
        "executorch": "the lowest latency within max_drop points of FP32's search-val top-1",
    }[runtime]
    names = {"fashion_mnist": "Fashion-MNIST", "cifar10": "CIFAR-10", "imagenette": "Imagenette"}
    data = names[p1.get("data", "fashion_mnist")]
    px = p1["model"].get("img_size", "")
    anchor = [a for a in p1.get("anchors", ["quantize_static int8"]) if "FP32" not in a]
    lines = [
        f"# Deployment on this CPU ({runtime}): what the search returns, side by side with {quantizer}",
        "",
        f"Measured on {m.get('describe', m['cpu'])}, {m['runtime']}, 1 thread, interleaved"
        f" rounds, medians; `.venv/bin/python {command}` ({r['wall_s'] / 60:.1f} min).",
        "",
        f"## Embedded {data} model ({px} px), searches at batch {p1.get('batch', 64)}",
        "",
        f"Budgets: {json.dumps(p1.get('budgets', p1.get('ratios')))}: {why}.",
        "",
    ]
    batches = sorted(p1["timing"], key=int)
    fp32 = {b: p1["timing"][b]["FP32"]["latency_s"] for b in batches}
    ref = {b: {a: p1["timing"][b][a]["latency_s"] for a in anchor} for b in batches}
    head = " | ".join(
        f"batch {b}: ms (CV of rounds) | x FP32 | " + " | ".join(f"x {a}" for a in anchor) for b in batches
    )
    lines += [
        f"| policy | FP32 units | test top-1 | {head} |",
        "|---|---|---|" + ("---|" * (2 + len(anchor))) * len(batches),
    ]
    for name in p1["timing"][batches[0]]:
        if name.startswith("random"):
            continue
        units = p1["policies"].get(name, {}).get("fp32_units", "-")
        cells = []
        for b in batches:
            t, rounds = p1["timing"][b][name]["latency_s"], p1["timing"][b][name]["rounds"]
            spread = statistics.stdev(rounds) / statistics.fmean(rounds)
            versus = " | ".join(f"{ref[b][a] / t:.3f}" for a in anchor)
            cells.append(f"{ms(t)} ({spread:.2f}) | {fp32[b] / t:.3f} | {versus}")
        lines.append(f"| {name} | {units} | {p1['test_top1'][name]:.2f} | {' | '.join(cells)} |")
    if p1.get("precisions"):
        pr = p1["precisions"]
        lines += ["", f"CPU capabilities OpenVINO reports: {', '.join(pr['capabilities'])}. Runtime precisions of the"]
        lines += ["compiled models' compute layers (layer type: {precision: count}):", ""]
        lines += ["| model | precisions |", "|---|---|"]
        lines += [f"| {k} | {json.dumps(v)} |" for k, v in pr.items() if k != "capabilities"]
    lines += ["", "The searches (the speed-up is the feedback loop's own timing of the found policy against FP32):", ""]
    lines += ["| search | budget | episodes | wall (s) | rounds | measured speed-up |"]
    lines += ["|---|---|---|---|---|---|"]
    for name, s in p1["searches"].items():
        budget = s.get("budget", s.get("ratio"))
        if "error" in s:
            lines.append(f"| {name} | {budget} | - | - | - | {s['error']} |")
            continue
        speedup = "-" if s["measured_speedup"] is None else f"{s['measured_speedup']:.3f}"
        speedup += f" (unchecked: {s['unchecked']})" if s.get("unchecked") else ""
        lines.append(f"| {name} | {budget} | {s['episodes']} | {s['wall_s']:.0f} | {s['rounds']} | {speedup} |")
    lines.append("")
    lines += ["Latency model (per-unit latency measured on this runtime, plus int8/float boundaries) against measured:"]
    lines += ["", "| batch | policies | Spearman | MAPE |", "|---|---|---|---|"]
    for b in batches:
        pr = p1["prediction"][b]
        lines.append(f"| {b} | {pr['n']} | {pr['spearman']:.3f} | {100 * pr['mape']:.1f} % |")
    if runtime == "executorch":
        lines += ["", "Round trip on the test split: each `.pte` on XNNPACK's integer kernels against its converted"]
        lines += ["PT2E module in PyTorch (the reference numerics the search evaluates):", ""]
        head = ["program", "images", "XNNPACK top-1", "PT2E reference top-1"]
        extra = {"mean logit difference": lambda rt: f"{rt['mean_logit_diff']:.3g}"}
    else:
        lines += ["", f"Round trip on the test split: each file's integer kernels on {runtime} against the same graph"]
        lines += [
            "with its Q/DQ run as float ops (onnxruntime without graph optimisation), and onnx's reference evaluator on"
            " the first images:",
            "",
        ]
        head = ["file", "images", "integer top-1", "float-ops top-1"]
        extra = {
            "reference: largest difference to float ops": lambda rt: (
                f"{rt['reference_max_diff']:.3g} ({rt['reference_sample']} images)"
            ),
            "reference: agreement with integer": lambda rt: f"{rt['reference_agreement']:.1f} %",
        }
    head += ["argmax agreement", "largest logit difference", *extra]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, rt in p1["roundtrip"].items():
        cells = [name, str(rt["images"]), f"{rt['integer_top1']:.2f}", f"{rt['float_ops_top1']:.2f}"]
        cells += [f"{rt['argmax_agreement']:.2f} %", f"{rt['max_logit_diff']:.3g}", *(f(rt) for f in extra.values())]
        lines.append("| " + " | ".join(cells) + " |")
    if "part2" in r:
        lines += ["", "## timm mobilevit_xxs at 256 px (random weights, latency only)", ""]
        lines += ["| batch | policy | measured (ms) | x FP32 | modelled (ms) |", "|---|---|---|---|---|"]
        for b, part in r["part2"].items():
            f32 = part["timing"]["FP32"]["latency_s"]
            for name, t in part["timing"].items():
                model = part["modelled_s"].get(name)
                lines.append(
                    f"| {b} | {name} | {ms(t['latency_s'])} | {f32 / t['latency_s']:.3f} |"
                    f" {'-' if model is None else ms(model)} |"
                )
            lines.append(
                f"| {b} | (fastest found keeps {part['fastest_fp32_units']} of {part['units']} units FP32) | | | |"
            )
    if "part3" in r:
        lines += ["", f"A latency budget of 0.3x FP32 at batch 64: `{r['part3']}`"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer episodes, batch 64 only, no 256 px part")
    parser.add_argument("--tighter", type=float, default=0.95, help="the second budget, x the first (uniform W8A8's)")
    parser.add_argument("--episodes", type=int, default=None, help="episodes of local and rl (default 60, quick 12)")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved timing rounds")
    parser.add_argument("--runtime", choices=known_runtimes(), default="onnxruntime")
    parser.add_argument("--data", choices=("fashion_mnist", "cifar10", "imagenette"), default="fashion_mnist")
    parser.add_argument("--data-root", type=Path, default=None, help="the archive of --data (default: shared data)")
    parser.add_argument("--batch", type=int, default=64, help="the searches' batch, timed beside batch 1")
    parser.add_argument("--max-drop", type=float, default=0.5, help="ExecuTorch's budget: points below FP32")
    parser.add_argument("--out", type=Path, default=None, help="default benchmarks/results/deployment[-<runtime>].md")
    args = parser.parse_args()
    name = "deployment.md" if args.runtime == "onnxruntime" else f"deployment-{args.runtime}.md"
    args.out = args.out or RESULTS / name
    args.episodes = args.episodes or (12 if args.quick else 60)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    for name in ("deployment", "hysquant_rl"):  # every stage says what it does and how long it took
        logging.getLogger(name).setLevel(logging.INFO)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        result: dict[str, Any] = {"runtime": args.runtime, "part1": part1(args, work)}
        save_json(result, args.out.with_suffix(".json"))  # what is measured so far survives a failure below
        if not args.quick:
            result["part2"] = part2(args, work)
            save_json(result, args.out.with_suffix(".json"))
        if args.runtime == "onnxruntime":
            result["part3"] = part3(work)
    result["wall_s"] = time.perf_counter() - start
    flags = [
        *(["--quick"] if args.quick else []),
        *(["--runtime", args.runtime] if args.runtime != "onnxruntime" else []),
        *(["--data", args.data] if args.data != "fashion_mnist" else []),
        *(["--batch", str(args.batch)] if args.batch != 64 else []),
        *(["--episodes", str(args.episodes)] if args.episodes not in (12, 60) else []),
    ]
    command = " ".join(["benchmarks/deployment.py", *flags])
    write_report(result, args.out, markdown(result, command))


if __name__ == "__main__":
    main()
