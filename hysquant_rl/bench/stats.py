"""The bench's statistics: aggregation over seeds, the search's speed per episode, the McNemar test and the standard
errors of top-1 (one policy's, and a paired difference's: the noise of search-val), the agent's learning
diagnostics, and the room each budget leaves. Top-1 and its differences are in points (percent of images)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from hysquant_rl.budget_kinds import ENERGY, LATENCY
from hysquant_rl.io import records
from hysquant_rl.search.ranking import kendall, prospective_pairs

EPS = 1e-9  # points: means of top-1 over the same images compare equal within float summation error
Paired = dict[tuple[int, str], list[dict[str, Any]]]  # per (regime, budget): one paired test per seed


def aggregate(runs: pd.DataFrame) -> list[dict[str, Any]]:
    """Mean and sample std over seeds per (regime, budget, method); std is NaN for one run."""
    cols = ["test_top1", "search_val_top1", LATENCY, ENERGY, "evaluations", "wall_s"]
    g = runs.groupby(["regime", "budget", "method"], sort=False)
    table = g[cols].agg(["mean", "std"])  # NaN rows (no policy found) are skipped
    table.columns = [f"{c}_{s}" for c, s in table.columns]
    table["seeds"] = g.size()
    table["found"] = g["found"].sum()
    table["limit"] = g["limit"].first()
    table["unit"] = g["unit"].first()
    table["limit_ratio_of_w8a8"] = g["limit_ratio_of_w8a8"].first()
    table["all_within_budget"] = g["within_budget"].apply(lambda x: bool(x.dropna().all()))
    return records(table.reset_index())


def episode_speed(runs: pd.DataFrame) -> list[dict[str, Any]]:
    """Per episodic method: seconds per episode, and the search's own overhead (environment, agent updates,
    projection, bookkeeping: wall time minus PTQ evaluation time, per episode) as a fraction of the time of
    one PTQ evaluation."""
    episodic = runs[runs["found"] & (runs["episodes"] > 1)]
    out = []
    for name, g in episodic.groupby("method", sort=False):
        per_eval = g["eval_s"] / g["evaluations"]
        overhead = (g["wall_s"] - g["eval_s"]) / g["episodes"]  # repeated policies cost no evaluation
        out.append(
            {
                "method": name,
                "runs": int(len(g)),
                "s_per_episode": float((g["wall_s"] / g["episodes"]).mean()),
                "eval_s_per_evaluation": float(per_eval.mean()),
                "overhead_s_per_episode": float(overhead.mean()),
                "overhead_fraction": float((overhead / per_eval).mean()),
            }
        )
    return out


def mcnemar(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Exact McNemar test of two policies' per-image top-1 hits (N,) on the same images: ``wins`` images only
    ``a`` gets right, ``losses`` only ``b``; ``diff`` a's top-1 minus b's in points (wins - losses over N); ``p``
    the two-sided binomial p-value of wins among the two."""
    from scipy.stats import binomtest

    wins, losses = int((a & ~b).sum()), int((~a & b).sum())
    p = binomtest(wins, wins + losses, 0.5).pvalue if wins + losses else 1.0
    return {"wins": wins, "losses": losses, "diff": 100.0 * (wins - losses) / len(a), "p": float(p)}


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjustment of ``pvalues`` (m tests of one family), in their order: the i-th smallest p times
    (m - i + 1), made non-decreasing along that order and capped at 1. Reject where the adjusted p < alpha: the
    family-wise error rate is at most alpha."""
    p = np.asarray(pvalues, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    scaled = p[order] * (len(p) - np.arange(len(p)))
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return adjusted.tolist()


def bootstrap_means(
    values: np.ndarray, resamples: int, confidence: float, seed: int, chunk: int = 250
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap of the means of the columns of ``values`` (N, C) (e.g. per-image top-1 differences in
    points), resampling its N rows (the images) with replacement, the same resamples for every column: the
    ``confidence`` interval's (low (C,), high (C,)). ``resamples`` draws from a generator seeded by ``seed``, made
    ``chunk`` at a time."""
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    rng = np.random.default_rng(seed)
    means = []
    for start in range(0, resamples, chunk):
        draws = rng.integers(0, n, size=(min(chunk, resamples - start), n))
        counts = np.stack([np.bincount(d, minlength=n) for d in draws])  # (chunk, N): times each row is drawn
        means.append(counts @ values / n)
    stats = np.concatenate(means)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(stats, [tail, 1.0 - tail], axis=0)
    return low, high


def se_top1(top1: float, n: int) -> float:
    """Standard error, in points, of one policy's top-1 ``top1`` [%] measured on ``n`` images:
    ``100 sqrt(p (1 - p) / n)``."""
    p = top1 / 100.0
    return 100.0 * math.sqrt(p * (1.0 - p) / n)


def se_paired(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Standard error, in points, of the top-1 difference of two policies from their per-image hits (N,) on the same
    images: ``100 sqrt(d / N)``, ``d`` the discordant fraction (images exactly one of the two gets right)."""
    d = float(np.mean(a != b))
    return {"discordant": d, "se": 100.0 * math.sqrt(d / len(a))}


def search_val_noise(noise: Paired) -> list[dict[str, Any]]:
    """Per (regime, budget): the per-seed paired standard errors on search-val (:func:`se_paired`, keyed by
    (regime, budget)) and their mean ``se_mean`` in points."""
    return [
        {"regime": batch, "budget": budget, "seeds": tests, "se_mean": float(np.mean([t["se"] for t in tests]))}
        for (batch, budget), tests in noise.items()
    ]


def learning(history: list[dict[str, Any]], warmup: int) -> dict[str, Any]:
    """The agent's learning diagnostics from its episode history (:class:`~hysquant_rl.search.recorder.Recorder`).
    Episodes 0..``warmup`` (``agent.warmup_episodes``) come before the updates; of the episodes after them,
    ``new_policy_fraction`` evaluated a policy not seen before in the run (None: there are none).
    ``last_improvement``: the last episode whose reward beat every earlier one; ``improved``: it lies after the
    warm-up, i.e. the best reward over all episodes beats the best over episodes <= ``warmup``. Skipped (NaN)
    episodes carry no reward. ``proposed_new_fraction``: of the episodes after the warm-up, those whose policy the
    actor and its noise proposed was new, before the novelty step (the agent's own exploration, collapse or not).
    ``critic_tau``, ``critic_p``, ``critic_pairs``: Kendall's tau between the critic's predicted gains over the
    incumbent of the episodes after the warm-up and their realised gains
    (:func:`hysquant_rl.search.ranking.prospective_pairs`), its one-sided p-value and the number of episodes."""
    after = [e for e in history if e["episode"] > warmup]
    scored = [(int(e["episode"]), float(e["reward"])) for e in history if not e.get("skipped", False)]
    last, best = None, -math.inf
    for episode, reward in scored:
        if reward > best:
            last, best = episode, reward
    warm = [reward for episode, reward in scored if episode <= warmup]
    critic = kendall(*prospective_pairs(history, warmup))
    return {
        "warmup_episodes": int(warmup),
        "episodes": len(history),
        "episodes_after_warmup": len(after),
        "new_policy_fraction": sum(not e.get("cached", False) for e in after) / len(after) if after else None,
        "proposed_new_fraction": (
            sum(not e.get("proposed_repeat", False) for e in after) / len(after) if after else None
        ),
        "best_reward_warmup": max(warm) if warm else None,
        "best_reward": best if scored else None,
        "last_improvement": last,
        "improved": last is not None and last > warmup,
        # the critic's prospective ranking after the warm-up (hysquant_rl.search.ranking): tau, one-sided p, pairs
        "critic_tau": critic["tau"],
        "critic_p": critic["p"],
        "critic_pairs": critic["pairs"],
    }


def room(table: list[dict[str, Any]], fp32_top1: float, reference: str, min_room: float) -> list[dict[str, Any]]:
    """Per (regime, budget): FP32's test top-1 minus ``reference``'s mean (None where it found no policy), and
    whether that room is at least ``min_room`` points."""
    out = []
    for t in table:
        if t["method"] != reference:
            continue
        top1 = float(t["test_top1_mean"]) if t["found"] else None
        gap = None if top1 is None else fp32_top1 - top1
        out.append(
            {
                "regime": int(t["regime"]),
                "budget": t["budget"],
                "reference_top1": top1,
                "room": gap,
                "met": gap is not None and gap >= min_room - EPS,
            }
        )
    return out
