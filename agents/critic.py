"""The critic as a judge of whole policies: its Q-value averaged over a policy's trajectory.

With gamma = 0 and HAQ's reward copy every transition of an episode carries the episode's reward, so the critic's Q
at each of a policy's L transitions estimates that policy's (standardised) reward; their mean is its score. The RL
search screens candidates with it (:class:`agents.rl.RLSearch`), the budget-conditioned agent too
(:mod:`agents.conditioned`), and the bench measures how well it ranks (:mod:`hysquant_rl.search.ranking`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

Trajectory = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]  # bits (L, 2) -> obs, next, actions


def critic_scores(agent: Any, trajectory: Trajectory, policies: Sequence[np.ndarray]) -> np.ndarray:
    """The critic's score (N,) of each policy (L, 2) of ``policies``: its first Q-head averaged over the policy's
    trajectory (``trajectory``: :meth:`envs.HySquantEnv.trajectory` of the environment whose budget and centre the
    scores are for)."""
    if not len(policies):
        return np.zeros(0)
    steps = [trajectory(np.asarray(bits)) for bits in policies]
    obs = torch.as_tensor(np.concatenate([o for o, _, _ in steps]))
    actions = torch.as_tensor(np.concatenate([agent.policy.scale_action(a) for _, _, a in steps]))
    with torch.no_grad():
        q = agent.critic(obs, actions)[0]
    return q.numpy().reshape(len(policies), -1).mean(axis=1)
