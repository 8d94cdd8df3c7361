"""The RL search: environment, reward, budgets, outputs, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from envs import HySquantEnv, SearchProblem
from hysquant_rl.allocation import box_mask, proxy_grid
from hysquant_rl.budget import cost_grids, resolve
from hysquant_rl.errors import HySquantError
from hysquant_rl.policy import QuantPolicy, validate
from hysquant_rl.search import run_search
from hysquant_rl.sensitivity import build_lut
from tests.conftest import make_cfg

QUICK = ["search.episodes=10", "agent.warmup_episodes=3", "agent.gradient_steps=2", "search.checkpoint_every=1"]


@pytest.fixture(scope="module")
def lut(digits_pipeline):
    return build_lut(make_cfg("search"), digits_pipeline)


def problem(pipe, lut, **kw) -> SearchProblem:
    mask = lut.mask()
    cfg = make_cfg("search")
    budgets = resolve(cfg.budget, pipe.cost, mask)
    grids, fixed = cost_grids(pipe.cost)
    fields = dict(
        layers=pipe.layers, lut_features=np.concatenate([lut.matrix("top1_drop"), lut.matrix("kl")], axis=1),
        mask=mask, proxy=proxy_grid(lut.configs, lut.matrix("kl")), costs=grids, fixed=fixed,
        reference=budgets.reference, limits=dict(budgets.limits),
        evaluate=lambda bits: pipe.evaluator.evaluate(bits, "search_val").to_dict(),
        fp32=pipe.evaluator.evaluate([(32, 32)] * len(pipe.layers), "search_val").to_dict(),
    )
    fields.update(kw)
    return SearchProblem(**fields)


def test_env_passes_checker(digits_pipeline, lut):
    env = HySquantEnv(problem(digits_pipeline, lut))
    check_env(env, skip_render_check=True)
    assert env.observation_space.shape == (29 + 2 * len(lut.configs),)


def test_reward_equals_formula(digits_pipeline, lut):
    p = problem(digits_pipeline, lut, reward_metric="kl", reward_scale=10.0)
    env = HySquantEnv(p)
    w8a8 = np.full((len(digits_pipeline.layers), 2), 8)
    info = env.finish(w8a8)  # W8A8 misses the 0.6x latency budget: projected first
    assert info["feasible"] and info["totals"]["latency_ms"] <= p.limits["latency_ms"]
    kl = digits_pipeline.evaluator.evaluate(info["bits"], "search_val").kl
    assert info["reward"] == pytest.approx(10.0 * (-kl - 0.0), rel=1e-9)
    # penalty mode keeps the policy and subtracts the weighted relative excess
    p2 = problem(digits_pipeline, lut, reward_metric="top1", reward_scale=0.1, budget_mode="penalty", penalty_weight=5.0)
    info = HySquantEnv(p2).finish(w8a8)
    m = digits_pipeline.evaluator.evaluate(w8a8, "search_val")
    excess = info["totals"]["latency_ms"] / p2.limits["latency_ms"] - 1
    assert np.array_equal(info["bits"], w8a8) and not info["feasible"] and excess > 0
    assert info["reward"] == pytest.approx(0.1 * (m.top1 - p2.fp32["top1"]) - 5.0 * excess, rel=1e-9)


def test_nan_evaluation_is_skipped(digits_pipeline, lut):
    p = problem(digits_pipeline, lut, evaluate=lambda bits: {"top1": float("nan"), "top5": 0.0, "kl": float("nan"), "loss": float("nan")})
    info = HySquantEnv(p).finish(np.full((len(digits_pipeline.layers), 2), 4))
    assert info["skipped"] and np.isfinite(info["reward"]) and not info["feasible"]


def test_actions_map_into_allowed_range(digits_pipeline, lut):
    rng = np.random.default_rng(0)
    n = len(digits_pipeline.layers)
    w_rng = np.stack([rng.integers(2, 6, n), np.full(n, 8)], 1)
    a_rng = np.stack([rng.integers(2, 9, n), np.full(n, 8)], 1)  # pruning raises minima; maxima stay 8
    env = HySquantEnv(problem(digits_pipeline, lut, mask=box_mask(w_rng.tolist(), a_rng.tolist())))
    for l in range(len(digits_pipeline.layers)):
        for a in (0.0, 0.3, 0.7, 1.0):
            w_bits, a_bits = env.to_bits(l, np.array([a, a]))
            assert w_rng[l][0] <= w_bits <= w_rng[l][1] and a_rng[l][0] <= a_bits <= a_rng[l][1]
        for bits in ((w_rng[l][0], a_rng[l][0]), (w_rng[l][1], a_rng[l][1]), (5, 6)):
            expect = (np.clip(bits[0], *w_rng[l]), np.clip(bits[1], *a_rng[l]))
            assert tuple(env.to_bits(l, env.to_action(l, np.array(expect)))) == tuple(expect)
    start = np.stack([np.full(len(w_rng), 6), a_rng[:, 1]], 1)
    warm = HySquantEnv(problem(digits_pipeline, lut, warm_start=start, mask=box_mask(w_rng.tolist(), a_rng.tolist())))
    assert tuple(warm.to_bits(0, np.array([0.5, 0.5]))) == tuple(start[0])  # 0.5 = the warm start
    assert warm.to_bits(0, np.array([1.0, 0.0]))[0] == 8 and warm.to_bits(0, np.array([0.0, 0.0]))[0] == max(4, w_rng[0, 0])


def test_ten_episode_search_and_resume(tmp_path, digits_pipeline):
    out = tmp_path / "run"
    cfg = make_cfg("search", QUICK + ["search.episodes=5"])
    run_search(cfg, out, digits_pipeline)
    state = json.loads((out / "checkpoints" / "state.json").read_text())
    assert state["episodes_done"] == 5 and len(state["history"]) == 5
    first = [e["bits"] for e in state["history"]]
    # resume in the same run directory: continues at episode 5, does not restart from 0
    summary = run_search(make_cfg("search", QUICK + ["resume=true"]), out, digits_pipeline)
    state = json.loads((out / "checkpoints" / "state.json").read_text())
    assert state["episodes_done"] == 10 and [e["bits"] for e in state["history"][:5]] == first
    assert summary["episodes"] == 10
    policy = QuantPolicy.load(out / "best_policy.json")
    validate(policy, digits_pipeline.layers, digits_pipeline.spec.name, digits_pipeline.weights_sha256)
    budget = summary["budgets"]["latency_ms"]
    assert policy.metrics["cost"]["latency_ms"] <= budget and summary["policies"]["best policy"]["holds"]["latency_ms"]
    events = EventAccumulator(str(out / "tb")).Reload()
    assert {"episode/reward", "episode/top1", "best/reward", "episode/latency_ms"} <= set(events.Tags()["scalars"])
    assert len(events.Scalars("episode/reward")) == 10
    for name in ("model_int.pt", "model_fakequant.pt", "summary.md", "lut.csv", "lut_heatmap.png"):
        assert (out / name).exists(), name


def test_warm_start_agent_starts_at_the_warm_start(digits_pipeline, lut):
    """The local-search agent's actor is centred (action 0.5 = the ILP policy) and explores with the sigma asked."""
    from agents.factory import make_agent

    p = problem(digits_pipeline, lut)
    start = np.stack([np.full(p.num_layers, 6), np.full(p.num_layers, 8)], 1)
    p.warm_start = np.clip(start, 2, 8)
    env = HySquantEnv(p)
    agent = make_agent(make_cfg("search").agent, env, p.num_layers, seed=0, local_sigma=0.1)
    obs, _ = env.reset()
    action, _ = agent.predict(obs, deterministic=True)
    assert np.allclose(action, 0.5)
    assert agent.learning_starts == 0 and agent.action_noise.sigma == pytest.approx(0.2)  # SB3 units: 2x [0, 1]
    draws = np.stack([agent.action_noise() for _ in range(600)])  # crosses a 256-draw block
    assert np.abs(draws).max() <= 2 * 0.2 + 1e-6 and 0.08 < draws.std() < 0.2


def test_bad_search_input(tmp_path, digits_pipeline):
    with pytest.raises(HySquantError, match=r"all-minimum-bits policy: set budget.latency_ratio >= 0\.\d+"):
        run_search(make_cfg("search", QUICK + ["budget.latency_ratio=0.05"]), tmp_path / "a", digits_pipeline)
    with pytest.raises(HySquantError, match="holds no checkpoint"):
        run_search(make_cfg("search", QUICK + ["resume=true"]), tmp_path / "b", digits_pipeline)
    with pytest.raises(HySquantError, match=r"search.proxy='loss' is unknown: use one of kl, top1_drop"):
        run_search(make_cfg("search", ["search.method=ilp", "search.proxy=loss"]), tmp_path / "c", digits_pipeline)


@pytest.mark.parametrize(("method", "proxy"), [("uniform", "kl"), ("greedy", "kl"), ("ilp", "kl"), ("ilp", "top1_drop"), ("random", "kl")])
def test_baseline_methods(tmp_path, digits_pipeline, method, proxy):
    from hysquant_rl.allocation import solve_ilp

    overrides = [f"search.method={method}", f"search.proxy={proxy}", "search.episodes=4"]
    summary = run_search(make_cfg("search", overrides), tmp_path, digits_pipeline)
    policy = QuantPolicy.load(tmp_path / "best_policy.json")
    bits = np.array(policy.bits())
    assert policy.provenance["method"] == method
    assert summary["policies"]["best policy"]["holds"]["latency_ms"]
    assert policy.metrics["cost"]["latency_ms"] <= summary["budgets"]["latency_ms"]
    if method == "uniform":
        assert (bits == bits[0]).all() and summary["episodes"] >= 1
    if method == "random":
        assert summary["episodes"] == 4
    if method == "ilp":
        lut = build_lut(make_cfg("search"), digits_pipeline)
        grids, fixed = cost_grids(digits_pipeline.cost)
        limits = {k: v - fixed[k] for k, v in summary["budgets"].items() if k in grids}
        assert np.array_equal(bits, solve_ilp(proxy_grid(lut.configs, lut.matrix(proxy)), lut.mask(), grids, limits))
    if method == "greedy":
        assert not (bits == bits[0]).all()  # lowered layer by layer, not uniformly
