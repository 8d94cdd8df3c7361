"""Ranking quality of a model that scores policies (the agent's critic, the surrogate): Kendall's tau between its
scores and the rewards the policies then earned on search-val.

A search's own episodes give a *prospective* measurement: each evaluated policy was scored before its evaluation, by
the model as it stood then. Scores and rewards both drift during a search (the critic's scale moves as it learns, the
rewards rise as the incumbent improves), which would make a plain tau over the episodes positive without any ranking
skill; :func:`prospective_pairs` therefore pairs each episode's *predicted* gain over the incumbent (the score of the
policy minus the score of the incumbent, by the same model at the same moment) with its *realised* gain (its reward
minus the best reward before it). Torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

SCORE = "critic_score"  # an episode's predicted gain over the incumbent, recorded by the agent before evaluating


def kendall(predicted: Sequence[float], actual: Sequence[float]) -> dict[str, Any]:
    """Kendall's tau-b between ``predicted`` and ``actual`` (N,) and the one-sided p-value of tau > 0 (scipy's, exact
    for small N without ties); ``tau`` and ``p`` are None with fewer than 3 pairs or a constant side. ``pairs``: N."""
    from scipy.stats import kendalltau

    x, y = np.asarray(predicted, dtype=np.float64), np.asarray(actual, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    out: dict[str, Any] = {"pairs": int(len(x)), "tau": None, "p": None}
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return out
    res = kendalltau(x, y, alternative="greater")
    if math.isfinite(res.statistic):
        out.update(tau=float(res.statistic), p=float(res.pvalue))
    return out


def prospective_pairs(history: list[dict[str, Any]], after: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """(predicted gains, realised gains) (N,) of the episodes after episode ``after`` that carry a score
    (:data:`SCORE`): the score, and the reward minus the best reward of the feasible, non-skipped episodes before
    it. An episode before which nothing feasible was evaluated, or that was skipped (NaN evaluation), is left out."""
    predicted, realised = [], []
    best = -math.inf
    for e in history:
        score = e.get(SCORE)
        if e["episode"] > after and score is not None and not e.get("skipped", False) and math.isfinite(best):
            predicted.append(float(score))
            realised.append(float(e["reward"]) - best)
        if e.get("feasible", True) and not e.get("skipped", False):
            best = max(best, float(e["reward"]))
    return np.asarray(predicted), np.asarray(realised)


def clearly_ranks(tau: dict[str, Any], min_pairs: int, p_max: float) -> bool:
    """A :func:`kendall` result shows ranking skill: at least ``min_pairs`` pairs, tau > 0 with p < ``p_max``."""
    return tau["pairs"] >= min_pairs and tau["tau"] is not None and tau["tau"] > 0 and tau["p"] < p_max
