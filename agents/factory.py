"""One factory over a registry of SB3 off-policy agents (DDPG as in HAQ, TD3, SAC)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from scipy.stats import truncnorm
from stable_baselines3 import DDPG, SAC, TD3
from stable_baselines3.common.noise import ActionNoise
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

from hysquant_rl.errors import HySquantError

AGENTS: dict[str, type[OffPolicyAlgorithm]] = {"ddpg": DDPG, "td3": TD3, "sac": SAC}


class DecayingTruncatedNormalNoise(ActionNoise):
    """HAQ's exploration: truncated normal noise (cut at +-2 sigma) whose sigma decays by ``decay`` after every
    episode. ``sigma`` is in SB3's scaled action units ([-1, 1]: twice HAQ's [0, 1] units)."""

    def __init__(self, size: int, sigma: float, decay: float, seed: int | None = None) -> None:
        super().__init__()
        self.size, self.sigma0, self.decay = size, float(sigma), float(decay)
        self.sigma = self.sigma0
        self.episodes = 0
        self._rng = np.random.default_rng(seed)

    def __call__(self) -> np.ndarray:
        return truncnorm.rvs(-2.0, 2.0, scale=self.sigma, size=self.size, random_state=self._rng).astype(np.float32)

    def reset(self) -> None:
        self.episodes += 1
        self.sigma = self.sigma0 * self.decay**self.episodes

    def __repr__(self) -> str:
        return f"DecayingTruncatedNormalNoise(sigma={self.sigma:.4f}, decay={self.decay})"


def make_agent(cfg: Any, env: gym.Env, steps_per_episode: int, seed: int, tensorboard_log: str | None = None) -> OffPolicyAlgorithm:
    """The SB3 agent named ``cfg.name`` with the ``conf/agent/<name>.yaml`` hyperparameters; updates run once
    per episode (``gradient_steps`` of them), after ``warmup_episodes`` episodes of exploration."""
    name = str(cfg.name)
    if name not in AGENTS:
        raise HySquantError(f"unknown agent {name!r}: use agent= one of {', '.join(sorted(AGENTS))}")
    kwargs: dict[str, Any] = dict(
        learning_rate=float(cfg.learning_rate),
        buffer_size=int(cfg.buffer_size),
        learning_starts=int(cfg.warmup_episodes) * steps_per_episode,
        batch_size=int(cfg.batch_size),
        tau=float(cfg.tau),
        gamma=float(cfg.gamma),
        train_freq=(1, "episode"),
        gradient_steps=int(cfg.gradient_steps),
        policy_kwargs={"net_arch": list(cfg.net_arch)},
        seed=seed,
        device="cpu",
        verbose=0,
        tensorboard_log=tensorboard_log,
    )
    if name != "sac":
        n = int(np.prod(env.action_space.shape))
        kwargs["action_noise"] = DecayingTruncatedNormalNoise(n, 2.0 * float(cfg.noise_sigma), float(cfg.noise_decay), seed)
    return AGENTS[name]("MlpPolicy", env, **kwargs)
