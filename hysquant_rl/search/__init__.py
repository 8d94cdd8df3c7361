"""The search (paper section 3.3): the problem every method solves, the bit allocation over the LUT, budgets,
the baselines, the outer hardware-feedback loop, its recorder and the run's summary.

``problem`` -> ``allocation``, ``budget`` (torch-free: pricing and allocating never load torch); ``baselines``;
``recorder``; ``loop``; ``summary``. The RL agent (``agents/``) and its Gymnasium adapter (``envs/``) sit on top
of :class:`~hysquant_rl.search.problem.SearchProblem`; nothing here imports them.
"""
