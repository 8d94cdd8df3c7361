"""``hysquant-bench``: is the RL search worth it, and how fast is it?

Every search method (``bench.methods``: uniform, greedy, the ILP over the LUT's KL and top-1-drop columns,
random, the warm-started agent and the plain one) runs under the same budgets in each hardware regime
(``bench.plans.<full|quick>.regimes``: batch sizes of the hardware profile). Latency budgets sit at fractions
of the way from the cheapest allowed policy to uniform W8A8 (loose budgets are met by any method and prove
nothing), plus energy budgets placed the same way. Stochastic methods run once per seed. Each found policy is
evaluated once on the test split; the search only ever saw search-val.

Writes ``bench.json`` (every run, the aggregated table, the goal check, speed figures; rewritten atomically
after every run so an interrupted benchmark keeps what it measured), ``bench.md`` and ``pareto.png``, plus
each run's TensorBoard and best_policy.json under ``runs/``. Each run is a search whose settings are the bench
config with the method's overrides, resolved like ``hysquant-search``'s.
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
    Goal,
    aggregate,
    episode_speed,
    goal,
    lut_build_seconds,
    markdown,
    mcnemar,
    pareto_plot,
    throughput,
)
from hysquant_rl.bits import FP32_BITS, parse_uniform
from hysquant_rl.errors import HySquantError, NoPolicyError
from hysquant_rl.hardware import CostModel
from hysquant_rl.io import atomic_write, save_json
from hysquant_rl.search.budget import UNITS, span, within
from hysquant_rl.search.problem import policy_key
from hysquant_rl.settings import RunSettings, SearchSettings

log = logging.getLogger(__name__)
BUDGET_KEYS = {"latency": "latency_ms", "energy": "energy_mj"}


def with_overrides(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """A copy of ``cfg`` with Hydra-style ``key=value`` overrides applied."""
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))


def run_bench(cfg: DictConfig, out: Path) -> dict[str, Any]:
    from hysquant_rl.lut.build import build_lut
    from hysquant_rl.pipeline import build
    from hysquant_rl.search.loop import search

    b = cfg.bench
    plan = b.plans.quick if b.quick else b.plans.full
    methods = {str(k): list(v) for k, v in b.methods.items()}
    unknown = [m for m in [*b.stochastic, b.goal.method, b.goal.reference, *b.goal.baselines] if m not in methods]
    if unknown:
        raise HySquantError(
            f"bench names unknown methods {unknown}: use names from bench.methods ({', '.join(methods)})"
        )
    for overrides in methods.values():  # every run's settings are checked before any work
        check_method(SearchSettings.from_mapping(plain(with_overrides(cfg, overrides))))
    start = time.perf_counter()
    run = RunSettings.from_mapping(plain(cfg))
    base = build(run)
    n = len(base.layers)
    test_cache: dict[bytes, tuple[dict[str, float], np.ndarray]] = {}
    labels = base.evaluator.fp32("test")[1].numpy()
    correct: dict[tuple[int, str, str, int], np.ndarray] = {}  # per-image top-1 hits of each run's policy

    def test_metrics(bits: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
        """Test metrics and per-image top-1 hits (N,) of a policy, evaluated once per policy."""
        key = policy_key(bits)
        if key not in test_cache:
            m, pred = base.evaluator.evaluate_with_predictions([tuple(x) for x in np.asarray(bits).tolist()], "test")
            test_cache[key] = (m.to_dict(), pred.numpy() == labels)
        return test_cache[key]

    result: dict[str, Any] = {
        "model": base.spec.to_dict(),
        "data": base.data.name,
        "device": base.cost.device,
        "quick": bool(b.quick),
        "plan": OmegaConf.to_container(plan, resolve=True),
        "methods": methods,
        "goal_config": OmegaConf.to_container(b.goal, resolve=True),
        "quant": {"scope": run.quant.scope, "calibrator": run.quant.calibrator, "softmax": run.quant.softmax},
        "units": n,
        "fp32": {"test_top1": test_metrics(np.full((n, 2), FP32_BITS))[0]["top1"]},
        "runs": [],
        "uniform": [],
        "speed": {"lut_build_s": {}},
    }
    budgets = [("latency", float(f)) for f in plan.latency_fractions] + [
        ("energy", float(f)) for f in plan.energy_fractions
    ]
    total = sum(len(plan.seeds) if m in b.stochastic else 1 for m in methods) * len(budgets) * len(plan.regimes)
    done = 0
    clear = [f"budget.{k}=null" for k in UNITS] + [f"budget.{k.split('_')[0]}_ratio=null" for k in UNITS]
    for batch in plan.regimes:
        rcfg = with_overrides(cfg, [f"hardware.batch_size={int(batch)}"])
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
                    "regime": int(batch),
                    "policy": str(spec),
                    "test_top1": test_metrics(np.array(bits))[0]["top1"],
                    **pipe.cost.policy_cost(bits).totals(),
                }
            )
        for kind, f in budgets:
            key = BUDGET_KEYS[kind]
            limit = low[key] + f * (w8a8[key] - low[key])
            budget = f"{kind} {f:.2f}"
            for name, overrides in methods.items():
                for seed in plan.seeds if name in b.stochastic else plan.seeds[:1]:
                    run_cfg = with_overrides(
                        rcfg,
                        [
                            *clear,
                            f"budget.{key}={limit!r}",
                            f"search.seed={int(seed)}",
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
                        "regime": int(batch),
                        "budget": budget,
                        "limit": limit,
                        "unit": UNITS[key],
                        "limit_ratio_of_w8a8": limit / w8a8[key],
                        "method": name,
                        "seed": int(seed),
                    }
                    try:
                        found = search(settings, pipe, lut, run_out, make_method, log_lut=False)
                    except NoPolicyError as e:  # e.g. no uniform pair fits: a result, not a failure
                        log.warning("%s", e)
                        result["runs"].append({**row, "found": False})
                        continue
                    p = found.problem
                    val = p.metrics(found.bits)
                    totals = p.totals(found.bits)
                    test, correct[(int(batch), budget, name, int(seed))] = test_metrics(found.bits)
                    result["runs"].append(
                        {
                            **row,
                            "found": True,
                            "test_top1": test["top1"],
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
                    )
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
    paired: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for (regime_batch, budget, name, seed), hits in correct.items():
        ref = correct.get((regime_batch, budget, str(b.goal.reference), int(plan.seeds[0])))
        if name == b.goal.method and ref is not None:
            paired.setdefault((regime_batch, budget), []).append({"seed": seed, **mcnemar(hits, ref)})
    result["goal"] = goal(result["table"], Goal.from_mapping(result["goal_config"]), paired)
    result["wall_s"] = time.perf_counter() - start
    save_json(result, out / "bench.json")
    text = markdown(result)
    atomic_write(out / "bench.md", lambda fh: fh.write(text.encode()))
    pareto_plot(result, out / "pareto.png")
    print(text)
    return result


main = app("bench")(lambda cfg: run_bench(cfg, run_dir()))
