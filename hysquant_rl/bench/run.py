"""Running the plan (:class:`~hysquant_rl.bench.plan.Plan`) and collecting its rows.

The FP32 pipeline is built once (model, splits, calibration, FP32 logits). Per regime (a batch size): the same
pipeline priced at that batch size, its LUT (cached per batch size) and the uniform reference points; per budget of
the regime (a fraction of the way from the cheapest allowed policy to uniform W8A8), every method with each of its
seeds: a search (:func:`hysquant_rl.search.loop.search`) on search-val, its policy evaluated once on the test
split. ``bench.json`` is rewritten after every search, so an interrupted bench keeps what it measured. Then the
evaluation throughput, and each seed of the goal's method paired with the reference's policy, image by image.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from hysquant_rl.bench.budgets import BUDGET_KEYS, CLEAR_BUDGETS, budget_label, budget_limit
from hysquant_rl.bench.plan import Plan, Throughput
from hysquant_rl.bench.stats import Paired, learning, mcnemar, se_paired, se_top1
from hysquant_rl.bits import FP32_BITS, mean_bits, parse_uniform
from hysquant_rl.budget_kinds import BY_KEY
from hysquant_rl.errors import HySquantError, NoPolicyError
from hysquant_rl.hardware import CostModel
from hysquant_rl.io import save_json
from hysquant_rl.lut.build import build_lut
from hysquant_rl.lut.table import LUT, read_document
from hysquant_rl.pipeline import Pipeline, build
from hysquant_rl.search.budget import span, within
from hysquant_rl.search.loop import MethodFactory, SearchResult, search
from hysquant_rl.search.problem import policy_key
from hysquant_rl.settings import RunSettings, SearchSettings

log = logging.getLogger(__name__)
Configure = Callable[[list[str]], Mapping[str, Any]]  # Hydra-style key=value overrides -> the bench config, plain
Policies = dict[tuple[int, str, str, int], np.ndarray]  # (regime, budget, method, seed) -> the found bits (L, 2)


def prepare(configure: Configure) -> tuple[RunSettings, Pipeline, Hits]:
    """The bench config's run settings, its FP32 pipeline (model, splits, calibration, FP32 logits; built once for
    both parts of the bench) and the per-image hits of the policies evaluated on it."""
    run = RunSettings.from_mapping(configure([]))
    base = build(run)
    return run, base, Hits(base)


def run_plan(
    plan: Plan,
    configure: Configure,
    make_method: MethodFactory,
    out: Path,
    base: Pipeline,
    hits: Hits,
    result: dict[str, Any],
) -> tuple[Paired, Paired]:
    """Every planned search into ``out/runs/``, each run's row appended to ``result`` (``bench.json``'s record, see
    :func:`header`: rewritten after every search) with the uniform reference points and LUT build times. Returns,
    per (regime, budget), the goal's method against the reference seed by seed: McNemar tests on test and paired
    standard errors on search-val. ``configure``: the bench config with overrides, as plain containers (each run's
    settings are the bench config with its regime, budget, seed and method overrides); ``make_method``: the search
    methods; ``base`` and ``hits``: :func:`prepare`'s."""
    runner = Runner(plan, configure, make_method, out, base, hits, result)
    for batch, budgets in plan.regimes:
        runner.regime(batch, budgets)
    return runner.pairs()


def regime_pipe(
    base: Pipeline, configure: Configure, batch: int, result: dict[str, Any]
) -> tuple[RunSettings, Pipeline, LUT]:
    """The regime of batch size ``batch``: its settings, ``base`` (the same model, calibration and FP32 logits) priced
    at that batch size, and its LUT (cached per batch size; its build time recorded in ``result``'s speed)."""
    settings = RunSettings.from_mapping(configure([f"hardware.batch_size={batch}"]))
    pipe = replace(base, cost=CostModel(base.units, base.matmuls, settings.hardware, other=base.cost.other))
    lut = build_lut(settings, pipe)  # its rows carry this regime's costs: one cached table per batch size
    result["speed"]["lut_build_s"][str(batch)] = lut_build_seconds(lut)
    return settings, pipe, lut


class Hits:
    """Metrics and per-image top-1 hits (N,) bool of policies on the test and search-val splits of ``pipe``,
    each policy evaluated once per split."""

    def __init__(self, pipe: Pipeline) -> None:
        self.pipe = pipe
        self.labels = {s: pipe.evaluator.fp32(s)[1].numpy() for s in ("test", "search_val")}  # (N,) per split
        self.evaluated: dict[tuple[bytes, str], tuple[dict[str, float], np.ndarray]] = {}

    def __call__(self, bits: np.ndarray, split: str) -> tuple[dict[str, float], np.ndarray]:
        """(metrics, hits (N,)) of the policy ``bits`` (L, 2) on ``split``."""
        key = (policy_key(bits), split)
        if key not in self.evaluated:
            policy = [tuple(x) for x in np.asarray(bits).tolist()]
            m, pred = self.pipe.evaluator.evaluate_with_predictions(policy, split)
            self.evaluated[key] = (m.to_dict(), pred.numpy() == self.labels[split])
        return self.evaluated[key]


def header(plan: Plan, run: RunSettings, base: Pipeline, hits: Hits) -> dict[str, Any]:
    """``bench.json`` before any search: the model, data, device, plan and quantizer; FP32's top-1 [%] on test and
    search-val, and the standard error of one policy's search-val top-1 [points]; empty runs."""
    n = len(base.units)
    fp32 = np.full((n, 2), FP32_BITS)
    val_size, val_top1 = len(hits.labels["search_val"]), hits(fp32, "search_val")[0]["top1"]
    return {
        "model": base.spec.to_dict(),
        "data": base.data.name,
        "device": base.cost.device,
        **plan.record,
        "quant": {"scope": run.quant.scope, "calibrator": run.quant.calibrator, "softmax": run.quant.softmax},
        "units": n,
        "fp32": {"test_top1": hits(fp32, "test")[0]["top1"], "search_val_top1": val_top1},
        "search_val": {"size": val_size, "fp32_top1": val_top1, "se_top1": se_top1(val_top1, val_size)},
        "runs": [],
        "uniform": [],
        "speed": {"lut_build_s": {}},
    }


@dataclass
class Runner:
    """What the planned searches share: the FP32 pipeline ``base``, the policies' ``hits``, ``bench.json``'s record
    ``result`` (rewritten after every search), each found policy, and the count of searches started."""

    plan: Plan
    configure: Configure
    make_method: MethodFactory
    out: Path
    base: Pipeline
    hits: Hits
    result: dict[str, Any]
    policies: Policies = field(default_factory=dict)
    done: int = 0

    def regime(self, batch: int, budgets: list[tuple[str, float]]) -> None:
        """One regime: ``base`` priced at batch size ``batch``, its LUT and uniform reference points, then every
        method with each of its seeds under each of ``budgets`` ((kind, fraction) pairs)."""
        _, pipe, lut = regime_pipe(self.base, self.configure, batch, self.result)
        base = self.base
        low, w8a8 = span(pipe.cost, lut.mask())
        for spec in self.plan.references:  # the uniform reference points of the plot
            bits = [parse_uniform(spec)] * len(base.units)
            top1 = self.hits(np.array(bits), "test")[0]["top1"]
            self.result["uniform"].append(
                {"regime": batch, "policy": spec, "test_top1": top1, **pipe.cost.policy_cost(bits).totals()}
            )
        for kind, f in budgets:
            key = BUDGET_KEYS[kind]
            limit = budget_limit(low, w8a8, key, f)
            row = {
                "regime": batch,
                "budget": budget_label(kind, f),
                "limit": limit,
                "unit": BY_KEY[key].unit,
                "limit_ratio_of_w8a8": limit / w8a8[key],
            }
            for name in self.plan.methods:
                for seed in self.plan.seeds[name]:
                    self.search_once(pipe, lut, key, {**row, "method": name, "seed": seed})

    def search_once(self, pipe: Pipeline, lut: LUT, key: str, row: dict[str, Any]) -> None:
        """One search: ``row``'s method and seed under its budget (``key`` <= ``row["limit"]``), into its run
        directory; its record is appended to ``bench.json``."""
        batch, budget, name, seed, limit = (row[k] for k in ("regime", "budget", "method", "seed", "limit"))
        overrides = [f"budget.{key}={limit!r}", f"search.seed={seed}", f"search.episodes={self.plan.episodes}"]
        settings = SearchSettings.from_mapping(
            self.configure([f"hardware.batch_size={batch}", *CLEAR_BUDGETS, *overrides, *self.plan.methods[name]])
        )
        run_out = self.out / "runs" / f"batch{batch}" / budget.replace(" ", "_") / name / f"seed{seed}"
        self.done += 1
        log.info(
            "run %d/%d: batch %d, %s budget (%.4g %s), %s, seed %d",
            self.done,
            self.plan.searches,
            batch,
            budget,
            limit,
            BY_KEY[key].unit,
            name,
            seed,
        )
        try:
            found = search(settings, pipe, lut, run_out, self.make_method, log_lut=False)
        except NoPolicyError as e:  # e.g. no uniform pair fits: a result, not a failure
            log.warning("%s", e)
            record = {**row, "found": False}
        else:
            self.policies[(batch, budget, name, seed)] = found.bits
            record = {**row, **found_record(found, self.hits, key, limit)}
            if settings.method == "rl":  # the agent: does it explore and learn?
                record["learning"] = learning(found.recorder.history, settings.agent.warmup_episodes)
        self.result["runs"].append(record)
        save_json(self.result, self.out / "bench.json")

    def pairs(self) -> tuple[Paired, Paired]:
        """Each seed of the goal's method against the reference's policy (of the same seed when it has one), per
        (regime, budget): McNemar on test (:func:`~hysquant_rl.bench.stats.mcnemar`), and the paired standard
        error on search-val (:func:`~hysquant_rl.bench.stats.se_paired`)."""
        g, first = self.plan.goal, self.plan.seeds[self.plan.goal.reference][0]
        paired: Paired = {}
        noise: Paired = {}
        for (batch, budget, name, seed), bits in self.policies.items():
            ref = self.policies.get(
                (batch, budget, g.reference, seed), self.policies.get((batch, budget, g.reference, first))
            )
            if name != g.method or ref is None:
                continue
            test = mcnemar(self.hits(bits, "test")[1], self.hits(ref, "test")[1])
            val = se_paired(self.hits(bits, "search_val")[1], self.hits(ref, "search_val")[1])
            paired.setdefault((batch, budget), []).append({"seed": seed, **test})
            noise.setdefault((batch, budget), []).append({"seed": seed, **val})
        return paired, noise


def found_record(found: SearchResult, hits: Hits, key: str, limit: float) -> dict[str, Any]:
    """A found policy's row: test top-1 [%] (evaluated here, once), search-val top-1 [%] and KL, modelled latency
    [ms] and energy [mJ] and whether it is within ``key`` <= ``limit``, PTQ evaluations, episodes, wall and
    evaluation time [s], mean weight and activation bits."""
    p = found.problem
    val = p.metrics(found.bits)
    totals = p.totals(found.bits)
    return {
        "found": True,
        "test_top1": hits(found.bits, "test")[0]["top1"],
        "search_val_top1": val["top1"],
        "search_val_kl": val["kl"],
        "latency_ms": totals["latency_ms"],
        "energy_mj": totals["energy_mj"],
        "within_budget": within(totals, {key: limit})[key],
        "evaluations": len(p.cache),
        "episodes": len(found.recorder.history),
        "wall_s": found.wall_s,
        "eval_s": p.eval_time_s,
        **mean_bits(found.bits, p.weighted),  # over the integer operands, as summary.json and TensorBoard
    }


def lut_build_seconds(lut: LUT) -> float | None:
    """Seconds the LUT took to build: this run's, or on a cache hit the time recorded in the cache file."""
    build_meta = lut.meta.get("build", {})
    if build_meta.get("evaluated"):
        return float(build_meta["wall_s"])
    try:
        doc = read_document(Path(lut.meta["cache"]["path"]))
        return float(doc["build"]["wall_s"]) if doc["build"].get("evaluated") else None
    except (HySquantError, KeyError, TypeError, ValueError):
        return None


def measure_throughput(pipe: Pipeline, t: Throughput) -> dict[str, Any]:
    """Evaluation throughput [images/s] on ``t.split``: FP32 and the uniform ``t.policy``, and their ratio."""
    n = len(pipe.units)
    fp32 = [(FP32_BITS, FP32_BITS)] * n
    quant = [parse_uniform(t.policy)] * n
    pipe.evaluator.evaluate(quant, t.split)  # warm the caches, as a search would have
    fp = throughput(pipe, fp32, t.split, t.repeats)
    q = throughput(pipe, quant, t.split, t.repeats)
    return {
        "split": t.split,
        "fp32_images_per_s": fp,
        "quantized_images_per_s": q,
        "quantized_policy": t.policy,
        "throughput_ratio": q / fp,
    }


def throughput(pipe: Pipeline, bits: list[tuple[int, int]], split: str, repeats: int) -> float:
    """Best-of-``repeats`` images/s of a full evaluation (forward passes and metrics) of ``bits``."""
    n = len(pipe.data.split(split))
    best = float("inf")
    for _ in range(repeats):
        pipe.qmodel.apply_bits(bits)
        start = time.perf_counter()
        pipe.evaluator.logits(pipe.data.split(split))
        best = min(best, time.perf_counter() - start)
    return n / best
