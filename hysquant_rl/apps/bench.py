"""``hysquant-bench``: is the RL search worth it, and how fast is it?

Every search method (``bench.methods``: uniform, greedy, the ILP over the LUT's KL and top-1-drop columns,
``ilp-refine`` and ``local`` (:mod:`hysquant_rl.search.baselines`), random, the warm-started agent and the plain
one) runs under the same budgets. The plan (``bench.plans.<full|quick>``) lists regimes, each a batch size of the
hardware profile with its own budgets (``{batch: 64, budgets: {latency: [0.2], energy: [0.2]}}``): fractions of
the way from the cheapest allowed policy to uniform W8A8, of the costs that move with bits in that regime (batch 1
is launch-bound on the rtx3080 profile: its latency hardly moves, its energy does), tight enough that ILP-KL leaves
room below FP32 (loose budgets are met by any method and prove nothing). A method runs with the first
``bench.seeds_per_method[method]`` of the plan's seeds; a method not listed there is deterministic and runs once,
with the first seed. Each found policy is evaluated once on the test split; the search only ever saw search-val
(``data.search_val_size`` images: the bench sets its own).

Beside the table (:mod:`hysquant_rl.bench`): the room each budget leaves (FP32 test top-1 minus ILP-KL's), the
noise of search-val (the standard error of one policy's top-1 and of the paired rl - ILP-KL difference), the
agent's learning diagnostics (new policies after its warm-up, whether its best reward improves once it updates),
the goal (``bench.goal``) and a verdict, met or NOT met, on the goal and on ``bench.targets``.

Writes ``bench.json`` (every run's record, the aggregated table, room, noise, goal, verdict, speed figures;
rewritten atomically after every run so an interrupted benchmark keeps what it measured), ``bench.md`` and
``pareto.png``, plus each run's TensorBoard and best_policy.json under ``runs/``. Each run is a search whose
settings are the bench config with the method's overrides, resolved like ``hysquant-search``'s.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from hysquant_rl.apps import app, plain, run_dir
from hysquant_rl.apps.search import check_method, make_method
from hysquant_rl.bench import (
    BUDGET_KEYS,
    Goal,
    Targets,
    aggregate,
    budget_label,
    episode_speed,
    goal,
    learning,
    lut_build_seconds,
    markdown,
    mcnemar,
    pareto_plot,
    regime_budgets,
    room,
    se_paired,
    se_top1,
    throughput,
    verdict,
)
from hysquant_rl.bits import FP32_BITS, parse_uniform
from hysquant_rl.errors import HySquantError, NoPolicyError
from hysquant_rl.hardware import CostModel
from hysquant_rl.io import atomic_write, save_json
from hysquant_rl.search.budget import UNITS, span, within
from hysquant_rl.search.problem import policy_key
from hysquant_rl.settings import RunSettings, SearchSettings

log = logging.getLogger(__name__)


def with_overrides(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """A copy of ``cfg`` with Hydra-style ``key=value`` overrides applied."""
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))


def method_seeds(b: DictConfig, plan: DictConfig, methods: dict[str, list[str]]) -> dict[str, list[int]]:
    """The seeds each method runs with: the first ``bench.seeds_per_method[method]`` of the plan's, or the first
    one for a method not listed there (deterministic)."""
    seeds = [int(s) for s in plan.seeds]
    per_method = {str(k): v for k, v in b.seeds_per_method.items()}
    bad = {k: v for k, v in per_method.items() if isinstance(v, bool) or not isinstance(v, int) or v < 1}
    if not seeds or bad:
        raise HySquantError(
            f"bench: give the plan at least one seed and each method of bench.seeds_per_method a count >= 1 (given:"
            f" seeds {seeds}, {bad or 'counts ok'})"
        )
    return {m: seeds[: per_method.get(m, 1)] for m in methods}


def run_bench(cfg: DictConfig, out: Path) -> dict[str, Any]:
    from hysquant_rl.lut.build import build_lut
    from hysquant_rl.pipeline import build
    from hysquant_rl.search.loop import search

    b = cfg.bench
    plan = b.plans.quick if b.quick else b.plans.full
    regimes = regime_budgets(plan)
    methods = {str(k): list(v) for k, v in b.methods.items()}
    g, targets = Goal.from_mapping(b.goal), Targets.from_mapping(b.targets)
    unknown = [m for m in [*b.seeds_per_method, g.method, g.reference] if m not in methods]
    if unknown:
        raise HySquantError(
            f"bench names unknown methods {unknown}: use names from bench.methods ({', '.join(methods)})"
        )
    seeds = method_seeds(b, plan, methods)
    for overrides in methods.values():  # every run's settings are checked before any work
        check_method(SearchSettings.from_mapping(plain(with_overrides(cfg, overrides))))
    start = time.perf_counter()
    run = RunSettings.from_mapping(plain(cfg))
    base = build(run)
    n = len(base.layers)
    labels = {s: base.evaluator.fp32(s)[1].numpy() for s in ("test", "search_val")}
    evaluated: dict[tuple[bytes, str], tuple[dict[str, float], np.ndarray]] = {}
    policies: dict[tuple[int, str, str, int], np.ndarray] = {}  # each run's policy

    def hits(bits: np.ndarray, split: str) -> tuple[dict[str, float], np.ndarray]:
        """Metrics and per-image top-1 hits (N,) of a policy on ``split``, evaluated once per policy."""
        key = (policy_key(bits), split)
        if key not in evaluated:
            m, pred = base.evaluator.evaluate_with_predictions([tuple(x) for x in np.asarray(bits).tolist()], split)
            evaluated[key] = (m.to_dict(), pred.numpy() == labels[split])
        return evaluated[key]

    fp32_bits = np.full((n, 2), FP32_BITS)
    val_size, val_top1 = len(labels["search_val"]), hits(fp32_bits, "search_val")[0]["top1"]
    result: dict[str, Any] = {
        "model": base.spec.to_dict(),
        "data": base.data.name,
        "device": base.cost.device,
        "quick": bool(b.quick),
        "plan": OmegaConf.to_container(plan, resolve=True),
        "methods": methods,
        "seeds": seeds,
        "goal_config": OmegaConf.to_container(b.goal, resolve=True),
        "targets": OmegaConf.to_container(b.targets, resolve=True),
        "quant": {"scope": run.quant.scope, "calibrator": run.quant.calibrator, "softmax": run.quant.softmax},
        "units": n,
        "fp32": {"test_top1": hits(fp32_bits, "test")[0]["top1"], "search_val_top1": val_top1},
        "search_val": {"size": val_size, "fp32_top1": val_top1, "se_top1": se_top1(val_top1, val_size)},
        "runs": [],
        "uniform": [],
        "speed": {"lut_build_s": {}},
    }
    total = sum(len(s) for s in seeds.values()) * sum(len(budgets) for _, budgets in regimes)
    done = 0
    clear = [f"budget.{k}=null" for k in UNITS] + [f"budget.{k.split('_')[0]}_ratio=null" for k in UNITS]
    for batch, budgets in regimes:
        rcfg = with_overrides(cfg, [f"hardware.batch_size={batch}"])
        regime = RunSettings.from_mapping(plain(rcfg))
        # the same model, calibration and FP32 logits, priced at this batch size
        pipe = replace(base, cost=CostModel(base.layers, base.matmuls, regime.hardware, other=base.cost.other))
        lut = build_lut(regime, pipe)  # its rows carry this regime's costs: one cached table per batch size
        result["speed"]["lut_build_s"][str(batch)] = lut_build_seconds(lut)
        low, w8a8 = span(pipe.cost, lut.mask())
        for spec in plan.references:  # the uniform reference points of the plot
            bits = [parse_uniform(str(spec))] * n
            result["uniform"].append(
                {
                    "regime": batch,
                    "policy": str(spec),
                    "test_top1": hits(np.array(bits), "test")[0]["top1"],
                    **pipe.cost.policy_cost(bits).totals(),
                }
            )
        for kind, f in budgets:
            key = BUDGET_KEYS[kind]
            limit = low[key] + f * (w8a8[key] - low[key])
            budget = budget_label(kind, f)
            for name, overrides in methods.items():
                for seed in seeds[name]:
                    run_cfg = with_overrides(
                        rcfg,
                        [
                            *clear,
                            f"budget.{key}={limit!r}",
                            f"search.seed={seed}",
                            f"search.episodes={int(plan.episodes)}",
                            *overrides,
                        ],
                    )
                    settings = SearchSettings.from_mapping(plain(run_cfg))
                    run_out = out / "runs" / f"batch{batch}" / budget.replace(" ", "_") / name / f"seed{seed}"
                    done += 1
                    log.info(
                        "run %d/%d: batch %d, %s budget (%.4g %s), %s, seed %d",
                        done,
                        total,
                        batch,
                        budget,
                        limit,
                        UNITS[key],
                        name,
                        seed,
                    )
                    row = {
                        "regime": batch,
                        "budget": budget,
                        "limit": limit,
                        "unit": UNITS[key],
                        "limit_ratio_of_w8a8": limit / w8a8[key],
                        "method": name,
                        "seed": seed,
                    }
                    try:
                        found = search(settings, pipe, lut, run_out, make_method, log_lut=False)
                    except NoPolicyError as e:  # e.g. no uniform pair fits: a result, not a failure
                        log.warning("%s", e)
                        result["runs"].append({**row, "found": False})
                        save_json(result, out / "bench.json")
                        continue
                    p = found.problem
                    val = p.metrics(found.bits)
                    totals = p.totals(found.bits)
                    policies[(batch, budget, name, seed)] = found.bits
                    record = {
                        **row,
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
                        "mean_w_bits": float(found.bits[p.weighted, 0].mean()),
                        "mean_a_bits": float(found.bits[:, 1].mean()),
                    }
                    if settings.method == "rl":  # the agent: does it explore and learn?
                        record["learning"] = learning(found.recorder.history, settings.agent.warmup_episodes)
                    result["runs"].append(record)
                    save_json(result, out / "bench.json")
    fp32 = [(FP32_BITS, FP32_BITS)] * n
    quant = [parse_uniform(str(b.throughput.policy))] * n
    base.evaluator.evaluate(quant, str(b.throughput.split))  # warm the caches, as a search would have
    fp = throughput(base, fp32, str(b.throughput.split), int(b.throughput.repeats))
    q = throughput(base, quant, str(b.throughput.split), int(b.throughput.repeats))
    result["speed"].update(
        {
            "split": str(b.throughput.split),
            "fp32_images_per_s": fp,
            "quantized_images_per_s": q,
            "quantized_policy": str(b.throughput.policy),
            "throughput_ratio": q / fp,
        }
    )
    runs = pd.DataFrame(result["runs"])
    result["table"] = aggregate(runs)
    result["speed"]["episodes"] = episode_speed(runs)
    # each seed of the goal's method against the reference's policy (of the same seed when it has one): McNemar on
    # test, the paired standard error on search-val
    paired: dict[tuple[int, str], list[dict[str, Any]]] = {}
    noise: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for (batch, budget, name, seed), bits in policies.items():
        ref = policies.get(
            (batch, budget, g.reference, seed), policies.get((batch, budget, g.reference, seeds[g.reference][0]))
        )
        if name != g.method or ref is None:
            continue
        paired.setdefault((batch, budget), []).append(
            {"seed": seed, **mcnemar(hits(bits, "test")[1], hits(ref, "test")[1])}
        )
        noise.setdefault((batch, budget), []).append(
            {"seed": seed, **se_paired(hits(bits, "search_val")[1], hits(ref, "search_val")[1])}
        )
    result["search_val"]["paired"] = [
        {"regime": batch, "budget": budget, "seeds": tests, "se_mean": float(np.mean([t["se"] for t in tests]))}
        for (batch, budget), tests in noise.items()
    ]
    result["room"] = room(result["table"], result["fp32"]["test_top1"], g.reference, targets.min_room)
    result["goal"] = goal(result["table"], g, paired)
    result["wall_s"] = time.perf_counter() - start
    result["verdict"] = verdict(result, g, targets)
    save_json(result, out / "bench.json")
    text = markdown(result)
    atomic_write(out / "bench.md", lambda fh: fh.write(text.encode()))
    pareto_plot(result, out / "pareto.png")
    print(text)
    return result


main = app("bench")(lambda cfg: run_bench(cfg, run_dir()))
