"""Per-episode bookkeeping shared by every search method: TensorBoard scalars, the episode history, and the best
feasible policy, kept on disk as ``best_policy.json`` by :func:`save_best_policy` (its one writer)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hysquant_rl.bits import FP32_BITS, mean_bits
from hysquant_rl.budget_kinds import KEYS
from hysquant_rl.policy import QuantPolicy
from hysquant_rl.search.budget import Budgets, within
from hysquant_rl.search.ranking import SCORE
from hysquant_rl.units import ACTIVATION_KINDS

if TYPE_CHECKING:
    from hysquant_rl.pipeline import Pipeline

log = logging.getLogger(__name__)
BEST_POLICY = "best_policy.json"
SCALARS = (
    *("reward", "top1", "top5", "kl", *KEYS, "bitops"),
    *("mean_w_bits", "mean_a_bits", "fp32_fraction"),
)


def save_best_policy(
    out: Path,
    pipe: Pipeline,
    bits: np.ndarray,
    metrics: dict[str, Any],
    *,
    method: str,
    seed: int,
    episodes: int,
    wall_time_s: float,
    budgets: Budgets,
    **provenance: Any,
) -> QuantPolicy:
    """Write ``out/best_policy.json`` (atomically): ``bits`` (L, 2) for ``pipe``'s model with the ``metrics``
    block (:meth:`Pipeline.measure`'s, plus what the caller knows) and the search's provenance."""
    policy = pipe.policy(
        bits,
        method=method,
        seed=seed,
        episodes=episodes,
        wall_time_s=wall_time_s,
        budgets=budgets.to_dict(),
        metrics=metrics,
        **provenance,
    )
    policy.save(out / BEST_POLICY)
    return policy


@dataclass
class Recorder:
    """Records every evaluated episode (``record``), rewrites ``best_policy.json`` on every improvement among the
    feasible policies that meet the accuracy floor, and logs to TensorBoard (``writer``, optional)."""

    pipe: Pipeline
    out: Path
    method: str
    seed: int
    budgets: Budgets
    writer: Any = None
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    started: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        units = self.pipe.units
        self.weighted = np.array([unit.weighted for unit in units])  # (L,): units with a weight
        self.kinds = {  # activation-only kind -> (L,) mask of its units
            kind: np.array([unit.kind == kind for unit in units])
            for kind in ACTIVATION_KINDS
            if any(unit.kind == kind for unit in units)
        }
        if self.writer is not None:  # what the episode/*_ms and *_mj scalars are
            cost = self.pipe.cost
            self.writer.add_text(
                "cost/source",
                f"episode/latency_ms and episode/energy_mj are modelled: the {cost.backend} roofline of the"
                f" {cost.device} profile at batch {cost.batch_size}. A hardware backend's measured figures are in"
                " summary.md.",
                0,
            )

    def record(self, info: dict[str, Any]) -> None:
        """One episode's record (:meth:`SearchProblem.finish`)."""
        episode = len(self.history)
        m, t = info["metrics"], info["totals"]
        bits = np.asarray(info["bits"])
        entry = {
            "episode": episode,
            "reward": info["reward"],
            "feasible": bool(info["feasible"]),
            "skipped": bool(info.get("skipped", False)),
            "cached": bool(info.get("cached", False)),  # evaluated before in this run (SearchProblem.finish)
            # the agent's proposal had been evaluated before and the novelty step chose another (envs/parallel.py)
            "proposed_repeat": bool(info.get("proposed_repeat", False)),
            # the critic's predicted gain over the incumbent, made before the evaluation (None: not scored)
            SCORE: info.get(SCORE),
            "top1": m["top1"],
            "top5": m["top5"],
            "kl": m["kl"],
            "loss": m["loss"],
            **t,
            "bitops": int(self.pipe.cost.policy_cost(bits).bitops),
            **mean_bits(bits, self.weighted),  # over the integer operands; FP32 units are counted apart
            "bits": bits.tolist(),
        }
        self.history.append(entry)
        if info.get("skipped"):
            log.warning("episode %d: evaluation returned NaN; episode skipped", episode)
            return
        better = self.best is None or info["reward"] > self.best["reward"]
        improved = info["feasible"] and self.budgets.meets_floor(m["top1"]) and better
        if improved:
            self.best = entry
            self.save_best(m)
        if self.writer is not None:
            self._log(entry, bits, improved)

    def _log(self, entry: dict[str, Any], bits: np.ndarray, improved: bool) -> None:
        w, episode = self.writer, entry["episode"]
        for key in SCALARS:
            if entry[key] is not None:
                w.add_scalar(f"episode/{key}", entry[key], episode)
        if self.best is not None:
            w.add_scalar("best/reward", self.best["reward"], episode)
            w.add_scalar("best/top1", self.best["top1"], episode)
        quantized = bits != FP32_BITS  # histograms of the quantized operands' bits (FP32: episode/fp32_fraction)
        for name, values in (
            ("w_bits", bits[self.weighted & quantized[:, 0], 0]),
            ("a_bits", bits[quantized[:, 1], 1]),
        ):
            if values.size:
                w.add_histogram(f"policy/{name}", values, episode)
        for kind, where in self.kinds.items():  # the transformer's activation-only units, one histogram per kind
            if (where & quantized[:, 1]).any():
                w.add_histogram(f"policy/a_bits/{kind}", bits[where & quantized[:, 1], 1], episode)
        if improved:
            rows = "\n".join(
                f"| {unit.name} | {b[0] if unit.weighted else '-'} | {b[1]} |" for unit, b in zip(self.pipe.units, bits)
            )
            w.add_text(
                "best/policy",
                f"episode {episode}, reward {entry['reward']:.4f}\n\n| layer | w | a |\n|---|---|---|\n{rows}",
                episode,
            )

    def best_within(self, limits: dict[str, float]) -> np.ndarray | None:
        """The best-rewarded evaluated policy that meets ``limits`` and the accuracy floor."""
        ok = [
            e
            for e in self.history
            if not e["skipped"] and all(within(e, limits).values()) and self.budgets.meets_floor(e["top1"])
        ]
        best = max(ok, key=lambda e: e["reward"], default=None)
        return None if best is None else np.asarray(best["bits"])

    def save_best(self, search_val: dict[str, float]) -> None:
        b = self.best
        bits = np.asarray(b["bits"])
        metrics = {
            **self.pipe.measure(bits, known={"search_val": search_val}),
            "episode": b["episode"],
            "reward": b["reward"],
        }
        save_best_policy(
            self.out,
            self.pipe,
            bits,
            metrics,
            method=self.method,
            seed=self.seed,
            episodes=len(self.history),
            wall_time_s=time.perf_counter() - self.started,
            budgets=self.budgets,
        )
