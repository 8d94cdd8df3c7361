"""The transfer experiment's statistics and decision against hand arithmetic and brute force: Holm's correction, the
bootstrap interval, Kendall's tau and the critic's prospective pairs, the paired cases, the pre-stated decision and
the break-even count; and the plan's checks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from hysquant_rl.apps import compose_config, plain
from hysquant_rl.bench.plan import Plan
from hysquant_rl.bench.stats import bootstrap_means, holm
from hysquant_rl.bench.transfer_plan import Rules
from hysquant_rl.bench.transfer_verdict import POOLED, break_even, cases, decide
from hysquant_rl.errors import HySquantError
from hysquant_rl.search.ranking import clearly_ranks, kendall, prospective_pairs

RULES = Rules(margin=0.3, controls_at=5, confidence=0.95, bootstrap=2000, bootstrap_seed=0, p_max=0.05)


def test_holm_by_hand():
    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> made non-decreasing: 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([0.02]) == pytest.approx([0.02])


def test_bootstrap_interval_against_every_resample():
    """Four images: the 4^4 = 256 equally likely resamples give the exact distribution of the mean; 20000 bootstrap
    draws land on its 2.5 % and 97.5 % quantiles (the mean takes multiples of 1/4; each quantile lies well inside
    one: column 0's CDF is 2.0 % at -0.75 and 7.4 % at -0.5)."""
    values = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 1.0], [1.0, 1.0]])  # two columns, one resample for both
    exact = np.array([values[list(idx)].mean(axis=0) for idx in itertools.product(range(4), repeat=4)])
    low, high = bootstrap_means(values, 20000, 0.95, seed=3)
    assert np.quantile(exact, 0.025, axis=0).tolist() == [-0.5, 0.25]
    assert np.quantile(exact, 0.975, axis=0).tolist() == [1.0, 1.0]
    assert low.tolist() == [-0.5, 0.25] and high.tolist() == [1.0, 1.0]
    again = bootstrap_means(values, 20000, 0.95, seed=3)
    assert np.array_equal(again[0], low)  # seeded


def test_kendall_against_counted_pairs():
    x = [0.1, 0.4, 0.2, 0.8, 0.5]
    y = [1.0, 3.0, 2.0, 4.0, 2.5]
    pairs = list(itertools.combinations(range(5), 2))
    concordant = sum(np.sign(x[i] - x[j]) == np.sign(y[i] - y[j]) for i, j in pairs)
    tau = kendall(x, y)
    assert tau["tau"] == pytest.approx((concordant - (len(pairs) - concordant)) / len(pairs))  # 8 vs 2: 0.6
    assert tau["pairs"] == 5 and 0 < tau["p"] < 0.2
    assert kendall([1, 2], [1, 2])["tau"] is None and kendall([1, 1, 1], [1, 2, 3])["tau"] is None
    assert clearly_ranks({"pairs": 30, "tau": 0.3, "p": 0.01}, 20, 0.05)
    assert not clearly_ranks({"pairs": 10, "tau": 0.9, "p": 0.001}, 20, 0.05)  # too few
    assert not clearly_ranks({"pairs": 30, "tau": 0.3, "p": 0.2}, 20, 0.05)


def test_prospective_pairs_by_hand():
    history = [
        {"episode": 0, "reward": -1.0, "feasible": True},
        {"episode": 1, "reward": -0.8, "feasible": True, "critic_score": 0.3},
        {"episode": 2, "reward": -0.2, "feasible": False, "critic_score": 0.5},  # infeasible: never the best
        {"episode": 3, "reward": -0.9, "feasible": True, "critic_score": -0.1},
        {"episode": 4, "reward": 0.0, "feasible": True, "skipped": True, "critic_score": 1.0},  # a NaN evaluation
        {"episode": 5, "reward": -0.5, "feasible": True, "critic_score": None},  # not scored
    ]
    predicted, realised = prospective_pairs(history)
    assert predicted.tolist() == [0.3, 0.5, -0.1]
    assert realised.tolist() == pytest.approx([0.2, 0.6, -0.1])  # -0.8 - -1.0, -0.2 - -0.8, -0.9 - -0.8
    assert prospective_pairs(history, after=1)[0].tolist() == [0.5, -0.1]


def hits(n: int, right: int, offset: int = 0) -> np.ndarray:
    """n images, ``right`` of them right, starting at ``offset`` (cyclically)."""
    out = np.zeros(n, dtype=bool)
    out[(offset + np.arange(right)) % n] = True
    return out


def test_cases_pair_the_arms_image_by_image():
    """Two seeds, one held-out budget, 100 images. At k = 0 the agent gets 60 right where the ILP gets 50 (seed 0:
    the agent's 60 include the ILP's 50; seed 1: the same 60 against 55): +10 and +5 points, mean +7.5."""
    n = 100
    answers = {
        (0, "b", 0, "rl"): hits(n, 60),
        (0, "b", 0, "ilp"): hits(n, 50),
        (1, "b", 0, "rl"): hits(n, 60),
        (1, "b", 0, "ilp"): hits(n, 55),
    }
    found = cases(lambda s, b, k, a: answers.get((s, b, k, a)), [0, 1], ["b"], [0], RULES)
    assert {(c["k"], c["arm"], c["against"], c["budget"]) for c in found} == {
        (0, "rl", "ilp", "b"),
        (0, "rl", "ilp", POOLED),
    }
    one = next(c for c in found if c["budget"] == "b")
    assert one["diff"] == pytest.approx(7.5)
    assert [(t["wins"], t["losses"], t["diff"]) for t in one["tests"]] == [(10, 0, 10.0), (5, 0, 5.0)]
    # exact McNemar: 10 of 10 discordant one way, p = 2 / 2^10; 5 of 5, p = 2 / 2^5; Holm over the two
    assert [t["p"] for t in one["tests"]] == pytest.approx([2 / 2**10, 2 / 2**5])
    assert [t["p_holm"] for t in one["tests"]] == pytest.approx([2 * 2 / 2**10, 2 / 2**5])
    assert one["significant"] == 1 and one["low"] > 0 and one["low"] <= 7.5 <= one["high"]  # 0.0625 is not < 0.05
    pooled = next(c for c in found if c["budget"] == POOLED)
    assert pooled["diff"] == pytest.approx(7.5) and len(pooled["tests"]) == 2


def case(k, arm, against, diff, low, budget=POOLED):
    return {
        "k": k,
        "arm": arm,
        "against": against,
        "budget": budget,
        "diff": diff,
        "low": low,
        "high": diff + 1,
        "tests": [],
        "significant": 0,
    }


@pytest.mark.parametrize(
    ("found", "outcome"),
    [
        ([case(0, "rl", "ilp", 0.35, 0.05)], "rl"),  # beats the ILP at k = 0
        ([case(0, "rl", "ilp", 0.25, 0.05)], "ilp+local"),  # below the margin
        ([case(0, "rl", "ilp", 0.5, -0.01)], "ilp+local"),  # the interval reaches 0
        ([case(5, "rl", c, 0.4, 0.1) for c in ("local", "nearest", "surrogate")], "rl"),
        ([case(5, "rl", c, 0.4, 0.1) for c in ("local", "nearest")], "ilp+local"),  # not all three controls
        ([case(0, "surrogate", "ilp", 0.3, 0.01), case(0, "rl", "ilp", 0.1, -0.2)], "surrogate"),
        ([case(5, "surrogate", c, 0.6, 0.2) for c in ("local", "nearest")], "surrogate"),
        ([case(0, "surrogate", "ilp", 0.3, 0.01), case(0, "rl", "ilp", 0.3, 0.01)], "rl"),  # both: RL earns it
        ([case(0, "rl", "ilp", 0.9, 0.5, budget="latency 0.115")], "ilp+local"),  # the rules read the pooled case
    ],
)
def test_the_decision_rules(found, outcome):
    d = decide(found, RULES)
    assert d["outcome"] == outcome and len(d["items"]) == 4


def test_break_even_by_hand():
    """Local (the ILP at 0) reaches 80.0, 81.0, 82.0 at k = 0, 5, 20. The agent: 81.2 at k = 0 (local needs 20: it
    saves 20), 81.5 at 5 (local 20: saves 15); 90 training evaluations pay after ceil(90 / 20) = 5 budgets. The
    surrogate: 79 at 0 and 80.5 at 5: local reaches both with fewer (0 and 5): it saves nothing, never pays."""
    rows = [
        {"budget": POOLED, "k": 0, "arm": "ilp", "test_top1_mean": 80.0},
        {"budget": POOLED, "k": 5, "arm": "local", "test_top1_mean": 81.0},
        {"budget": POOLED, "k": 20, "arm": "local", "test_top1_mean": 82.0},
        {"budget": POOLED, "k": 0, "arm": "rl", "test_top1_mean": 81.2},
        {"budget": POOLED, "k": 5, "arm": "rl", "test_top1_mean": 81.5},
        {"budget": POOLED, "k": 0, "arm": "surrogate", "test_top1_mean": 79.0},
        {"budget": POOLED, "k": 5, "arm": "surrogate", "test_top1_mean": 80.5},
        {"budget": "x", "k": 0, "arm": "rl", "test_top1_mean": 99.0},  # not pooled: not read
    ]
    training = [{"evaluations": 88}, {"evaluations": 92}]
    rl, sur = break_even(rows, training, [0, 5, 20])
    assert [(o["k"], o["k_local"], o["saved"]) for o in rl["options"]] == [(0, 20, 20), (5, 20, 15)]
    assert rl["training_evaluations"] == 90 and rl["budgets"] == 5
    assert [(o["k"], o["saved"]) for o in sur["options"]] == [(0, 0), (5, 0)] and sur["budgets"] is None
    above = break_even(
        [*rows[:3], {"budget": POOLED, "k": 0, "arm": "rl", "test_top1_mean": 83.0}], training, [0, 5, 20]
    )
    best = above[0]["best"]
    assert best["lower_bound"] and best["saved"] == 20 and above[0]["budgets"] == 5  # local never reaches it


BENCH = ["bench.quick=true"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("bench.parts=[speed]", r"bench.parts=\['speed'\]: give one or both of per_budget, transfer"),
        ("bench.plans.quick.transfer.held_out=[]", "at least 2 training budgets and 1 held-out budget"),
        ("bench.plans.quick.transfer.train=[0.12,0.14]", "each budget once"),  # 0.14 is held out
        ("bench.plans.quick.transfer.evaluations=[0,2]", "evaluations must include 0 and bench.transfer.controls_at=5"),
        ("bench.plans.quick.transfer.kind=size", "kind 'size' is not one of latency, energy"),
        ("bench.plans.quick.transfer.episodes=1", r"episodes must cover a warm start per training budget \(>= 2\)"),
        ("bench.transfer.confidence=1.5", "confidence in \\(0, 1\\)"),
    ],
)
def test_a_bad_transfer_plan_is_one_line(override, message):
    cfg = plain(compose_config("bench", [*BENCH, override]))
    with pytest.raises(HySquantError, match=message):
        Plan.from_mapping(cfg["bench"])


def test_the_plans_as_configured():
    full = Plan.from_mapping(plain(compose_config("bench"))["bench"])
    t = full.transfer
    assert full.parts == ("per_budget", "transfer") and t.key == "latency_ms" and t.evaluations == (0, 5, 20)
    assert len(t.seeds) >= 3 and set(t.train).isdisjoint(t.held_out)
    assert min(t.train) < min(t.held_out) and max(t.held_out) < max(t.train)  # held out between training budgets
    assert t.rules == RULES
    only = Plan.from_mapping(plain(compose_config("bench", ["bench.parts=[per_budget]"]))["bench"])
    assert only.transfer is None
