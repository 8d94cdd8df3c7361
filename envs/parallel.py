"""Parallel episodes (``search.workers=N``): N copies of :class:`~envs.hysquant_env.HySquantEnv` over one
:class:`~hysquant_rl.search.problem.SearchProblem`, stepped in lockstep as an SB3 vectorized environment.

Every episode is L steps long, so the N episodes end on the same step. Before that step each episode's policy is
fixed: the policy its actions chose, fitted to the budgets, if the search has not evaluated it yet; else, and
when a ``scorer`` is set (the agent's critic, once it learns), the best-scored of up to ``candidates`` new policies
around it (:meth:`SearchProblem.candidates`), whose score the episode's ``info`` carries as ``critic_score``
(:mod:`hysquant_rl.search.ranking`). The N policies are evaluated at once (:meth:`SearchProblem.prefetch`:
on the problem's Ray workers when it has them); then each copy steps as usual and finds its evaluation in the
problem's cache. The agent sees N episodes per rollout.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from stable_baselines3.common.vec_env import DummyVecEnv

from envs.hysquant_env import HySquantEnv
from hysquant_rl.search.problem import SearchProblem, policy_key


class ParallelEpisodes(DummyVecEnv):
    """``n`` environments over ``problem`` whose episode ends are evaluated together.

    ``scorer`` (policies -> scores, higher is better) picks among ``candidates`` new policies per episode; None: the
    chosen policy when new, else its first new neighbour."""

    def __init__(self, problem: SearchProblem, n: int, seed: int, candidates: int = 1) -> None:
        super().__init__([lambda: HySquantEnv(problem) for _ in range(n)])
        self.problem = problem
        self.candidates = candidates
        self.scorer: Callable[[list[np.ndarray]], np.ndarray] | None = None
        self.rng = np.random.default_rng(seed)  # the neighbours' draws

    def step_wait(self):
        finals: list[np.ndarray] = []
        for env, action in zip(self.envs, self.actions, strict=True):
            chosen = env.ending(action)
            if chosen is None:
                continue
            k = self.candidates if self.scorer is not None else 1
            found, env.proposed_repeat = self.problem.candidates(chosen, self.rng, k, {policy_key(b) for b in finals})
            if not found:  # every draw repeated: the chosen policy again (no evaluation)
                env.final = self.problem.fitted(chosen)
            elif self.scorer is None:
                env.final = found[0]
            else:  # the critic's pick, and its score: the episode's prediction, before its evaluation
                scores = self.scorer(found)
                best = int(np.argmax(scores))
                env.final, env.score = found[best], float(scores[best])
            finals.append(env.final)
        if finals:
            self.problem.prefetch(finals)
        return super().step_wait()
