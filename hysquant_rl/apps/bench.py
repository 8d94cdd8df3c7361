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

import time
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from hysquant_rl.apps import app, plain, run_dir
from hysquant_rl.apps.search import check_method, make_method
from hysquant_rl.bench.budgets import CLEAR_BUDGETS, budget_label
from hysquant_rl.bench.plan import PER_BUDGET, Plan
from hysquant_rl.bench.plots import pareto_plot, transfer_plot
from hysquant_rl.bench.report import markdown
from hysquant_rl.bench.stats import aggregate, episode_speed, room, search_val_noise
from hysquant_rl.bench.transfer_verdict import break_even, cases, decide, tau_summary
from hysquant_rl.bench.transfer_verdict import room as transfer_room
from hysquant_rl.bench.transfer_verdict import table as transfer_table
from hysquant_rl.bench.verdict import goal, verdict
from hysquant_rl.io import atomic_write, save_json
from hysquant_rl.settings import TRANSFER_METHOD, SearchSettings


def with_overrides(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """A copy of ``cfg`` with Hydra-style ``key=value`` overrides applied."""
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))


def run_bench(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """The plan (checked, with every method's settings, before any work) -> its parts (``bench.parts``): every
    per-budget search, then statistics, goal and verdict; the transfer experiment, its statistics and decision ->
    ``bench.json``, ``bench.md``, ``pareto.png`` (and ``transfer.png``) in ``out``. Returns bench.json's record."""
    from hysquant_rl.bench.run import header, measure_throughput, prepare, run_plan

    plan = Plan.from_mapping(OmegaConf.to_container(cfg.bench, resolve=True))
    for overrides in plan.methods.values():  # every run's settings are checked before any work
        check_method(SearchSettings.from_mapping(plain(with_overrides(cfg, overrides))))
    if plan.transfer is not None:
        key = plan.transfer.key
        check_method(
            SearchSettings.from_mapping(
                plain(with_overrides(cfg, [*CLEAR_BUDGETS, f"budget.{key}=1.0", f"search.method={TRANSFER_METHOD}"]))
            )
        )
    start = time.perf_counter()

    def configure(overrides: list[str]) -> dict[str, Any]:
        return plain(with_overrides(cfg, overrides))

    run, base, hits = prepare(configure)
    result = header(plan, run, base, hits)
    if PER_BUDGET in plan.parts:
        paired, noise = run_plan(plan, configure, make_method, out, base, hits, result)
        runs = pd.DataFrame(result["runs"])
        result["table"] = aggregate(runs)
        result["speed"]["episodes"] = episode_speed(runs)
        result["search_val"]["paired"] = search_val_noise(noise)
        result["room"] = room(result["table"], result["fp32"]["test_top1"], plan.goal.reference, plan.targets.min_room)
        result["goal"] = goal(result["table"], plan.goal, paired)
    if plan.transfer is not None:
        result["transfer"] = transfer(plan, configure, out, base, hits, result)
    result["speed"].update(measure_throughput(base, plan.throughput))
    result["wall_s"] = time.perf_counter() - start
    if PER_BUDGET in plan.parts:
        result["verdict"] = verdict(result, plan.goal, plan.targets)
    save_json(result, out / "bench.json")
    text = markdown(result)
    atomic_write(out / "bench.md", lambda fh: fh.write(text.encode()))
    if PER_BUDGET in plan.parts:
        pareto_plot(result, out / "pareto.png")
    if plan.transfer is not None:
        transfer_plot(result["transfer"], out / "transfer.png")
    print(text)
    return result


def transfer(plan: Plan, configure: Any, out: Path, base: Any, hits: Any, result: dict[str, Any]) -> dict[str, Any]:
    """The transfer experiment (:mod:`hysquant_rl.bench.transfer_run`) with the agent of ``agents/``, and its
    statistics and decision (:mod:`hysquant_rl.bench.transfer_verdict`): ``bench.json``'s ``transfer``."""
    from hysquant_rl.bench.transfer_run import run_transfer

    tp = plan.transfer
    assert tp is not None
    start = time.perf_counter()
    t = run_transfer(tp, configure, learner(), out, base, hits, result)
    held = [budget_label(tp.kind, f) for f in tp.held_out]
    t["plan"] = {
        "batch": tp.batch,
        "kind": tp.kind,
        "train": list(tp.train),
        "held_out": list(tp.held_out),
        "seeds": list(tp.seeds),
        "episodes": tp.episodes,
        "evaluations": list(tp.evaluations),
    }
    t["table"] = transfer_table(t["answers"], held)
    t["cases"] = cases(t.pop("hits_of"), list(tp.seeds), held, list(tp.evaluations), tp.rules)
    t["decision"] = decide(t["cases"], tp.rules)
    t["break_even"] = break_even(t["table"], t["training"], list(tp.evaluations))
    t["room"] = transfer_room(t["budgets"], result["fp32"]["test_top1"], plan.targets.min_room)
    t["tau_summary"] = tau_summary(t["tau"])
    t["wall_s"] = time.perf_counter() - start
    return t


def learner() -> Any:
    """The budget-conditioned agent of ``agents/`` as the bench's :class:`~hysquant_rl.bench.transfer_run.Learner`."""
    from types import SimpleNamespace

    from agents.conditioned import train_agent
    from agents.storage import load_agent, save_agent

    return SimpleNamespace(train=train_agent, save=save_agent, load=load_agent)


main = app("bench")(lambda cfg: run_bench(cfg, run_dir()))
