"""The benchmark: every method under the same budgets, aggregated over seeds; room, search-val noise, learning
diagnostics, goal and verdict; artifacts."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from hysquant_rl.apps import compose_config, plain
from hysquant_rl.apps.bench import run_bench
from hysquant_rl.bench.plan import Goal, Targets, regime_budgets
from hysquant_rl.bench.stats import learning, mcnemar, room, se_paired, se_top1
from hysquant_rl.bench.verdict import goal, tightest, verdict
from hysquant_rl.bits import grid_sum
from hysquant_rl.errors import HySquantError
from hysquant_rl.lut.build import build_lut
from hysquant_rl.policy import QuantPolicy
from hysquant_rl.search.allocation import proxy_grid, solve_ilp
from hysquant_rl.search.budget import Budgets, span
from hysquant_rl.search.recorder import Recorder
from hysquant_rl.settings import RunSettings
from tests.formats import missing_keys

PLAN = [
    "data=digits",
    "data.search_val_size=400",  # digits' own: the bench's 2000 exceed its 1797 images
    "bench.quick=true",
    "bench.plans.quick.regimes=[{batch:1,budgets:{latency:[0.5],energy:[0.5]}}]",
    "bench.plans.quick.seeds=[0,1]",
    "bench.plans.quick.episodes=3",
    "bench.plans.quick.references=[W8A8,W4A8]",
    "~bench.methods.local",  # local search and ilp-refine have their own tests; left out to keep this run short
    "~bench.methods.ilp-refine",
    "~bench.seeds_per_method.local",
    "+bench.methods.random=['search.method=random']",  # out of the default plan (time), in the bench's code
    "+bench.methods.rl-plain=['search.method=rl','search.warm_start=false']",
    "agent.warmup_episodes=1",
    "agent.gradient_steps=2",
    "bench.throughput.repeats=1",
    # the transfer experiment, tiny: 2 training budgets, 1 held out, k = 0 and 1
    "bench.plans.quick.transfer={batch:1,kind:energy,train:[0.3,0.7],held_out:[0.5],seeds:[0],episodes:3,"
    "evaluations:[0,1]}",
    "bench.transfer.controls_at=1",
    "bench.transfer.bootstrap=200",
]
# bench.json keys of the old plan (latency x energy fractions) and goal (best baseline within a std) that the
# per-regime budgets and the new goal replaced
REPLACED = {
    "plan.latency_fractions",
    "plan.energy_fractions",
    "goal_config.baselines",
    "goal[].best_baseline",
    "goal[].best_baseline_top1",
    "goal[].reaches_best_baseline",
}


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    cfg = compose_config("bench", PLAN)
    return cfg, out, run_bench(cfg, out)


def test_bench_runs_every_method_under_the_same_budgets(bench, digits_pipeline):
    cfg, out, r = bench
    # rl runs with the first 3 of the plan's 2 seeds, the rest once (the first seed)
    expected = {m: [0] for m in cfg.bench.methods} | {"rl": [0, 1]}
    assert r["seeds"] == expected
    for budget in ("latency 0.50", "energy 0.50"):
        ran = sorted((x["method"], x["seed"]) for x in r["runs"] if x["budget"] == budget)
        assert ran == sorted((m, s) for m, seeds in expected.items() for s in seeds)
    assert len(r["runs"]) == 2 * 10  # 9 methods, rl twice; local and ilp-refine left out
    lut = build_lut(RunSettings.from_mapping(plain(cfg)), digits_pipeline)
    low, w8a8 = span(digits_pipeline.cost, lut.mask())
    for run in r["runs"]:
        key = "latency_ms" if run["budget"].startswith("latency") else "energy_mj"
        assert run["limit"] == pytest.approx(low[key] + 0.5 * (w8a8[key] - low[key]))  # halfway, as asked
        if run["found"]:
            assert run["within_budget"] and run[key] <= run["limit"] * (1 + 1e-9)
        agent = run["method"] in ("rl", "rl-plain", "rl-screen", "rl-swap")  # the agent and its options
        if (agent or run["method"] == "random") and run["found"]:
            assert run["episodes"] == 3 and 1 <= run["evaluations"] <= 3
        # the agent's runs carry learning diagnostics: episodes 0 and 1 are its warm-up, episode 2 comes after
        assert ("learning" in run) == (agent and run["found"])
        if "learning" in run:
            d = run["learning"]
            assert (d["warmup_episodes"], d["episodes"], d["episodes_after_warmup"]) == (1, 3, 1)
            assert d["new_policy_fraction"] in (0.0, 1.0) and d["last_improvement"] in (0, 1, 2)
            assert d["improved"] == (d["last_improvement"] == 2)
            if run["evaluations"] == 1:  # one policy all along: episode 2 found it evaluated
                assert d["new_policy_fraction"] == 0.0 and d["last_improvement"] == 0 and not d["improved"]
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
    assert on_disk["runs"] == json.loads(json.dumps(r["runs"]))  # every run's record
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
    assert f"| ilp-kl | {ilp['test_top1_mean']:.2f} |" in md
    for section in ("## Verdict", "## Search-val noise", "## Goal", "## Learning", "## Speed"):
        assert section in md
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(missing_keys(out / "bench.json", "bench")) == REPLACED
    during = out / "runs" / "batch1" / "latency_0.50" / "rl" / "seed0" / "best_policy.json"  # a search's own copy
    assert not missing_keys(during, "best_policy_during_search")
    assert r["speed"]["throughput_ratio"] > 0 and r["speed"]["lut_build_s"].keys() == {"1"}
    rl = next(e for e in r["speed"]["episodes"] if e["method"] == "rl")
    assert 0 < rl["overhead_s_per_episode"] < rl["s_per_episode"]
    assert (out / "runs" / "batch1" / "latency_0.50" / "rl" / "seed1" / "best_policy.json").exists()


def test_bench_room_goal_and_verdict(bench):
    cfg, out, r = bench
    n = n_images(cfg, "test")
    ilp = {x["budget"]: x for x in r["runs"] if x["method"] == "ilp-kl"}
    # room: FP32 test top-1 minus ILP-KL's, flagged against the 2 points the bench requires
    assert [(e["budget"], e["room"]) for e in r["room"]] == [
        (b, pytest.approx(r["fp32"]["test_top1"] - x["test_top1"])) for b, x in ilp.items()
    ]
    assert all(e["met"] == (e["room"] >= 2.0 - 1e-9) for e in r["room"])
    # one tightest budget for the regime: of latency 0.50 and energy 0.50, the one where ILP-KL is lower
    assert len(r["goal"]) == 2 and [e["budget"] for e in r["goal"] if e.get("tightest")] == [
        min(ilp, key=lambda b: ilp[b]["test_top1"])
    ]
    for e in r["goal"]:
        assert [t["seed"] for t in e["paired_vs_reference"]] == [0, 1]
        for t in e["paired_vs_reference"]:
            rl = next(x for x in r["runs"] if (x["budget"], x["method"], x["seed"]) == (e["budget"], "rl", t["seed"]))
            assert t["wins"] - t["losses"] == round((rl["test_top1"] - ilp[e["budget"]]["test_top1"]) * n / 100)
            assert t["diff"] == pytest.approx(rl["test_top1"] - ilp[e["budget"]]["test_top1"])
            assert t["passes"] == (t["diff"] >= 1.0 - 1e-9 and t["p"] < 0.05)
    # the verdict: room, rl against every other method, the regime's tightest budget, learning (2), overhead
    items = {v["item"].split(":")[0].split(" (")[0]: v for v in r["verdict"]}
    assert len(r["verdict"]) == 6
    assert items["room"]["met"] == all(e["met"] for e in r["room"])
    assert items["rl's mean test top-1 >= every other method's at every budget"]["met"] == all(
        e["at_least_every_other"] for e in r["goal"]
    )
    tight = next(e for e in r["goal"] if e.get("tightest"))
    assert (
        items["batch 1, tightest budget"]["met"] == tight["beats_reference_by_margin"] == (tight["seeds_passing"] >= 2)
    )
    rl = [x for x in r["runs"] if x["method"] == "rl"]
    assert sum(v["item"].startswith("rl: ") for v in r["verdict"]) == 3
    learning_items = [v for v in r["verdict"] if v["item"].startswith("rl: ")]
    assert learning_items[0]["met"] == all(x["learning"]["new_policy_fraction"] >= 0.9 for x in rl)
    assert learning_items[1]["met"] == all(
        sum(x["learning"]["improved"] for x in rl if x["budget"] == b) >= 2 for b in ilp
    )
    speed = next(e for e in r["speed"]["episodes"] if e["method"] == "rl")
    assert learning_items[2]["met"] == (speed["overhead_fraction"] <= 0.2)
    md = (out / "bench.md").read_text()
    for v in r["verdict"]:
        assert f"- {v['item']}: {'met' if v['met'] else 'NOT met'} (" in md


def test_bench_search_val_noise(bench, digits_pipeline):
    cfg, out, r = bench
    sv = r["search_val"]
    ref, labels = digits_pipeline.evaluator.fp32("search_val")
    fp32 = float((ref.argmax(dim=1) == labels).float().mean()) * 100
    assert sv["size"] == n_images(cfg, "search_val") == 400
    assert sv["fp32_top1"] == pytest.approx(fp32)
    assert sv["se_top1"] == pytest.approx(100 * math.sqrt(fp32 / 100 * (1 - fp32 / 100) / 400))
    # the paired standard error, from the two policies' own search-val predictions
    runs = out / "runs" / "batch1" / "latency_0.50"

    def val_hits(method: str, seed: int) -> np.ndarray:
        bits = QuantPolicy.load(runs / method / f"seed{seed}" / "best_policy.json").bits()
        _, pred = digits_pipeline.evaluator.evaluate_with_predictions(bits, "search_val")
        return (pred == labels).numpy()

    e = next(e for e in sv["paired"] if e["budget"] == "latency 0.50")
    assert [t["seed"] for t in e["seeds"]] == [0, 1]
    d = float(np.mean(val_hits("rl", 0) != val_hits("ilp-kl", 0)))
    assert e["seeds"][0]["discordant"] == pytest.approx(d)
    assert e["seeds"][0]["se"] == pytest.approx(100 * math.sqrt(d / 400))
    assert e["se_mean"] == pytest.approx(np.mean([t["se"] for t in e["seeds"]]))
    assert f"{sv['se_top1']:.2f} points" in (out / "bench.md").read_text()


def test_bench_transfer_part(bench, digits_pipeline):
    """The transfer experiment ran beside the per-budget plan: one agent trained (its artefact in the run), every arm
    at the held-out budget at k = 0 and 1, each arm's k = 1 answer its k = 0 answer evaluated (the first evaluation of
    every arm is its k = 0 answer; local's is the ILP's), the paired cases, the decision, the files."""
    cfg, out, r = bench
    t = r["transfer"]
    assert [(x["seed"], x["evaluations"], x["episodes"]) for x in t["training"]] == [(0, 3, 3)]
    assert (out / "runs" / "transfer" / "seed0" / "agent" / "agent.json").exists()
    got = {(a["k"], a["arm"]): a for a in t["answers"] if a["budget"] == "energy 0.50"}
    assert set(got) == {(0, "ilp"), (0, "nearest"), (0, "surrogate"), (0, "rl")} | {
        (1, arm) for arm in ("local", "nearest", "surrogate", "rl", "rl-frozen")
    }
    assert all(a["within_budget"] for a in t["answers"])
    assert got[(1, "local")]["test_top1"] == got[(0, "ilp")]["test_top1"]
    for arm, first in (("nearest", "nearest"), ("surrogate", "surrogate"), ("rl", "rl"), ("rl-frozen", "rl")):
        assert got[(1, arm)]["test_top1"] == got[(0, first)]["test_top1"] and got[(1, arm)]["evaluations"] == 1
    # the ILP's answer is the integer program's policy over the LUT at that budget, measured on the test split
    lut = build_lut(RunSettings.from_mapping(plain(cfg)), digits_pipeline)
    grids, fixed = digits_pipeline.cost.budget_grids()
    limit = next(b["limit"] for b in t["budgets"] if b["budget"] == "energy 0.50")
    bits = solve_ilp(
        proxy_grid(lut.configs, lut.matrix("kl")), lut.mask(), grids, {"energy_mj": limit - fixed["energy_mj"]}
    )
    assert got[(0, "ilp")]["test_top1"] == pytest.approx(
        digits_pipeline.evaluator.evaluate([tuple(b) for b in bits.tolist()], "test").top1
    )
    pooled = {(x["k"], x["arm"]): x for x in t["table"] if x["budget"] == "all held-out"}
    assert pooled[(0, "rl")]["test_top1_mean"] == pytest.approx(got[(0, "rl")]["test_top1"])
    case = next(
        c for c in t["cases"] if (c["k"], c["arm"], c["against"], c["budget"]) == (0, "rl", "ilp", "energy 0.50")
    )
    n = n_images(cfg, "test")
    assert case["diff"] == pytest.approx(got[(0, "rl")]["test_top1"] - got[(0, "ilp")]["test_top1"])
    assert case["tests"][0]["wins"] - case["tests"][0]["losses"] == round(case["diff"] * n / 100)
    assert t["decision"]["outcome"] in ("rl", "surrogate", "ilp+local") and len(t["decision"]["items"]) == 4
    assert [e["budget"] for e in t["tau"]] == ["energy 0.50"]
    md = (out / "bench.md").read_text()
    order = [md.index(h) for h in ("## Transfer", "### Decision rules", "### Transfer verdict", "### Held-out budgets")]
    assert order == sorted(order)
    assert (out / "transfer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "bench.json").read_text())["transfer"]["decision"] == t["decision"]


def n_images(cfg, split: str) -> int:
    from hysquant_rl.data import load_data

    run = RunSettings.from_mapping(plain(cfg))
    return len(load_data(run.data, seed=run.seed).split(split))


def test_mcnemar():
    a = np.array([True] * 12 + [False] * 3)
    b = np.array([False] * 10 + [True] * 5)
    t = mcnemar(a, b)
    assert (t["wins"], t["losses"]) == (10, 3)
    assert t["p"] == pytest.approx(2 * sum(math.comb(13, k) for k in range(4)) / 2**13)
    assert t["diff"] == pytest.approx(100 * (12 - 5) / 15)  # a's top-1 minus b's
    assert mcnemar(a, a)["p"] == 1.0 and mcnemar(a, a)["diff"] == 0.0


def test_standard_errors():
    assert se_top1(90.0, 400) == pytest.approx(1.5)  # 100 sqrt(0.9 * 0.1 / 400)
    assert se_top1(50.0, 2500) == pytest.approx(1.0)
    a = np.array([True] * 300 + [False] * 100)
    b = a.copy()
    b[:10] = False  # 10 images only a gets right, 6 only b: 16 of 400 discordant
    b[300:306] = True
    t = se_paired(a, b)
    assert t["discordant"] == pytest.approx(0.04) and t["se"] == pytest.approx(1.0)  # 100 sqrt(0.04 / 400)


def episode(i, reward, cached=False, skipped=False):
    return {"episode": i, "reward": reward, "cached": cached, "skipped": skipped}


def test_learning_diagnostics():
    history = [
        episode(0, -1.0),
        episode(1, -0.5),
        episode(2, -0.8),  # warm-up (warmup_episodes=2): episodes 0, 1, 2
        episode(3, -0.5, cached=True),  # equal to the best: no improvement
        episode(4, 5.0, skipped=True),  # a NaN evaluation's stand-in reward: not a reward
        episode(5, -0.3),  # the last improvement
        episode(6, -0.3, cached=True),
    ]
    d = learning(history, 2)
    assert d["episodes_after_warmup"] == 4 and d["new_policy_fraction"] == 0.5  # episodes 4 and 5 of 3..6
    assert (d["best_reward_warmup"], d["best_reward"], d["last_improvement"], d["improved"]) == (-0.5, -0.3, 5, True)
    flat = learning([*history[:4], episode(4, -0.6), episode(5, -0.5)], 2)
    assert (flat["last_improvement"], flat["improved"], flat["best_reward"]) == (1, False, -0.5)
    assert flat["new_policy_fraction"] == pytest.approx(2 / 3)
    short = learning(history[:2], 2)  # the run ended inside the warm-up
    assert short["new_policy_fraction"] is None and not short["improved"]


def test_recorder_marks_episodes_evaluated_before(digits_pipeline, tmp_path):
    rec = Recorder(digits_pipeline, tmp_path, "random", 0, Budgets({}, None, {}))
    info = {
        "bits": np.full((len(digits_pipeline.units), 2), 8),
        "metrics": {"top1": 90.0, "top5": 99.0, "kl": 0.01, "loss": 0.3},
        "totals": {"latency_ms": 1.0, "energy_mj": 1.0, "size_mb": 1.0},
        "reward": -0.1,
        "feasible": False,  # no best policy to write
    }
    for cached in (False, True, None):
        rec.record(info if cached is None else {**info, "cached": cached})
    assert [e["cached"] for e in rec.history] == [False, True, False]


def row(regime, budget, method, mean, std=None, found=1):
    return {
        "regime": regime,
        "budget": budget,
        "method": method,
        "test_top1_mean": mean if found else None,
        "test_top1_std": std,
        "found": found,
    }


TABLE = [
    row(1, "energy 0.08", "rl", 80.0, 0.3),
    row(1, "energy 0.08", "ilp-kl", 78.5),
    row(1, "energy 0.08", "greedy", 80.2),
    row(1, "energy 0.08", "uniform", None, found=0),
    row(1, "energy 0.30", "rl", None, found=0),
    row(1, "energy 0.30", "ilp-kl", 81.0),
    row(64, "latency 0.20", "rl", 85.0),
    row(64, "latency 0.20", "ilp-kl", 84.0),
    row(64, "latency 0.50", "rl", float(np.mean([86.1, 86.3, 86.2]))),  # 86.19999999999999
    row(64, "latency 0.50", "ilp-kl", 85.3),
    row(64, "latency 0.50", "local", 86.2),  # a tie, not a win
    row(64, "energy 0.20", "rl", 84.5),
    row(64, "energy 0.20", "ilp-kl", 82.0),
]
PAIRED = {
    (1, "energy 0.08"): [  # passes: 1.6 with p 0.01; not: p 0.08, and 0.9 < 1.0 points
        {"seed": 0, "wins": 30, "losses": 14, "diff": 1.6, "p": 0.01},
        {"seed": 1, "wins": 30, "losses": 18, "diff": 1.2, "p": 0.08},
        {"seed": 2, "wins": 40, "losses": 31, "diff": 0.9, "p": 0.001},
    ],
    (64, "energy 0.20"): [
        {"seed": 0, "wins": 40, "losses": 15, "diff": 2.5, "p": 0.001},
        {"seed": 1, "wins": 40, "losses": 20, "diff": 2.0, "p": 0.04},
        {"seed": 2, "wins": 50, "losses": 20, "diff": 3.0, "p": 0.2},
    ],
}
GOAL = Goal(method="rl", reference="ilp-kl", margin=1.0, p_max=0.05, min_seeds=2)


def test_goal_from_the_config():
    assert Goal.from_mapping(plain(compose_config("bench"))["bench"]["goal"]) == GOAL
    t = Targets.from_mapping(plain(compose_config("bench"))["bench"]["targets"])
    assert t == Targets(min_room=2.0, new_policy_fraction=0.9, improved_seeds=2, max_overhead=0.2)


def test_tightest_budget_per_regime():
    # batch 1: energy only, the smallest fraction. batch 64: latency 0.20 (ILP-KL 84.0) and energy 0.20 (82.0) are
    # each kind's smallest; energy leaves more room
    assert tightest(TABLE, "ilp-kl") == {1: "energy 0.08", 64: "energy 0.20"}
    # a budget where the reference found no policy leaves the most room
    table = [row(8, "latency 0.10", "ilp-kl", None, found=0), row(8, "energy 0.10", "ilp-kl", 70.0)]
    assert tightest(table, "ilp-kl") == {8: "latency 0.10"}


def test_goal_check():
    e = {(x["regime"], x["budget"]): x for x in goal(TABLE, GOAL, PAIRED)}
    assert list(e) == [
        (1, "energy 0.08"),
        (1, "energy 0.30"),
        (64, "latency 0.20"),
        (64, "latency 0.50"),
        (64, "energy 0.20"),
    ]
    b1 = e[(1, "energy 0.08")]
    assert b1["beaten_by"] == [{"method": "greedy", "test_top1": 80.2}] and not b1["at_least_every_other"]
    assert (b1["best_other"], b1["method_std"]) == ("greedy", 0.3)  # uniform found no policy: not a competitor
    assert b1["margin_over_reference"] == pytest.approx(1.5)
    assert [t["passes"] for t in b1["paired_vs_reference"]] == [True, False, False]
    assert b1["tightest"] and b1["seeds_passing"] == 1 and not b1["beats_reference_by_margin"]
    missing = e[(1, "energy 0.30")]  # rl found no policy: every method that did beats it
    assert missing["method_top1"] is None and missing["beaten_by"] == [{"method": "ilp-kl", "test_top1": 81.0}]
    assert "margin_over_reference" not in missing and "tightest" not in missing
    tie = e[(64, "latency 0.50")]
    assert tie["at_least_every_other"] and tie["beaten_by"] == [] and tie["best_other"] == "local"
    b64 = e[(64, "energy 0.20")]
    assert b64["at_least_every_other"] and b64["seeds_passing"] == 2 and b64["beats_reference_by_margin"]
    assert "tightest" not in e[(64, "latency 0.20")] and e[(64, "latency 0.20")]["paired_vs_reference"] == []


def test_room():
    rooms = room(TABLE, 87.3, "ilp-kl", 2.0)
    assert [(e["regime"], e["budget"]) for e in rooms] == [
        (1, "energy 0.08"),
        (1, "energy 0.30"),
        (64, "latency 0.20"),
        (64, "latency 0.50"),
        (64, "energy 0.20"),
    ]
    assert [e["room"] for e in rooms] == pytest.approx([8.8, 6.3, 3.3, 2.0, 5.3])
    assert [e["met"] for e in rooms] == [True, True, True, True, True]  # 87.3 - 85.3 = 2.0: just enough
    short = room(
        [row(1, "energy 0.08", "ilp-kl", 85.4), row(1, "energy 0.20", "ilp-kl", None, found=0)], 87.3, "ilp-kl", 2.0
    )
    assert [(e["room"], e["met"]) for e in short] == [(pytest.approx(1.9), False), (None, False)]


def verdict_input(runs):
    return {
        "plan": {
            "regimes": [
                {"batch": 1, "budgets": {"energy": [0.08, 0.3]}},
                {"batch": 64, "budgets": {"latency": [0.2, 0.5], "energy": [0.2]}},
            ]
        },
        "room": room(TABLE, 86.3, "ilp-kl", 2.0),  # latency 0.50: 86.3 - 85.3 = 1.0 points
        "goal": goal(TABLE, GOAL, PAIRED),
        "runs": runs,
        "speed": {
            "episodes": [{"method": "random", "overhead_fraction": 0.01}, {"method": "rl", "overhead_fraction": 0.15}]
        },
    }


def learned(regime, budget, seed, fraction, improved, method="rl"):
    return {
        "regime": regime,
        "budget": budget,
        "method": method,
        "seed": seed,
        "learning": {"new_policy_fraction": fraction, "improved": improved},
    }


def test_verdict():
    runs = [
        learned(1, "energy 0.08", 0, 0.95, True),
        learned(1, "energy 0.08", 1, 0.9, True),  # 90 % meets 90 %
        learned(1, "energy 0.08", 2, 1.0, False),
        learned(64, "energy 0.20", 0, 1.0, True),
        learned(64, "energy 0.20", 1, 0.85, False),
        learned(64, "energy 0.20", 2, 1.0, False),
        learned(64, "energy 0.20", 0, 0.1, False, method="rl-plain"),  # not the goal's method
        {"regime": 64, "budget": "energy 0.20", "method": "ilp-kl", "seed": 0},
    ]
    targets = Targets(min_room=2.0, new_policy_fraction=0.9, improved_seeds=2, max_overhead=0.2)
    v = verdict(verdict_input(runs), GOAL, targets)
    assert [(x["met"], x["detail"]) for x in v] == [
        (False, "batch 64 latency 0.50: +1.00"),
        (
            False,
            "batch 1 energy 0.08: rl 80.00, beaten by greedy 80.20;"
            " batch 1 energy 0.30: rl found no policy, beaten by ilp-kl 81.00",
        ),
        (False, "1 of 3 seeds; mean difference +1.50"),  # batch 1's tightest: energy 0.08
        (True, "2 of 3 seeds; mean difference +2.50"),  # batch 64's: energy 0.20
        (False, "batch 64 energy 0.20 seed 1: 85 %"),
        (False, "batch 1 energy 0.08: 2 of 3, batch 64 energy 0.20: 1 of 3"),
        (True, "15 %"),
    ]
    assert v[2]["item"].startswith("batch 1, tightest budget (energy 0.08)")
    assert v[3]["item"].startswith("batch 64, tightest budget (energy 0.20)")
    # every seed at 90 % or more, two improving seeds per budget, and a slow agent
    runs[4]["learning"] = {"new_policy_fraction": 0.92, "improved": True}
    slow = verdict_input(runs)
    slow["speed"]["episodes"][1]["overhead_fraction"] = 0.36
    v = verdict(slow, GOAL, targets)
    assert [(x["met"], x["detail"]) for x in v[4:]] == [
        (True, "lowest 90 % over 6 runs"),
        (True, "batch 1 energy 0.08: 2 of 3, batch 64 energy 0.20: 2 of 3"),
        (False, "36 %"),
    ]


def test_plan_format():
    cfg = compose_config("bench")
    assert regime_budgets(cfg.bench.plans.full) == [(1, [("energy", 0.07)]), (64, [("latency", 0.16)])]
    assert regime_budgets(cfg.bench.plans.quick) == [(64, [("latency", 0.16)])]
    assert cfg.data.search_val_size == 2000


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("bench.goal.reference=ilp", "unknown methods"),
        ("+bench.seeds_per_method.rll=2", "unknown methods"),
        ("bench.seeds_per_method.rl=0", "count >= 1"),
        ("bench.plans.quick.regimes=[1]", "regime 1: write"),  # the old format: batch sizes only
        ("bench.plans.quick.regimes=[{batch:1,budgets:{size:[0.5]}}]", "unknown budget kinds"),
        ("bench.plans.quick.regimes=[{batch:1,budgets:{energy:[]}}]", "at least one budget"),
    ],
)
def test_bench_refuses_a_bad_plan_before_any_work(tmp_path, override, message):
    with pytest.raises(HySquantError, match=message):
        run_bench(compose_config("bench", [*PLAN, override]), tmp_path)
