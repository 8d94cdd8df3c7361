"""Gymnasium environment ``HySquant-v0``: one step per quantizable layer, in forward order, over a
:class:`hysquant_rl.search.problem.SearchProblem`."""

import gymnasium

from envs.hysquant_env import HySquantEnv
from envs.parallel import ParallelEpisodes

if "HySquant-v0" not in gymnasium.registry:
    gymnasium.register(id="HySquant-v0", entry_point="envs.hysquant_env:HySquantEnv")

__all__ = ["HySquantEnv", "ParallelEpisodes"]
