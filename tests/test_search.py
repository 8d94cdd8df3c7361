"""The RL search: environment, reward, budgets, outputs, resume."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from agents.storage import read_checkpoint
from envs import HySquantEnv
from hysquant_rl.apps.search import run_search
from hysquant_rl.bits import grid_sum, to_bits, to_index
from hysquant_rl.errors import HySquantError
from hysquant_rl.lut.build import build_lut
from hysquant_rl.policy import QuantPolicy, validate
from hysquant_rl.prune import box_mask
from hysquant_rl.search.allocation import MIP_REL_GAP, proxy_grid, solve_ilp
from hysquant_rl.search.budget import resolve, within
from hysquant_rl.search.problem import SearchProblem, build_problem
from hysquant_rl.units import KINDS
from tests.conftest import run_settings, search_settings
from tests.formats import missing_keys

PARTS = ("agent.pt", "episodes.npz", "replay_buffer.npz", "state.json")
QUICK = ["search.episodes=10", "agent.warmup_episodes=3", "agent.gradient_steps=2", "search.checkpoint_every=1"]


@pytest.fixture(scope="module")
def lut(digits_pipeline):
    return build_lut(run_settings("search"), digits_pipeline)


def problem(pipe, lut, **kw) -> SearchProblem:
    """The run's problem, built by the same code as ``hysquant-search``, with ``kw`` replacing fields."""
    search = search_settings()
    budgets = resolve(search.budget, pipe.cost, lut.mask())
    return dataclasses.replace(build_problem(search, pipe, lut, budgets), **kw)


def test_env_passes_checker(digits_pipeline, lut):
    env = HySquantEnv(problem(digits_pipeline, lut))
    check_env(env, skip_render_check=True)
    assert env.observation_space.shape == (20 + len(KINDS) + 2 * len(lut.configs),)


def test_reward_equals_formula(digits_pipeline, lut):
    p = problem(digits_pipeline, lut, reward_metric="kl", reward_scale=10.0)
    env = HySquantEnv(p)
    w8a8 = np.full((len(digits_pipeline.units), 2), 8)
    info = env.problem.finish(w8a8)  # W8A8 misses the 0.6x energy budget: projected first
    assert info["feasible"] and info["totals"]["energy_mj"] <= p.limits["energy_mj"]
    kl = digits_pipeline.evaluator.evaluate(info["bits"], "search_val").kl
    assert info["reward"] == pytest.approx(10.0 * (-kl - 0.0), rel=1e-9)
    # penalty mode keeps the policy and subtracts the weighted relative excess
    p2 = problem(
        digits_pipeline, lut, reward_metric="top1", reward_scale=0.1, budget_mode="penalty", penalty_weight=5.0
    )
    info = p2.finish(w8a8)
    m = digits_pipeline.evaluator.evaluate(w8a8, "search_val")
    excess = info["totals"]["energy_mj"] / p2.limits["energy_mj"] - 1
    assert np.array_equal(info["bits"], w8a8) and not info["feasible"] and excess > 0
    assert info["reward"] == pytest.approx(0.1 * (m.top1 - p2.fp32["top1"]) - 5.0 * excess, rel=1e-9)


def test_nan_evaluation_is_skipped(digits_pipeline, lut):
    p = problem(
        digits_pipeline,
        lut,
        evaluate=lambda bits: {"top1": float("nan"), "top5": 0.0, "kl": float("nan"), "loss": float("nan")},
    )
    info = p.finish(np.full((len(digits_pipeline.units), 2), 4))
    assert info["skipped"] and np.isfinite(info["reward"]) and not info["feasible"]


def test_actions_map_into_allowed_range(digits_pipeline, lut):
    rng = np.random.default_rng(0)
    n = len(digits_pipeline.units)
    w_rng = np.stack([rng.integers(2, 6, n), np.full(n, 8)], 1)
    a_rng = np.stack([rng.integers(2, 9, n), np.full(n, 8)], 1)  # pruning raises minima; maxima stay 8
    mask = box_mask(w_rng.tolist(), a_rng.tolist())  # the integer ranges, and FP32 on either operand
    env = HySquantEnv(problem(digits_pipeline, lut, mask=mask))
    tied = env.problem.tied  # activation-only units: w follows a
    for l in range(len(digits_pipeline.units)):
        for a in (0.0, 0.3, 0.7, 1.0):
            i = to_index(env.to_bits(l, np.array([a, a])))
            assert mask[l, i[0], i[1]]
        assert tuple(env.to_bits(l, np.array([1.0, 1.0]))) == (32, 32)  # the top of every range: FP32
        if tied[l]:
            continue
        assert tuple(env.to_bits(l, np.array([0.0, 0.0]))) == (w_rng[l][0], a_rng[l][0])
        for bits in ((w_rng[l][0], a_rng[l][0]), (w_rng[l][1], a_rng[l][1]), (5, 6), (32, 8), (32, 32)):
            expect = tuple(b if b == 32 else int(np.clip(b, *r)) for b, r in zip(bits, (w_rng[l], a_rng[l])))
            assert tuple(env.to_bits(l, env._actions(np.array([expect]), np.array([l]))[0])) == expect
    start = np.stack([np.full(len(w_rng), 6), a_rng[:, 1]], 1)
    warm = HySquantEnv(problem(digits_pipeline, lut, warm_start=start, mask=box_mask(w_rng.tolist(), a_rng.tolist())))
    assert tuple(warm.to_bits(0, np.array([0.5, 0.5]))) == tuple(start[0])  # 0.5 = the warm start
    assert warm.to_bits(0, np.array([1.0, 0.0]))[0] == 8 and warm.to_bits(0, np.array([0.0, 0.0]))[0] == max(
        4, w_rng[0, 0]
    )


def checkpoint_state(out):
    """The search state of the checkpoint set a run directory's manifest names."""
    folder, episodes = read_checkpoint(out / "checkpoints")
    state = json.loads((folder / "state.json").read_text())
    assert state["episodes_done"] == episodes and sorted(p.name for p in folder.iterdir()) == sorted(PARTS)
    return state


def test_ten_episode_search_and_resume(tmp_path, digits_pipeline):
    out = tmp_path / "run"
    both = ["budget.latency_ratio=1.0"]  # a latency budget beside the default energy one (the digits model is
    # launch-bound: 1.0x W8A8 is about all the room there is), so best_policy.json keeps its latency_ms key
    run_search(run_settings(), search_settings(QUICK + both + ["search.episodes=5"]), out, digits_pipeline)
    state = checkpoint_state(out)
    assert state["episodes_done"] == 5 and len(state["history"]) == 5
    first = [e["bits"] for e in state["history"]]
    # resume in the same run directory: continues at episode 5, does not restart from 0
    summary = run_search(run_settings(), search_settings(QUICK + both + ["resume=true"]), out, digits_pipeline)
    state = checkpoint_state(out)
    assert state["episodes_done"] == 10 and [e["bits"] for e in state["history"][:5]] == first
    assert summary["episodes"] == 10
    policy = QuantPolicy.load(out / "best_policy.json")
    validate(policy, digits_pipeline.units, digits_pipeline.spec.name, digits_pipeline.weights_sha256)
    budget = summary["budgets"]["energy_mj"]
    assert policy.metrics["cost"]["energy_mj"] <= budget and summary["policies"]["best policy"]["holds"]["energy_mj"]
    events = EventAccumulator(str(out / "tb")).Reload()
    assert {"episode/reward", "episode/top1", "best/reward", "episode/latency_ms"} <= set(events.Tags()["scalars"])
    assert len(events.Scalars("episode/reward")) == 10
    histograms = {"policy/w_bits", "policy/a_bits", "policy/a_bits/attention-qk", "policy/a_bits/layernorm-in"}
    assert histograms <= set(events.Tags()["histograms"])
    # weight bits count the quantized weights of the units that have one (FP32 ones: episode/fp32_fraction); every
    # activation-only kind has its own histogram of its quantized units
    last = events.Histograms("policy/w_bits")[-1].histogram_value
    bits = np.array(state["history"][-1]["bits"])
    weighted = np.array([l.weighted for l in digits_pipeline.units])
    assert last.num == (weighted & (bits[:, 0] != 32)).sum() and last.max <= 8
    pv = np.array([l.kind == "attention-pv" for l in digits_pipeline.units])
    assert events.Histograms("policy/a_bits/attention-pv")[-1].histogram_value.num == (pv & (bits[:, 1] != 32)).sum()
    for name in ("model_int.pt", "model_fakequant.pt", "summary.md", "lut.csv", "lut_heatmap.png"):
        assert (out / name).exists(), name
    for kind, name in (("best_policy", "best_policy.json"), ("summary", "summary.json"), ("lut", "lut.json")):
        assert not missing_keys(out / name, kind), f"{name} lost keys of its format"


def test_warm_start_agent_starts_at_the_warm_start(digits_pipeline, lut):
    """The local-search agent's actor is centred (action 0.5 = the ILP policy) and explores with the sigma asked."""
    from agents.factory import make_agent

    p = problem(digits_pipeline, lut)
    start = np.stack([np.full(p.num_units, 6), np.full(p.num_units, 8)], 1)
    p.warm_start = np.clip(start, 2, 8)
    env = HySquantEnv(p)
    agent = make_agent(search_settings().agent, env, p.num_units, seed=0, local_sigma=0.1)
    obs, _ = env.reset()
    action, _ = agent.predict(obs, deterministic=True)
    assert np.allclose(action, 0.5)
    assert agent.learning_starts == 0 and agent.action_noise.sigma == pytest.approx(0.2)  # SB3 units: 2x [0, 1]
    draws = np.stack([agent.action_noise() for _ in range(600)])  # crosses a 256-draw block
    assert np.abs(draws).max() <= 2 * 0.2 + 1e-6 and 0.08 < draws.std() < 0.2


def test_callback_copies_the_episode_reward_onto_every_transition(digits_pipeline, lut):
    """HAQ's reward copy: every transition of an episode carries the episode's terminal reward (the environment
    returned 0 at its intermediate steps), only the last one is terminal, and the stored actions are those of the
    policy the episode evaluated (after the budget projection), not what the actor chose."""
    from agents.callbacks import EpisodeStore, SearchCallback
    from agents.factory import make_agent

    p = problem(digits_pipeline, lut)
    env = HySquantEnv(p)
    settings = dataclasses.replace(search_settings().agent, gradient_steps=0, warmup_episodes=0)
    agent = make_agent(settings, env, p.num_units, seed=0)
    rewards, checkpoints, evaluated = [], [], []
    store = EpisodeStore(HySquantEnv(p).trajectory, normalize=False)

    def on_episode(info):
        rewards.append(info["reward"])
        evaluated.append(info["bits"])

    callback = SearchCallback(p.num_units, on_episode, lambda: checkpoints.append(1), 2, store)
    agent.learn(4 * p.num_units, callback=callback)
    buf, n = agent.replay_buffer, p.num_units
    assert len(rewards) == 4 and all(r != 0.0 for r in rewards) and len(checkpoints) == 2  # after episodes 2, 4
    expected = np.repeat(np.asarray(rewards, dtype=np.float32)[:, None], n, axis=1)
    np.testing.assert_array_equal(buf.rewards[: 4 * n, 0].reshape(4, n), expected)
    done = buf.dones[: 4 * n, 0].reshape(4, n)
    assert (done[:, -1] == 1).all() and (done[:, :-1] == 0).all()
    for k, bits in enumerate(evaluated):
        stored = agent.policy.unscale_action(buf.actions[k * n : (k + 1) * n, 0])
        assert all((env.to_bits(l, stored[l]) == bits[l]).all() for l in range(n))
    # standardised: the same episodes minus their median, over 1.4826 x their median absolute deviation, clipped
    store.normalize = True
    store.store(agent, [(evaluated[-1], rewards[-1])])  # re-stores the last episode: the buffer is standardised
    r = np.asarray(rewards)
    med = np.median(r)  # hand arithmetic over the 4 episodes (each episode's n transitions weigh the same)
    mad = np.median(np.abs(r - med))
    np.testing.assert_allclose(
        buf.rewards[: 4 * n, 0].reshape(4, n),
        np.repeat(np.clip((r - med) / (1.4826 * mad), -5, 5)[:, None], n, 1),
        rtol=1e-5,
    )
    assert (buf.rewards[4 * n :] == 0).all()  # nothing written past the stored episodes


def pareto_optimum(objective, mask, cost, limit, bound) -> float:
    """The exact minimum of the summed ``objective`` over one allowed pair per layer with the summed ``cost`` within
    ``limit``, among policies whose objective is at most ``bound`` (inf when there is none): dynamic programming over
    the Pareto front (cost, objective) of every prefix of layers. An oracle independent of the MILP solver. A prefix
    is dropped when even the cheapest (or the best) completion would cross ``limit`` (or ``bound``)."""
    steps = [np.stack([cost[l][mask[l]], objective[l][mask[l]]], axis=1) for l in range(len(mask))]
    rest = np.zeros((len(steps) + 1, 2))  # the cheapest cost and the best objective of layers l..L-1
    for l in range(len(steps) - 1, -1, -1):
        rest[l] = rest[l + 1] + steps[l].min(axis=0)
    front = np.zeros((1, 2))
    for l, step in enumerate(steps):
        cand = (front[:, None, :] + step[None]).reshape(-1, 2)
        cand = cand[(cand[:, 0] + rest[l + 1, 0] <= limit) & (cand[:, 1] + rest[l + 1, 1] <= bound)]
        cand = cand[np.lexsort((cand[:, 1], cand[:, 0]))]
        cheaper_best = np.minimum.accumulate(np.r_[np.inf, cand[:-1, 1]])
        front = cand[cand[:, 1] < cheaper_best]  # strictly better than every cheaper prefix
    return float(front[:, 1].min()) if len(front) else float("inf")


def test_bad_search_input(tmp_path, digits_pipeline):
    run = run_settings()
    with pytest.raises(HySquantError, match=r"cheapest allowed policy: set budget.latency_ratio >= 0\.\d+"):
        run_search(run, search_settings(QUICK + ["budget.latency_ratio=0.05"]), tmp_path / "a", digits_pipeline)
    with pytest.raises(HySquantError, match="holds no checkpoint"):
        run_search(run, search_settings(QUICK + ["resume=true"]), tmp_path / "b", digits_pipeline)
    with pytest.raises(HySquantError, match=r"search.proxy='loss' is unknown: use one of kl, top1_drop"):
        search_settings(["search.method=ilp", "search.proxy=loss"])
    with pytest.raises(
        HySquantError, match=r"unknown search.method='annealing': use one of uniform, greedy, ilp, random, local"
    ):
        run_search(run, search_settings(["search.method=annealing"]), tmp_path / "d", digits_pipeline)


@pytest.mark.parametrize(
    ("method", "proxy"), [("uniform", "kl"), ("greedy", "kl"), ("ilp", "kl"), ("ilp", "top1_drop"), ("random", "kl")]
)
def test_baseline_methods(tmp_path, digits_pipeline, lut, method, proxy):
    # uniform: a budget a uniform pair meets whatever the pruning rules left of the low bits (a retrained model may
    # keep its stem at 8 bits); the others search the default energy budget
    looser = ["budget.energy_ratio=1.0"] if method == "uniform" else []
    search = search_settings([f"search.method={method}", f"search.proxy={proxy}", "search.episodes=4", *looser])
    summary = run_search(run_settings(), search, tmp_path, digits_pipeline)
    policy = QuantPolicy.load(tmp_path / "best_policy.json")
    bits = np.array(policy.bits())
    assert policy.provenance["method"] == method
    assert summary["policies"]["best policy"]["holds"]["energy_mj"]
    assert policy.metrics["cost"]["energy_mj"] <= summary["budgets"]["energy_mj"]
    if method == "uniform":  # one (w, a) on every layer; an activation-only unit takes the a
        weighted = np.array([l.weighted for l in digits_pipeline.units])
        assert (bits[weighted] == bits[0]).all() and (bits[~weighted] == bits[0, 1]).all()
        # brute force: the pairs every unit allows whose uniform policy meets the budget (the cost model's totals),
        # with no such pair above on either operand, are the candidates: one episode each
        mask, limit = lut.mask(), summary["budgets"]["energy_mj"]
        rows = np.arange(len(weighted))

        def uniform(i, j):  # grid indices; an activation-only unit's cell is (j, j)
            return np.where(weighted[:, None], [i, j], [j, j])

        grid = [(i, j) for i in range(mask.shape[1]) for j in range(mask.shape[2])]
        cells = [(i, j) for i, j in grid if mask[rows, uniform(i, j)[:, 0], uniform(i, j)[:, 1]].all()]
        ok = {
            (i, j)
            for i, j in cells
            if digits_pipeline.cost.policy_cost(to_bits(uniform(i, j))).totals()["energy_mj"] <= limit * (1 + 1e-9)
        }
        frontier = [(i, j) for i, j in ok if (i + 1, j) not in ok and (i, j + 1) not in ok]
        assert len(summary["rounds"]) == 1 and summary["episodes"] == len(frontier) >= 1
    if method == "random":
        assert summary["episodes"] == 4
    if method == "ilp":  # the MILP's policy is optimal: checked by an exact dynamic program, not by the solver
        p = problem(digits_pipeline, lut, proxy=proxy_grid(lut.configs, lut.matrix(proxy)))
        limit = p.unit_limits()["energy_mj"]
        # the MILP optimises the additive grids (a unit priced as if its consumer quantizes its input); the episode
        # then fits its policy to the exact totals (a unit before an FP32 one writes float): the policy evaluated
        ilp = solve_ilp(p.proxy, p.mask, p.costs, p.unit_limits())
        p.exact_totals = lambda b: digits_pipeline.cost.policy_cost(b).totals()
        assert np.array_equal(bits, p.fitted(ilp))
        bits = ilp
        found = grid_sum(p.proxy, bits)
        assert grid_sum(p.costs["energy_mj"], bits) <= limit * (1 + 1e-9)
        # no policy within the budget beats it by more than the solver's gap (the search is bounded by its value)
        optimum = pareto_optimum(p.proxy, p.mask, p.costs["energy_mj"], limit * (1 + 1e-9), found * (1 + 1e-9))
        assert optimum * (1 - 1e-9) <= found <= optimum * (1 + MIP_REL_GAP) + 1e-15
    if method == "greedy":
        assert not (bits == bits[0]).all()  # lowered layer by layer, not uniformly


def test_parallel_episodes_on_ray(tmp_path, digits_pipeline, lut):
    """search.workers=2: two Ray actors, each holding the calibrated model, evaluate the agent's episodes two at a
    time; the run ends with as many episodes and evaluated policies as one worker's, each episode a new policy."""
    from hysquant_rl.apps.search import make_method
    from hysquant_rl.lut.executor import RayExecutor
    from hysquant_rl.search.loop import search

    run = dataclasses.replace(run_settings("search"), threads=1)  # each actor on one of the two cores
    found, remote = {}, 0
    for workers in (1, 2):
        settings = search_settings(QUICK + ["search.episodes=7", f"search.workers={workers}"])
        executor = RayExecutor(run, workers) if workers > 1 else None
        try:
            found[workers] = search(
                settings, digits_pipeline, lut, tmp_path / str(workers), make_method, log_lut=False, executor=executor
            )
        finally:
            if executor is not None:
                remote = executor.evaluations
                executor.close()
    for result in found.values():
        assert len(result.recorder.history) == 7 and len(result.problem.cache) == 7
        assert not any(e["cached"] for e in result.recorder.history)
    assert remote == 6  # the warm-start episode runs in the driver, the other six on the actors


def test_candidates_are_new_allowed_and_near(digits_pipeline, lut):
    """SearchProblem.candidates: a new chosen policy comes first, unchanged; one evaluated already (or taken by
    another parallel episode) gives way to neighbours that are new, allowed, within the budgets, and a few steps
    away."""
    from hysquant_rl.bits import to_index
    from hysquant_rl.search.problem import policy_key

    p = problem(digits_pipeline, lut)
    rng = np.random.default_rng(0)
    chosen = np.full((p.num_units, 2), 8)
    fitted = p.fitted(chosen)
    found, repeat = p.candidates(chosen, rng, k=3)
    assert np.array_equal(found[0], fitted) and not repeat and len(found) == 3
    p.cache[policy_key(fitted)] = {"top1": 0.0}
    seen = {policy_key(fitted)}
    found, repeat = p.candidates(chosen, rng, k=5, taken={policy_key(found[1])})
    assert repeat and len(found) == 5 and len({policy_key(b) for b in found}) == 5
    for bits in found:
        assert policy_key(bits) not in seen and policy_key(bits) not in p.cache
        assert p.mask[np.arange(p.num_units), to_index(bits[:, 0]), to_index(bits[:, 1])].all()
        assert all(within(p.totals(bits), p.limits).values())
        assert 0 < np.abs(bits - fitted).sum() <= 12  # moved, locally (projection may lower a few units)


def test_critic_picks_among_new_candidates(digits_pipeline, lut):
    """ParallelEpisodes: with a scorer, an episode evaluates the best-scored of the new candidates it was given;
    without one, the policy its actions chose."""
    from envs import ParallelEpisodes

    p = problem(digits_pipeline, lut)
    env = ParallelEpisodes(p, 1, seed=0, candidates=4)
    seen = []

    def scorer(policies):
        seen.append(policies)
        return np.array([-np.sum(b) for b in policies])  # fewest bits first: a hand-checkable order

    action = np.full((1, 2), 0.9, dtype=np.float32)
    for use in (None, scorer):
        env.scorer = use
        env.reset()
        for _ in range(p.num_units):
            _, _, done, infos = env.step(action)
        assert done[0]
        chosen, bits = infos[0]["chosen"], infos[0]["bits"]
        if use is None:
            assert np.array_equal(bits, p.fitted(chosen))
        else:
            offered = seen[-1]
            assert 1 < len(offered) <= 4 and min(np.sum(b) for b in offered) == np.sum(bits)
            assert any(np.array_equal(bits, b) for b in offered)


def test_warm_start_moves_to_the_best_policy(tmp_path, digits_pipeline, lut):
    """Elitism: after the search, the warm start (the centre of the agent's offsets) is the best policy found within
    the budgets, and every stored episode's actions are offsets from it (the buffer was rewritten)."""
    from agents.rl import RLSearch
    from hysquant_rl.search.budget import resolve as resolve_budgets
    from hysquant_rl.search.recorder import Recorder

    settings = search_settings(QUICK + ["search.episodes=8"])
    p = problem(digits_pipeline, lut)
    budgets = resolve_budgets(settings.budget, digits_pipeline.cost, lut.mask())
    recorder = Recorder(digits_pipeline, tmp_path, "rl", 0, budgets)
    method = RLSearch(settings, p, recorder, tmp_path)
    best = method.run(p.limits)
    assert np.array_equal(p.warm_start, p.canonical(best))
    # brute force over what was evaluated, costs from the cost model: the best is the top-rewarded policy in budget
    in_budget = [
        e
        for e in recorder.history
        if not e["skipped"]
        and all(
            v <= p.limits[k] * (1 + 1e-9)
            for k, v in digits_pipeline.cost.policy_cost(np.array(e["bits"])).totals().items()
            if k in p.limits
        )
    ]
    top = max(in_budget, key=lambda e: e["reward"])
    assert np.array_equal(best, np.array(top["bits"])) and recorder.best["reward"] == top["reward"]
    buf, env = method.agent.replay_buffer, method.single
    for (start, column), bits in method.store.episodes.items():
        idx = (start + np.arange(p.num_units)) % buf.buffer_size
        stored = method.agent.policy.unscale_action(buf.actions[idx, column])
        offsets = np.array([env.to_bits(l, stored[l]) for l in range(p.num_units)])
        near = np.abs(bits - p.warm_start) <= p.offset_range  # inside the offset range the buffer is exact
        assert (offsets[near] == bits[near]).all()


@pytest.mark.parametrize("method", ["ilp", "local"])
def test_max_drop_answers_the_dual_question(tmp_path, digits_pipeline, lut, method):
    """``budget.max_drop``: the cheapest policy (energy here) whose search-val top-1 is at most the drop below FP32's;
    on digits the 4-bit units that cost nothing make it cheaper than uniform W8A8, and the summary states the
    question and the floor."""
    pipe = digits_pipeline
    n = len(pipe.units)
    fp32 = pipe.evaluator.evaluate(np.full((n, 2), 32), "search_val").top1
    extra = ["search.episodes=6"] if method == "local" else []
    search = search_settings(
        [f"search.method={method}", "budget=accuracy", "budget.max_drop=1.0", "budget.minimize=energy", *extra]
    )
    summary = run_search(run_settings(), search, tmp_path, pipe)
    best = summary["policies"]["best policy"]
    assert best["search_val"]["top1"] >= fp32 - 1.0 - 1e-9
    assert summary["question"]["max_drop"] == 1.0 and summary["question"]["minimize"] == "energy"
    assert summary["budgets"]["min_top1"] == pytest.approx(fp32 - 1.0)
    w8a8 = pipe.cost.policy_cost(np.full((n, 2), 8)).totals()["energy_mj"]
    assert best["cost"]["energy_mj"] < w8a8
    assert "The dual question: the lowest energy" in (tmp_path / "summary.md").read_text()


def test_max_drop_is_refused_for_methods_that_do_not_answer_it():
    with pytest.raises(HySquantError, match=r"budget.max_drop is answered by search.method=ilp, local, rl"):
        search_settings(["search.method=greedy", "budget=accuracy"])
