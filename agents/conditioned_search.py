"""``search.method=rl-cond``: the run's budget answered by a budget-conditioned agent (:mod:`agents.conditioned`),
loaded from a saved artefact or trained first and saved (:mod:`agents.storage`)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from agents.conditioned import ConditionedAgent, train_agent
from agents.storage import load_agent, save_agent
from hysquant_rl.search.problem import SearchProblem
from hysquant_rl.search.recorder import Recorder
from hysquant_rl.settings import SearchSettings

log = logging.getLogger(__name__)
ARTEFACT_DIR = "agent"  # a trained agent in a run directory (agents/storage.py)


class ConditionedSearch:
    """``search.method=rl-cond``: the budget-conditioned agent answers the run's budget with
    ``search.transfer.evaluations`` PTQ evaluations. It is loaded from ``search.transfer.agent``, or trained first
    over ``search.transfer.train`` (ratios of ``budget.reference`` for the run's one budget) and saved as ``agent/``
    in the run directory. Training episodes are not the run's episodes (they answer other budgets): the recorder
    sees the answer's."""

    def __init__(self, search: SearchSettings, problem: SearchProblem, recorder: Recorder, out: Path) -> None:
        self.search, self.problem, self.recorder, self.out = search, problem, recorder, out
        self.agent: ConditionedAgent | None = None

    def _agent(self) -> ConditionedAgent:
        t = self.search.transfer
        if t.agent is not None:
            return load_agent(Path(t.agent), self.search, self.problem)
        (key,) = self.problem.limits
        agent = train_agent(
            self.search, self.problem, [{key: r * self.problem.reference[key]} for r in t.train], t.episodes
        )
        save_agent(agent, self.out / ARTEFACT_DIR)
        log.info(
            "the trained agent is in %s (search.transfer.agent=%s answers with it)",
            self.out / ARTEFACT_DIR,
            self.out / ARTEFACT_DIR,
        )
        return agent

    def run(self, limits: dict[str, float], round_index: int = 0) -> np.ndarray | None:
        if self.agent is None:
            self.agent = self._agent()
        t = self.search.transfer
        greedy, _ = self.agent.answer(limits, t.evaluations, self.recorder.record, t.freeze_actor)
        self.problem.limits = dict(limits)
        if t.evaluations == 0:
            return greedy
        return self.recorder.best_within(limits)
