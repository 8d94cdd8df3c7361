"""The budget-conditioned agent: one agent trained across a set of budgets that answers budgets it was not trained on.

Each budget the agent meets is a :class:`Target`: its limits (one budget kind), the centre of its actions (the
integer program's policy over the LUT there, which costs no evaluation) and its baseline reward. Its observation is
``HySquant-v0``'s with the target as features (``condition=True``: the budget as a fraction of the way from the
cheapest allowed policy to the reference, the profile's cost scale, the centre's bits at the unit;
:mod:`envs.hysquant_env`), its actions are offsets of up to ``search.offset_range`` bits around the centre, and its
rewards are advantages over the baseline (standardised in the replay buffer as the per-budget agent's), so episodes
of a tight and a loose budget teach the critic on one scale.

Training (:meth:`ConditionedAgent.train`): the integer program's policy of every training budget is evaluated first
(its reward is that budget's baseline), then episodes are drawn over the budgets (each budget once per cycle, in a
seeded order), all sharing one evaluation cache; the first ``agent.warmup_episodes`` episodes explore without
updates, then every episode's policy is the critic's pick among ``search.candidates`` new ones near the actor's
choice (:meth:`hysquant_rl.search.problem.SearchProblem.candidates`) and ``agent.gradient_steps`` updates follow it.

Answering a new budget with k evaluations (:meth:`ConditionedAgent.answer`): its baseline is interpolated from the
training budgets' (by fraction), its centre is its integer program's policy; k = 0 returns the actor's greedy policy
fitted to the budget; k > 0 evaluates that policy and k - 1 critic picks, learning from each (the actor frozen in the
ablation). ``search.method=rl-cond`` is :mod:`agents.conditioned_search`; :mod:`agents.storage` saves and loads a
trained agent as data (tensors, arrays, JSON).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from agents.callbacks import EpisodeStore
from agents.critic import critic_scores
from agents.factory import exploration_noises, make_agent
from envs import HySquantEnv
from hysquant_rl.errors import HySquantError, NoPolicyError
from hysquant_rl.search.problem import SearchProblem
from hysquant_rl.search.ranking import SCORE
from hysquant_rl.settings import AgentSettings, SearchSettings

log = logging.getLogger(__name__)
OnEpisode = Callable[[dict[str, Any]], None]


@dataclass
class Target:
    """One budget: ``limits`` (its one budget key -> total, fixed part included), ``fraction`` of the way from the
    cheapest allowed policy to the reference, ``centre`` (L, 2) the integer program's policy there, ``baseline`` the
    reward its episodes are measured against (the centre's on a training budget, interpolated on a new one), and
    ``best``: its best evaluated episode's record (None before any)."""

    limits: dict[str, float]
    fraction: float
    centre: np.ndarray
    baseline: float
    best: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        best = self.best
        return {
            "limits": self.limits,
            "fraction": self.fraction,
            "centre": self.centre.tolist(),
            "baseline": self.baseline,
            "best": None if best is None else {"reward": best["reward"], "bits": np.asarray(best["bits"]).tolist()},
        }


@dataclass
class ConditionedAgent:
    """An SB3 agent (``agent``: its settings, ``agent.name`` and hyperparameters) over the conditioned environment of
    ``problem``, with the training budgets it has met (``targets``) and its episode history (``history``: one record
    per training episode: the budget's index, reward, advantage, KL, top-1, whether cached)."""

    search: SearchSettings
    problem: SearchProblem
    agent: AgentSettings
    targets: list[Target] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.L = self.problem.num_units
        self.env = HySquantEnv(self.problem, condition=True)
        sigma = self.env.bits_to_action(self.search.warm_start_noise_bits)
        self.model = make_agent(self.agent, self.env, self.L, self.search.seed, local_sigma=sigma)
        self.noises = exploration_noises(self.model)
        self.store = EpisodeStore(self.env.trajectory, self.agent.normalize_reward)
        self.rng = np.random.default_rng(self.search.seed)  # candidates' draws and the budgets' order
        keys = sorted(self.problem.limits)
        if len(keys) != 1:
            raise HySquantError(f"the conditioned agent answers one budget kind, the problem has {keys or 'none'}")
        self.key = keys[0]

    # -- targets -------------------------------------------------------------------------------------------------
    def target(self, limits: dict[str, float], baseline: float = float("nan")) -> Target:
        """The :class:`Target` of ``limits`` (this agent's budget key alone); None-free: a budget no allowed policy
        meets is a :class:`NoPolicyError` naming it."""
        if sorted(limits) != [self.key]:
            raise HySquantError(f"the agent answers {self.key} budgets, not {', '.join(sorted(limits)) or 'none'}")
        centre = self.problem.ilp(limits=limits)
        if centre is None:
            raise NoPolicyError(f"no allowed policy meets {self.key} <= {limits[self.key]:.6g}: relax the budget")
        return Target(dict(limits), self.env.fraction(self.key, limits[self.key]), centre, baseline)

    def baseline(self, fraction: float) -> float:
        """A new budget's baseline reward: the training budgets' baselines interpolated linearly in their fractions
        (the nearest one's beyond them)."""
        f = np.array([t.fraction for t in self.targets])
        order = np.argsort(f)
        return float(np.interp(fraction, f[order], np.array([t.baseline for t in self.targets])[order]))

    def nearest(self, fraction: float) -> Target:
        """The training budget whose fraction is nearest ``fraction`` (the tighter one on a tie)."""
        return min(self.targets, key=lambda t: (abs(t.fraction - fraction), t.fraction))

    def _use(self, target: Target) -> None:
        self.problem.limits = dict(target.limits)
        self.problem.warm_start = target.centre

    # -- episodes ------------------------------------------------------------------------------------------------
    def _act(self, obs: np.ndarray, explore: bool) -> np.ndarray:
        """The actor's action (2,) in [0, 1] for ``obs``; with ``explore`` its exploration noise added (SAC: its
        stochastic policy). The policy's own forward pass (SB3's ``predict`` without its per-call overheads)."""
        noise = self.noises[0] if self.noises else None
        with torch.no_grad():
            scaled = self.model.policy._predict(
                torch.as_tensor(obs[None]), deterministic=not explore or noise is not None
            )
        scaled = scaled.numpy()[0]
        if explore and noise is not None:
            scaled = np.clip(scaled + noise(), -1.0, 1.0)
        return np.asarray(self.model.policy.unscale_action(scaled), dtype=np.float32)

    def choose(self, explore: bool) -> np.ndarray:
        """The policy (L, 2) the actor chooses unit by unit for the target in force (before fitting it to the
        budget), with its exploration when ``explore``."""
        self.model.policy.set_training_mode(False)
        obs, _ = self.env.reset()
        for _ in range(self.L - 1):
            obs, *_ = self.env.step(self._act(obs, explore))
        bits = self.env.ending(self._act(obs, explore))
        assert bits is not None
        self.env.reset()
        return bits

    def score(self, target: Target, policies: list[np.ndarray]) -> np.ndarray:
        """The critic's scores (N,) of ``policies`` for ``target`` (:func:`agents.critic.critic_scores`)."""
        self._use(target)
        return critic_scores(self.model, self.env.trajectory, policies)

    def _gains(self, target: Target, policies: list[np.ndarray]) -> np.ndarray:
        """The critic's predicted gains (N,) of ``policies`` over ``target``'s best policy so far (its centre before
        any), by the same critic."""
        best = target.centre if target.best is None else np.asarray(target.best["bits"])
        scores = self.score(target, [*policies, best])
        return scores[:-1] - scores[-1]

    def _evaluate(self, target: Target, chosen: np.ndarray, final: np.ndarray | None = None) -> dict[str, Any]:
        """Evaluate ``final`` (``chosen`` fitted when None) for ``target`` and track the target's best; the
        episode's record."""
        self._use(target)
        info = self.problem.finish(chosen, final)
        if info["feasible"] and (target.best is None or info["reward"] > target.best["reward"]):
            target.best = info
        for noise in self.noises:
            noise.reset()  # sigma decays per episode, as the per-budget agent's
        return info

    def _store(self, target: Target, info: dict[str, Any]) -> None:
        """The evaluated episode into the replay buffer (its trajectory for ``target``) with its advantage over the
        target's baseline, which ``info`` then carries."""
        self._use(target)
        info["advantage"] = float(info["reward"]) - target.baseline
        buf, dim = self.model.replay_buffer, self.env.observation_space.shape[0]
        for l in range(self.L):  # placeholders: the store writes the evaluated policy's trajectory over them
            last = np.array([l == self.L - 1])
            buf.add(np.zeros((1, dim)), np.zeros((1, dim)), np.zeros((1, 2)), np.zeros(1), last, [{}])
        self.store.store(self.model, [(info["bits"], info["advantage"])])

    def _explore(self, target: Target, screen: bool) -> dict[str, Any]:
        """One exploring episode for ``target``: the actor's noisy choice, then (``screen``) the critic's pick among
        ``search.candidates`` new policies near it, or the first new one; evaluated and stored."""
        self._use(target)
        chosen = self.choose(explore=True)
        found, repeat = self.problem.candidates(chosen, self.rng, self.search.candidates if screen else 1)
        score = None
        if not found:  # every draw repeated: the chosen policy again (no new evaluation)
            final = self.problem.fitted(chosen)
        elif screen:
            gains = self._gains(target, found)
            best = int(np.argmax(gains))
            final, score = found[best], float(gains[best])
        else:
            final = found[0]
        info = self._evaluate(target, chosen, final)
        self._store(target, info)
        info["proposed_repeat"], info[SCORE] = repeat, score
        return info

    def _update(self) -> None:
        if self.agent.gradient_steps > 0:
            self.model.train(gradient_steps=self.agent.gradient_steps, batch_size=self.agent.batch_size)

    # -- training and answering ----------------------------------------------------------------------------------
    def train(self, budgets: list[dict[str, float]], episodes: int, on_episode: OnEpisode | None = None) -> None:
        """Train over ``budgets`` (each: this agent's budget key -> total) for ``episodes`` episodes in all (one PTQ
        evaluation each, the warm starts included): see the module docstring. ``on_episode`` sees every record."""
        self.targets = [self.target(limits) for limits in budgets]
        bar = tqdm(total=episodes, desc="conditioned agent: training", unit="episode", disable=None)
        try:
            for i, target in enumerate(self.targets):  # the warm starts: each budget's integer program
                info = self._evaluate(target, target.centre)
                target.baseline = float(info["reward"])  # its advantage is 0 by definition
                self._store(target, info)
                self._note(i, info, on_episode, bar)
            order: list[int] = []
            for _ in range(episodes - len(self.targets)):
                if not order:  # every budget once per cycle, in a seeded order
                    order = list(self.rng.permutation(len(self.targets)))
                i = int(order.pop())
                learning = len(self.history) > self.agent.warmup_episodes
                info = self._explore(self.targets[i], screen=learning)
                if learning:
                    self._update()
                self._note(i, info, on_episode, bar)
        finally:
            bar.close()

    def _note(self, budget: int, info: dict[str, Any], on_episode: OnEpisode | None, bar: Any) -> None:
        m = info["metrics"]
        self.history.append(
            {
                "episode": len(self.history),
                "budget": budget,
                "reward": float(info["reward"]),
                "advantage": info["advantage"],
                "kl": float(m["kl"]),
                "top1": float(m["top1"]),
                "feasible": bool(info["feasible"]),
                "cached": bool(info["cached"]),
            }
        )
        bar.update(1)
        if on_episode is not None:
            on_episode(info)

    def answer(
        self, limits: dict[str, float], k: int, on_episode: OnEpisode | None = None, freeze_actor: bool = False
    ) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """Answer a budget (``limits``) with ``k`` PTQ evaluations: (the greedy policy fitted to it, the records of
        the k episodes). The first evaluates the greedy policy, each next one the critic's pick among new
        candidates near the actor's noisy choice; every one is stored and followed by the agent's updates (the
        actor's rate 0 with ``freeze_actor``). The best of them is the caller's to pick (by reward, within the
        budget). The agent learns as it answers: answer a second budget from a fresh copy
        (:func:`agents.storage.load_agent`)."""
        target = self.target(limits)
        target.baseline = self.baseline(target.fraction)
        self._use(target)
        greedy = self.problem.fitted(self.choose(explore=False))
        if k == 0:
            return greedy, []
        if freeze_actor:
            self.model.actor_lr_ratio = 0.0
        for noise in self.noises:  # a new search: exploration starts at its full sigma, as local search's
            noise.episodes, noise.sigma = 0, noise.sigma0
        infos = []
        for e in range(k):
            if e == 0:
                info = self._evaluate(target, greedy)
                self._store(target, info)
            else:
                info = self._explore(target, screen=True)
            self._update()
            infos.append(info)
            if on_episode is not None:
                on_episode(info)
        return greedy, infos


def train_agent(
    search: SearchSettings, problem: SearchProblem, budgets: list[dict[str, float]], episodes: int
) -> ConditionedAgent:
    """A new agent (``search.agent``'s settings) over ``problem``, trained over ``budgets`` for ``episodes``."""
    agent = ConditionedAgent(search, problem, search.agent)
    agent.train(budgets, episodes)
    return agent
