"""The budget-conditioned agent and its controls: conditioning features, swap moves, training over budgets, the
artefact (saved as data, loaded back, refused when made for something else), answering with k = 0 and k > 0, the
surrogate and the reuse of the nearest training budget. Small synthetic problems whose truth is a formula, checked
against hand arithmetic and brute force."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.conditioned import ConditionedAgent, Target, train_agent
from agents.storage import load_agent, save_agent
from envs import HySquantEnv
from envs.hysquant_env import CONDITION_FEATURES
from hysquant_rl.bits import GRID, to_index
from hysquant_rl.errors import HySquantError
from hysquant_rl.prune import box_mask
from hysquant_rl.search.baselines import LocalSearch
from hysquant_rl.search.problem import policy_key
from hysquant_rl.search.surrogate import MIN_BETA, Surrogate, SurrogateSearch, evaluated, trust_region
from tests.conftest import search_settings
from tests.test_controls import BITS, Log, brute_force, misjudged, synthetic

SEARCH = search_settings(
    ["search.method=rl-cond", "agent.warmup_episodes=2", "agent.gradient_steps=3", "search.candidates=4"]
)
W8A8_ENERGY = 48.0  # misjudged(): 6 units, energy = w bits, so uniform W8A8 costs 48 and the cheapest (w 3) 18


def problem(limit: float = 30.0):
    """misjudged()'s problem (6 units, w 3..8, energy = w, units 2 and 3 ten times as sensitive as the LUT says) at
    an energy limit, with uniform W8A8 as the reference of the budget fractions."""
    p, true = misjudged()
    ref = {"latency_ms": 1.0, "energy_mj": W8A8_ENERGY, "size_mb": 1.0}
    return dataclasses.replace(p, limits={"energy_mj": limit}, reference=ref), true


def fraction(limit: float) -> float:
    return (limit - 18.0) / (W8A8_ENERGY - 18.0)


# -- the conditioned observation -------------------------------------------------------------------------------
def test_conditioning_features_by_hand():
    p, _ = problem(24.0)  # fraction (24 - 18) / (48 - 18) = 0.2
    p.warm_start = np.array([[5, 8], [6, 8], [4, 8], [5, 8], [3, 8], [8, 8]])
    plain, cond = HySquantEnv(p), HySquantEnv(p, condition=True)
    assert (
        cond.observation_space.shape[0]
        == plain.observation_space.shape[0] + CONDITION_FEATURES
        == (plain.observation_space.shape[0] + 8)
    )
    bits = p.warm_start.copy()
    obs, nxt, _ = cond.trajectory(bits)
    extra = obs[:, -CONDITION_FEATURES:]
    scale = [(math.log10(1.0) + 3) / 6, (math.log10(W8A8_ENERGY) + 3) / 6, (math.log10(1.0) + 3) / 6]
    np.testing.assert_allclose(extra[:, :6], np.tile([0.0, 0.2, 0.0, *scale], (6, 1)), rtol=1e-6)
    np.testing.assert_allclose(extra[:, 6:], to_index(bits) / 7, rtol=1e-6)  # the centre at each unit
    # the plain features are the same in both; the energy budget's pair: committed / limit, cheapest rest / limit
    np.testing.assert_array_equal(obs[:, :-CONDITION_FEATURES], plain.trajectory(bits)[0])
    energy = plain._static.shape[1] + 2 + 2  # after the static features, the previous action and latency's pair
    used = np.array([0, 5, 11, 15, 20, 23])  # w bits committed before each unit
    rest = 3.0 * np.arange(6, 0, -1)  # 3 bits per remaining unit
    np.testing.assert_allclose(obs[:, energy], np.minimum(used / 24, 1), rtol=1e-6)
    np.testing.assert_allclose(obs[:, energy + 1], np.minimum(rest / 24, 1), rtol=1e-6)
    assert nxt[-1, energy] == pytest.approx(1.0) and nxt[-1, energy + 1] == pytest.approx(3 / 24)
    # a looser budget moves the fraction (clipped at 1 above W8A8), nothing else of the extra features
    p.limits = {"energy_mj": 60.0}
    assert cond.trajectory(bits)[0][0, -8:-2].tolist() == pytest.approx([0.0, 1.0, 0.0, *scale])


def test_trajectory_is_what_stepping_the_episode_sees():
    """The trajectory is computed at once; stepping the environment through the same choices (its own cost and
    previous-action bookkeeping) sees the same observations."""
    p, _ = problem(27.0)
    p.warm_start = np.full((6, 2), 8)
    p.warm_start[:, 0] = [5, 4, 6, 5, 4, 3]
    for condition in (False, True):
        env = HySquantEnv(p, condition=condition)
        bits = p.warm_start.copy()
        bits[:, 0] += [1, -1, 0, 2, -1, 1]
        obs, nxt, actions = env.trajectory(bits)
        seen, _ = env.reset()
        rows = [seen]
        for l in range(p.num_units - 1):
            seen, *_ = env.step(actions[l])
            rows.append(seen)
        np.testing.assert_array_equal(np.stack(rows), obs)
        np.testing.assert_array_equal(obs[1:], nxt[:-1])
        assert env.ending(actions[-1]).tolist() == bits.tolist()  # the actions choose these bits back


def test_swap_moves_stay_within_the_budget():
    """At a binding budget a swap raises one unit a bit and lowers another: every candidate spends the budget exactly
    (here 20 = 4 units x 5 bits), where a plain step down would leave a bit unused."""
    mask = box_mask([(3, 8)] * 4, [(8, 8)] * 4, fp32=False)
    cost = np.zeros((4, GRID, GRID))
    cost[:] = BITS[:, None]
    p = synthetic([1e-3] * 4, lambda b: 0.0, mask, cost, 20.0)
    chosen = np.array([[5, 8]] * 4)
    p.cache[policy_key(chosen)] = {}  # evaluated: only neighbours come back
    p.swap_moves = True
    found, repeat = p.candidates(chosen, np.random.default_rng(0), k=6)
    assert repeat and len(found) == 6
    for bits in found:  # some units a bit up, as many a bit down: the budget spent to the bit
        assert bits[:, 0].sum() == 20 and (bits[:, 0] > 5).any() and (bits[:, 0] < 5).any()
    p.swap_moves = False  # plain steps: a step down leaves budget unused (a step up is projected back down)
    found, _ = p.candidates(chosen, np.random.default_rng(0), k=6)
    assert min(b[:, 0].sum() for b in found) < 20 and all(b[:, 0].sum() <= 20 for b in found)


# -- training, answering, the artefact ------------------------------------------------------------------------
TRAIN = [{"energy_mj": 27.0}, {"energy_mj": 33.0}]  # fractions 0.3 and 0.5


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    p, true = problem(27.0)
    agent = train_agent(SEARCH, p, TRAIN, 8)
    folder = save_agent(agent, tmp_path_factory.mktemp("artefact") / "agent")
    return agent, folder, p


def test_training_starts_at_each_budgets_ilp_and_cycles_over_the_budgets(trained):
    agent, _, p = trained
    h = agent.history
    assert len(h) == 8 and len(p.cache) >= 7  # one evaluation per episode (a repeat at most)
    assert [e["budget"] for e in h[:2]] == [0, 1] and all(e["advantage"] == 0.0 for e in h[:2])
    assert all(sorted(e["budget"] for e in h[i : i + 2]) == [0, 1] for i in (2, 4, 6))  # each budget once a cycle
    for limits, target in zip(TRAIN, agent.targets):
        # the centre is the integer program's policy over the LUT's proxy (brute force), the baseline its reward
        optimum = brute_force(
            dataclasses.replace(p, limits=limits),
            lambda b: p.proxy[np.arange(6), to_index(b)[..., 0], to_index(b)[..., 1]].sum(-1),
        )[1]
        assert target.centre.tolist() == optimum.tolist()
        assert target.fraction == pytest.approx(fraction(limits["energy_mj"]))
        assert target.baseline == pytest.approx(-p.reward_scale * p.metrics(optimum)["kl"])
    # advantages are rewards over the budget's baseline
    for e in h[2:]:
        assert e["advantage"] == pytest.approx(e["reward"] - agent.targets[e["budget"]].baseline)


def test_baseline_and_nearest_budget_by_hand():
    agent = ConditionedAgent(SEARCH, problem(30.0)[0], SEARCH.agent)
    centre = np.full((6, 2), 5)
    a = Target({"energy_mj": 25.5}, 0.25, centre, -1.0)
    b = Target({"energy_mj": 40.5}, 0.75, centre, -0.2)
    agent.targets = [b, a]  # in any order
    assert agent.baseline(0.5) == pytest.approx(-0.6) and agent.baseline(0.375) == pytest.approx(-0.8)
    assert agent.baseline(0.1) == -1.0 and agent.baseline(0.9) == -0.2  # the nearest beyond them
    assert agent.nearest(0.4) is a and agent.nearest(0.6) is b and agent.nearest(0.5) is a  # a tie: the tighter


def test_the_artefact_is_data_and_loads_back_the_same_agent(trained):
    agent, folder, _ = trained
    assert sorted(x.name for x in folder.iterdir()) == ["agent.json", "agent.pt", "episodes.npz", "replay_buffer.npz"]
    torch.load(folder / "agent.pt", weights_only=True)  # tensors only
    np.load(folder / "replay_buffer.npz", allow_pickle=False)
    p, _ = problem(30.0)
    loaded = load_agent(folder, SEARCH, p)
    for mine, theirs in zip(agent.model.policy.state_dict().values(), loaded.model.policy.state_dict().values()):
        assert torch.equal(mine, theirs)
    rows = agent.model.replay_buffer.pos
    np.testing.assert_array_equal(
        agent.model.replay_buffer.observations[:rows], loaded.model.replay_buffer.observations[:rows]
    )
    assert [t.to_dict() for t in loaded.targets] == [t.to_dict() for t in agent.targets]
    assert loaded.history == agent.history


def test_answer_with_no_evaluation_and_with_k(trained):
    agent, folder, _ = trained
    p, _ = problem(30.0)
    loaded = load_agent(folder, SEARCH, p)
    greedy, infos = loaded.answer({"energy_mj": 30.0}, 0)
    assert infos == [] and not p.cache  # k = 0: no evaluation at all
    assert greedy[:, 0].sum() <= 30 and p.mask[np.arange(6), to_index(greedy)[:, 0], to_index(greedy)[:, 1]].all()
    actor = [x.clone() for x in loaded.model.actor.parameters()]
    critic = [x.clone() for x in loaded.model.critic.parameters()]
    again, infos = loaded.answer({"energy_mj": 30.0}, 3)
    assert again.tolist() == greedy.tolist() and len(infos) == 3 and len(p.cache) == 3
    assert infos[0]["bits"].tolist() == greedy.tolist()  # the first evaluation is the k = 0 answer
    assert len({policy_key(i["bits"]) for i in infos}) == 3 and all(i["feasible"] for i in infos)
    assert infos[1]["critic_score"] is not None  # the next ones are the critic's picks, scored before evaluation
    assert any(not torch.equal(a, b) for a, b in zip(actor, loaded.model.actor.parameters()))  # it learned
    assert any(not torch.equal(a, b) for a, b in zip(critic, loaded.model.critic.parameters()))
    frozen = load_agent(folder, SEARCH, problem(30.0)[0])
    actor = [x.clone() for x in frozen.model.actor.parameters()]
    frozen.answer({"energy_mj": 30.0}, 3, freeze_actor=True)
    assert all(torch.equal(a, b) for a, b in zip(actor, frozen.model.actor.parameters()))


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"identity": {"model weights": "a" * 64, "data and LUT": None}}, "another model weights"),
        ({"identity": {"data and LUT": "b" * 64}}, "another data and LUT"),
        (
            {"profile": {"device": "a100", "batch_size": 64, "backend": "modelled"}},
            r"another device profile \(\{\}; this run: a100 batch 64 modelled\)",
        ),
        ({"limits": {"latency_ms": 1.0}}, r"another budget key \(energy_mj; this run: latency_ms\)"),
        ({"offset_range": 3}, "another offset range"),
    ],
)
def test_an_agent_made_for_something_else_is_refused_in_one_line(trained, change, named):
    _, folder, _ = trained
    p, _ = problem(30.0)
    with pytest.raises(HySquantError, match=named) as e:
        load_agent(folder, SEARCH, dataclasses.replace(p, **change))
    assert "\n" not in str(e.value) and "train one for this run" in str(e.value)


class Marker:
    """Any Python object a pickle could name."""


def test_a_damaged_or_foreign_agent_file_is_one_line(trained, tmp_path):
    _, folder, _ = trained
    import shutil

    bad = tmp_path / "agent"
    shutil.copytree(folder, bad)

    torch.save({"state_dicts": Marker()}, bad / "agent.pt")  # an object other than tensors: never loaded
    with pytest.raises(HySquantError, match=rf"the agent file {bad / 'agent.pt'} is damaged \(it holds Python objects"):
        load_agent(bad, SEARCH, problem(30.0)[0])
    (bad / "agent.json").write_text("{not json")
    with pytest.raises(HySquantError, match=r"the agent file .*agent.json is damaged"):
        load_agent(bad, SEARCH, problem(30.0)[0])
    with pytest.raises(HySquantError, match=r"holds no trained agent \(agent.json is missing\)"):
        load_agent(tmp_path / "nowhere", SEARCH, problem(30.0)[0])


# -- the controls ----------------------------------------------------------------------------------------------
def test_the_surrogate_recovers_per_unit_sensitivities():
    """Noise-free data from KL = 0.01 + sum_l beta_l proxy_l: the fit recovers beta; data the LUT already explains
    leave it at 1."""
    rng = np.random.default_rng(0)
    proxy = rng.uniform(0.0, 1e-3, size=(6, GRID, GRID))
    beta = np.array([1.0, 2.0, 0.5, 3.0, 1.0, 0.2])
    policies = np.stack([np.stack([BITS[rng.integers(0, 7, 2)] for _ in range(6)]) for _ in range(80)])
    x = Surrogate.features_of(proxy, policies)
    fitted = Surrogate.fit(proxy, policies, 0.01 + x @ beta)
    np.testing.assert_allclose(fitted.beta, beta, rtol=2e-2)
    assert fitted.intercept == pytest.approx(0.01, rel=2e-2)
    flat = Surrogate.fit(proxy, policies, x.sum(axis=1))
    np.testing.assert_allclose(flat.beta, 1.0, atol=1e-6)
    np.testing.assert_allclose(flat.predict(policies), x.sum(axis=1), atol=1e-9)


def test_the_surrogate_answers_where_the_lut_misjudges():
    """misjudged(): the LUT underrates units 2 and 3 tenfold. Fitted on 40 random policies' evaluations, the ILP over
    the recalibrated proxy (its answer with no evaluation) is the true optimum (brute force); the ILP over the LUT
    is not. Its hill climb then evaluates its answer first."""
    p, true = problem(30.0)
    rng = np.random.default_rng(1)
    seen = np.stack([np.stack([[int(rng.integers(3, 9)), 8] for _ in range(6)]) for _ in range(40)])
    kl = np.array([true(b) for b in seen])
    optimum = brute_force(p, true)[1]
    assert p.ilp().tolist() != optimum.tolist()
    log = Log()
    search = dataclasses.replace(SEARCH, episodes=4)
    climb = SurrogateSearch(search, p, log, Path("unused"), (seen, kl), screen=8)
    assert climb.initial().tolist() == optimum.tolist()
    climb.run(dict(p.limits))
    assert log.history[0]["bits"].tolist() == optimum.tolist() and len(p.cache) == 4
    policies, values = evaluated(p.cache)
    assert sorted(values.tolist()) == sorted(true(b) for b in policies)


def test_the_surrogates_answer_stays_in_the_agents_box():
    """trust_region by hand; and a surrogate that lost a unit's sensitivity (beta 0.05: its data never moved that unit)
    answers within offset_range grid steps of the ILP's policy, where left free it sends that unit to its fewest
    bits."""
    box = trust_region(np.ones((2, GRID, GRID), dtype=bool), np.array([[8, 8], [4, 32]]), 1)
    assert np.argwhere(box[0].any(axis=1)).ravel().tolist() == [5, 6, 7]  # w: 7, 8, FP32
    assert np.argwhere(box[1].any(axis=1)).ravel().tolist() == [1, 2, 3]  # w: 3, 4, 5
    assert np.argwhere(box[1].any(axis=0)).ravel().tolist() == [6, 7]  # a: 8, FP32
    assert box.sum() == 3 * 3 + 3 * 2
    p, true = problem(30.0)
    p = dataclasses.replace(p, offset_range=1)
    seen = np.stack([p.ilp()] * 3)
    climb = SurrogateSearch(SEARCH, p, Log(), Path("unused"), (seen, np.array([true(b) for b in seen])), screen=8)
    beta = np.ones(6)
    beta[5] = MIN_BETA
    climb.surrogate = dataclasses.replace(climb.surrogate, beta=beta)
    centre, free = p.ilp(), p.ilp(climb.surrogate.grid())
    assert free[5, 0] == 3 and abs(to_index(centre[5]) - to_index(free[5])).max() > 1
    answer = climb.initial()
    assert np.abs(to_index(answer) - to_index(centre)).max() <= 1 and answer[:, 0].sum() <= 30


def test_local_search_from_a_given_policy():
    """nearest's climb: local search started from another budget's best policy, fitted to this budget first."""
    p, _ = problem(30.0)
    start = np.array([[8, 8], [8, 8], [6, 8], [6, 8], [5, 8], [5, 8]])  # 38 bits: over the budget of 30
    log = Log()
    LocalSearch(dataclasses.replace(SEARCH, episodes=5), p, log, Path("unused"), start=start).run(dict(p.limits))
    first = log.history[0]["bits"]
    assert first.tolist() == p.fitted(start).tolist() and first[:, 0].sum() <= 30 and len(log.history) == 5


def test_target_of_a_budget_no_policy_meets():
    agent = ConditionedAgent(SEARCH, problem(30.0)[0], SEARCH.agent)
    with pytest.raises(HySquantError, match="no allowed policy meets energy_mj <= 10"):
        agent.target({"energy_mj": 10.0})
    assert isinstance(agent.target({"energy_mj": 30.0}), Target)


# -- settings and the console script ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["search.transfer.train=[]"], r"search.transfer.train=\[\] must be a non-empty list of budget ratios"),
        (["search.transfer.train=[0.5,0.5]"], r"lists a budget twice"),
        (["search.transfer.train=[0.5,-1]"], r"search.transfer.train=-1 must be a positive number"),
        (["search.transfer.episodes=2"], r"search.transfer.episodes=2 is fewer than the 3 training budgets"),
        (["search.transfer.evaluations=-1"], r"search.transfer.evaluations=-1 must be an integer >= 0"),
        (["search.transfer.freeze_actor=maybe"], r"search.transfer.freeze_actor='maybe' must be true or false"),
        (["search.screen.p_max=2"], r"search.screen.p_max=2.0 must be a p-value in \(0, 1\]"),
        (["search.screen.candidates=-1"], r"search.screen.candidates=-1 must be an integer >= 0"),
        (["search.swap_moves=sometimes"], r"search.swap_moves='sometimes' must be true or false"),
        (
            ["search.method=rl-cond", "budget.latency_ratio=0.9"],
            r"search.method=rl-cond answers one budget kind, the run sets 2 \(latency, energy\): use budget=latency",
        ),
    ],
)
def test_bad_transfer_settings_are_one_line(overrides, message):
    with pytest.raises(HySquantError, match=message):
        search_settings(overrides)


def test_search_trains_an_agent_then_answers_with_it(tmp_path, digits_pipeline, run_here):
    """hysquant-search search.method=rl-cond: trains over the budgets given, saves agent/, answers the run's budget
    with k evaluations; a later run answers another budget with that agent and no evaluation; a run with another
    budget kind is refused before any work."""
    import json

    from hysquant_rl.apps.search import main as search_main
    from tests.conftest import assert_one_error_line

    agent = ["search.method=rl-cond", "agent.warmup_episodes=1", "agent.gradient_steps=2"]
    trained = tmp_path / "train"
    ran = run_here(
        search_main,
        *agent,
        "search.transfer.train=[0.5,0.7]",
        "search.transfer.episodes=4",
        "search.transfer.evaluations=2",
        tmp_path=trained,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    doc = json.loads((trained / "agent" / "agent.json").read_text())
    assert doc["identity"]["budget key"] == "energy_mj" and len(doc["history"]) == 4
    assert [t["fraction"] for t in doc["targets"]] == sorted(t["fraction"] for t in doc["targets"])
    assert json.loads((trained / "summary.json").read_text())["episodes"] == 2  # the answer's two, not training's
    answer = tmp_path / "answer"
    ran = run_here(
        search_main,
        *agent,
        f"search.transfer.agent={trained / 'agent'}",
        "search.transfer.evaluations=0",
        "budget.energy_ratio=0.65",
        tmp_path=answer,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    summary = json.loads((answer / "summary.json").read_text())
    assert summary["episodes"] == 0 and summary["policies"]["best policy"]["holds"]["energy_mj"]
    assert not (answer / "agent").exists()
    wrong = run_here(
        search_main, *agent, f"search.transfer.agent={trained / 'agent'}", "budget=latency", tmp_path=tmp_path / "w"
    )
    assert_one_error_line(wrong, r"answers energy_mj budgets, this run sets latency_ms: set that budget instead")
