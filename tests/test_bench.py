"""The benchmark: every method under the same budgets, aggregated over seeds, goal check, artifacts."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from hysquant_rl.apps import compose_config, plain
from hysquant_rl.apps.bench import run_bench
from hysquant_rl.bench import Goal, goal, mcnemar
from hysquant_rl.bits import grid_sum
from hysquant_rl.errors import HySquantError
from hysquant_rl.lut.build import build_lut
from hysquant_rl.search.allocation import proxy_grid, solve_ilp
from hysquant_rl.search.budget import span
from hysquant_rl.settings import RunSettings
from tests.formats import missing_keys

PLAN = [
    "data=digits",
    "bench.quick=true",
    "bench.plans.quick.regimes=[1]",
    "bench.plans.quick.latency_fractions=[0.5]",
    "bench.plans.quick.energy_fractions=[0.5]",
    "bench.plans.quick.seeds=[0,1]",
    "bench.plans.quick.episodes=3",
    "bench.plans.quick.references=[W8A8,W4A8]",
    "agent.warmup_episodes=1",
    "agent.gradient_steps=2",
    "bench.throughput.repeats=1",
]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    cfg = compose_config("bench", PLAN)
    return cfg, out, run_bench(cfg, out)


def test_bench_runs_every_method_under_the_same_budgets(bench, digits_pipeline):
    cfg, out, r = bench
    methods = list(cfg.bench.methods)
    stochastic = set(cfg.bench.stochastic)
    per_setting = sum(2 if m in stochastic else 1 for m in methods)
    assert len(r["runs"]) == 2 * per_setting  # one latency and one energy budget
    lut = build_lut(RunSettings.from_mapping(plain(cfg)), digits_pipeline)
    low, w8a8 = span(digits_pipeline.cost, lut.mask())
    for run in r["runs"]:
        key = "latency_ms" if run["budget"].startswith("latency") else "energy_mj"
        assert run["limit"] == pytest.approx(low[key] + 0.5 * (w8a8[key] - low[key]))  # halfway, as asked
        if run["found"]:
            assert run["within_budget"] and run[key] <= run["limit"] * (1 + 1e-9)
        if run["method"] in ("random", "rl", "rl-plain") and run["found"]:
            assert run["episodes"] == 3 and 1 <= run["evaluations"] <= 3
    # the ILP-KL row is the integer program's policy over the same LUT, measured on the test split
    grids, fixed = digits_pipeline.cost.budget_grids()
    run = next(x for x in r["runs"] if x["method"] == "ilp-kl" and x["budget"].startswith("latency"))
    bits = solve_ilp(
        proxy_grid(lut.configs, lut.matrix("kl")), lut.mask(), grids, {"latency_ms": run["limit"] - fixed["latency_ms"]}
    )
    assert run["test_top1"] == pytest.approx(
        digits_pipeline.evaluator.evaluate([tuple(b) for b in bits.tolist()], "test").top1
    )
    assert run["latency_ms"] == pytest.approx(grid_sum(grids["latency_ms"], bits) + fixed["latency_ms"])


def test_bench_aggregates_and_writes_artifacts(bench):
    cfg, out, r = bench
    on_disk = json.loads((out / "bench.json").read_text())
    assert on_disk["table"] == json.loads(json.dumps(r["table"]))
    for row in r["table"]:
        runs = [
            x
            for x in r["runs"]
            if (x["regime"], x["budget"], x["method"]) == (row["regime"], row["budget"], row["method"])
        ]
        found = [x["test_top1"] for x in runs if x["found"]]
        assert row["seeds"] == len(runs) and row["found"] == len(found)
        if found:
            assert row["test_top1_mean"] == pytest.approx(np.mean(found))
        if len(found) > 1:
            assert row["test_top1_std"] == pytest.approx(np.std(found, ddof=1))
        else:
            assert row["test_top1_std"] is None
    md = (out / "bench.md").read_text()
    ilp = next(t for t in r["table"] if t["method"] == "ilp-kl")
    assert f"| ilp-kl | {ilp['test_top1_mean']:.2f} |" in md and "## Goal" in md and "## Speed" in md
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not missing_keys(out / "bench.json", "bench")
    during = out / "runs" / "batch1" / "latency_0.50" / "rl" / "seed0" / "best_policy.json"  # a search's own copy
    assert not missing_keys(during, "best_policy_during_search")
    assert r["speed"]["throughput_ratio"] > 0 and r["speed"]["lut_build_s"].keys() == {"1"}
    rl = next(e for e in r["speed"]["episodes"] if e["method"] == "rl")
    assert 0 < rl["overhead_s_per_episode"] < rl["s_per_episode"]
    assert len(r["goal"]) == 2 and sum(bool(e.get("tightest")) for e in r["goal"]) == 1
    # the paired counts agree with the top-1 difference
    for e in r["goal"]:
        ilp = next(x for x in r["runs"] if (x["budget"], x["method"]) == (e["budget"], "ilp-kl"))
        assert [t["seed"] for t in e["paired_vs_reference"]] == [0, 1]
        for t in e["paired_vs_reference"]:
            rl = next(x for x in r["runs"] if (x["budget"], x["method"], x["seed"]) == (e["budget"], "rl", t["seed"]))
            assert t["wins"] - t["losses"] == round((rl["test_top1"] - ilp["test_top1"]) * n_images(cfg) / 100)
    assert "McNemar" in md
    assert (out / "runs" / "batch1" / "latency_0.50" / "rl" / "seed1" / "best_policy.json").exists()


def n_images(cfg) -> int:
    from hysquant_rl.data import load_data

    run = RunSettings.from_mapping(plain(cfg))
    return len(load_data(run.data, seed=run.seed).split("test"))


def test_mcnemar():
    a = np.array([True] * 12 + [False] * 3)
    b = np.array([False] * 10 + [True] * 5)
    t = mcnemar(a, b)
    assert (t["wins"], t["losses"]) == (10, 3)
    assert t["p"] == pytest.approx(2 * sum(math.comb(13, k) for k in range(4)) / 2**13)
    assert mcnemar(a, a)["p"] == 1.0


def test_goal_check():
    def row(budget, method, mean, std=None):
        return {
            "regime": 1,
            "budget": budget,
            "method": method,
            "test_top1_mean": mean,
            "test_top1_std": std,
            "found": 1,
        }

    g = Goal.from_mapping(plain(compose_config("bench"))["bench"]["goal"])
    table = [
        row("latency 0.25", "rl", 80.0, 0.4),
        row("latency 0.25", "ilp-kl", 79.4),
        row("latency 0.25", "greedy", 80.3),
        row("latency 0.50", "rl", 84.0, 0.1),
        row("latency 0.50", "ilp-kl", 84.0),
        row("latency 0.50", "uniform", 84.2),
    ]
    tight, loose = goal(table, g)
    assert tight["tightest"] and tight["reaches_best_baseline"] and tight["best_baseline"] == "greedy"
    assert tight["margin_over_reference"] == pytest.approx(0.6) and tight["beats_reference_by_margin"]
    assert not loose["reaches_best_baseline"] and "tightest" not in loose  # 84.0 < 84.2 - 0.1


def test_bench_refuses_unknown_method_names(tmp_path):
    with pytest.raises(HySquantError, match="unknown methods"):
        run_bench(compose_config("bench", [*PLAN, "bench.goal.reference=ilp"]), tmp_path)
