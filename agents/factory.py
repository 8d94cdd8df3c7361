"""One factory over a registry of SB3 off-policy agents (DDPG as in HAQ, TD3, SAC)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from scipy.stats import truncnorm
from stable_baselines3 import DDPG, SAC, TD3
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.noise import ActionNoise, VectorizedActionNoise
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.vec_env import VecEnv

from hysquant_rl.registry import Registry
from hysquant_rl.settings import AgentSettings


class ActorRate:
    """SB3 gives the actor and the critic one learning rate; HAQ's DDPG uses 1e-4 for the actor and 1e-3 for the
    critic. ``actor_lr_ratio`` scales the actor's rate (saved and loaded with the agent)."""

    actor_lr_ratio: float = 1.0

    def _update_learning_rate(self, optimizers: Any) -> None:
        super()._update_learning_rate(optimizers)  # type: ignore[misc]
        rate = self.lr_schedule(self._current_progress_remaining) * self.actor_lr_ratio  # type: ignore[attr-defined]
        for group in self.actor.optimizer.param_groups:  # type: ignore[attr-defined]
            group["lr"] = rate


class HaqDDPG(ActorRate, DDPG):
    pass


class HaqTD3(ActorRate, TD3):
    pass


class HaqSAC(ActorRate, SAC):
    pass


AGENTS: Registry[type[OffPolicyAlgorithm]] = Registry("agent", "agent.name")
for _name, _agent in (("ddpg", HaqDDPG), ("td3", HaqTD3), ("sac", HaqSAC)):
    AGENTS.register(_name)(_agent)


class DecayingTruncatedNormalNoise(ActionNoise):
    """HAQ's exploration: truncated normal noise (cut at +-2 sigma) whose sigma decays by ``decay`` after every
    episode. ``sigma`` is in SB3's scaled action units ([-1, 1]: twice HAQ's [0, 1] units)."""

    def __init__(self, size: int, sigma: float, decay: float, seed: int | None = None) -> None:
        super().__init__()
        self.size, self.sigma0, self.decay = size, float(sigma), float(decay)
        self.sigma = self.sigma0
        self.episodes = 0
        self._rng = np.random.default_rng(seed)
        self._unit: list[np.ndarray] = []  # unit-sigma draws, made in blocks (one scipy call per step is slow)

    def __call__(self) -> np.ndarray:
        if not self._unit:
            self._unit = list(truncnorm.rvs(-2.0, 2.0, size=(256, self.size), random_state=self._rng))
        return (self.sigma * self._unit.pop()).astype(np.float32)

    def reset(self) -> None:
        self.episodes += 1
        self.sigma = self.sigma0 * self.decay**self.episodes

    def __repr__(self) -> str:
        return f"DecayingTruncatedNormalNoise(sigma={self.sigma:.4f}, decay={self.decay})"


def check_agent(name: str) -> str:
    """``name`` if it is a registered agent, else a one-line error listing them."""
    AGENTS.get(name)
    return name


def exploration_noises(model: OffPolicyAlgorithm) -> list[DecayingTruncatedNormalNoise]:
    """The agent's exploration noise, one per environment (none for SAC)."""
    noise = getattr(model, "action_noise", None)
    if isinstance(noise, VectorizedActionNoise):
        return list(noise.noises)
    return [noise] if isinstance(noise, DecayingTruncatedNormalNoise) else []


def make_agent(
    agent: AgentSettings,
    env: gym.Env | VecEnv,
    steps_per_episode: int,
    seed: int,
    local_sigma: float | None = None,
) -> OffPolicyAlgorithm:
    """The SB3 agent named ``agent.name`` with its hyperparameters (``conf/agent/<name>.yaml``); updates run once
    per episode (``gradient_steps`` of them), after ``warmup_episodes`` episodes of exploration. With a vectorized
    ``env`` of N environments (parallel episodes) a rollout is N episodes and runs N x ``gradient_steps`` updates;
    each environment explores with its own noise stream.

    ``local_sigma`` (in [0, 1] action units) makes it a local search around action 0.5 (a warm start): the
    actor's output layer starts at zero so its first actions are 0.5 everywhere, exploration is noise of that
    sigma around the actor from the first episode (no uniform warm-up, which would throw the warm start
    away; :class:`agents.rl.RLSearch` holds the updates back for ``warmup_episodes``)."""
    name = check_agent(agent.name)
    n_envs = getattr(env, "num_envs", 1)
    kwargs: dict[str, Any] = dict(
        learning_rate=agent.learning_rate,
        buffer_size=agent.buffer_size,
        learning_starts=0 if local_sigma is not None else agent.warmup_episodes * steps_per_episode,
        batch_size=agent.batch_size,
        tau=agent.tau,
        gamma=agent.gamma,
        train_freq=(steps_per_episode, "step"),  # one episode per environment: episodes have L steps
        gradient_steps=agent.gradient_steps * n_envs,
        policy_kwargs={"net_arch": list(agent.net_arch)},
        seed=seed,
        device="cpu",
        verbose=0,
    )
    if name != "sac":
        n = int(np.prod(env.action_space.shape))
        sigma = agent.noise_sigma if local_sigma is None else float(local_sigma)
        noises = [DecayingTruncatedNormalNoise(n, 2.0 * sigma, agent.noise_decay, seed + i) for i in range(n_envs)]
        if n_envs == 1:
            kwargs["action_noise"] = noises[0]
        else:
            kwargs["action_noise"] = vectorized = VectorizedActionNoise(noises[0], n_envs)
            vectorized.noises = noises  # SB3 copies one noise n times: the same draws in every environment
    model = AGENTS.get(name)("MlpPolicy", env, **kwargs)
    model.set_logger(Logger(None, []))  # SB3's own logger would make a folder in /tmp per run; ours is TensorBoard
    model.actor_lr_ratio = agent.actor_learning_rate / agent.learning_rate
    if local_sigma is not None:
        last = [m for m in model.actor.mu.modules() if isinstance(m, torch.nn.Linear)][-1]
        with torch.no_grad():
            last.weight.zero_()
            last.bias.zero_()
        if getattr(model, "actor_target", None) is not None:
            model.actor_target.load_state_dict(model.actor.state_dict())
    return model
