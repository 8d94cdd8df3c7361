"""Running the transfer experiment (:class:`~hysquant_rl.bench.transfer_plan.TransferPlan`): does what one agent learns
over several budgets pay at budgets it was not trained on?

Per seed: a budget-conditioned agent (the app layer's :class:`Learner`, ``agents/``) is trained over the plan's
training budgets of one regime and saved as an artefact; every training evaluation is kept. Then at each held-out
budget every arm (:data:`~hysquant_rl.bench.transfer_plan.ARMS`) answers with the largest k of the plan, and its
answer at each smaller k is the best (by search-val reward, within the budget) of its first k evaluations; each arm's
first evaluation is its own answer at k = 0. The agent answers from a fresh copy of the artefact at each held-out
budget (it learns as it answers). Search-val evaluations are shared through one cache (each arm still counts the
policies it evaluated); every answer is evaluated once on the test split. Each held-out budget also measures how the
trained critic and the surrogate rank the policies the ``local`` arm evaluated there (Kendall's tau).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from hysquant_rl.bench.budgets import CLEAR_BUDGETS, budget_label, budget_limit
from hysquant_rl.bench.run import Configure, Hits, regime_pipe
from hysquant_rl.bench.transfer_plan import AGENT, FROZEN, ILP, LOCAL, NEAREST, SURROGATE, TransferPlan
from hysquant_rl.io import save_json
from hysquant_rl.pipeline import Pipeline
from hysquant_rl.search.baselines import LocalSearch
from hysquant_rl.search.budget import Budgets, span, within
from hysquant_rl.search.problem import SearchProblem, build_problem, policy_key
from hysquant_rl.search.ranking import kendall
from hysquant_rl.search.recorder import Recorder
from hysquant_rl.search.surrogate import Surrogate, SurrogateSearch, evaluated
from hysquant_rl.settings import TRANSFER_METHOD, SearchSettings

log = logging.getLogger(__name__)
Answers = dict[tuple[int, str, int, str], np.ndarray]  # (seed, budget, k, arm) -> the answer's policy (L, 2)


class Learner(Protocol):
    """The budget-conditioned agent as the bench uses it (``agents/conditioned.py``, ``agents/storage.py``): train
    one over budgets, save it, load a fresh copy. The agent answers (``answer``), scores policies for a target
    (``score``, ``target``), and names the nearest training budget (``nearest``; its ``best`` episode)."""

    def train(
        self, search: SearchSettings, problem: SearchProblem, budgets: list[dict[str, float]], episodes: int
    ) -> Any: ...

    def save(self, agent: Any, folder: Path) -> Path: ...

    def load(self, folder: Path, search: SearchSettings, problem: SearchProblem) -> Any: ...


class Memo:
    """Search-val metrics of policies (L, 2) evaluated on ``pipe``, each once for the whole experiment."""

    def __init__(self, pipe: Pipeline) -> None:
        self.pipe = pipe
        self.cache: dict[bytes, dict[str, float]] = {}

    def __call__(self, bits: np.ndarray) -> dict[str, float]:
        key = policy_key(bits)
        if key not in self.cache:
            self.cache[key] = self.pipe.evaluator.evaluate(np.asarray(bits).tolist(), "search_val").to_dict()
        return self.cache[key]


def best_of(history: list[dict[str, Any]], limits: dict[str, float], k: int) -> np.ndarray | None:
    """The best-rewarded policy (L, 2) within ``limits`` among the first ``k`` episodes of ``history`` (a recorder's),
    None when there is none."""
    ok = [e for e in history[:k] if not e["skipped"] and all(within(e, limits).values())]
    best = max(ok, key=lambda e: e["reward"], default=None)
    return None if best is None else np.asarray(best["bits"])


def run_transfer(
    tp: TransferPlan,
    configure: Configure,
    learner: Learner,
    out: Path,
    base: Pipeline,
    hits: Hits,
    result: dict[str, Any],
) -> dict[str, Any]:
    """The experiment into ``out/runs/transfer/`` (``base`` and ``hits``: :func:`hysquant_rl.bench.run.prepare`'s;
    ``result``: bench.json's record, rewritten after every seed with ``result["transfer"]`` so far). Returns the
    experiment's record: the plan's budgets (``budgets``: label, fraction, limit, ratio of W8A8, training or held
    out, ILP test top-1), ``training`` per seed, every ``answers`` row, the rankers' ``tau`` per seed and held-out
    budget, and ``hits_of`` (not JSON): (seed, budget, k, arm) -> the answer's per-image test hits (N,) or None, for
    the paired statistics (:func:`hysquant_rl.bench.transfer_verdict.cases`)."""
    runner = TransferRun(tp, configure, learner, out, hits, result)
    runner.setup(base)
    for seed in tp.seeds:
        runner.seed(seed)
    return {**runner.record, "hits_of": runner.hits_of}


class TransferRun:
    """The experiment's state: the regime's pipeline, LUT and span, the shared search-val cache, the record."""

    def __init__(
        self, tp: TransferPlan, configure: Configure, learner: Learner, out: Path, hits: Hits, result: dict[str, Any]
    ) -> None:
        self.tp, self.configure, self.learner, self.hits, self.result = tp, configure, learner, hits, result
        self.root, self.out = out, out / "runs" / "transfer"
        self.answers: Answers = {}
        self.record: dict[str, Any] = {"budgets": [], "training": [], "answers": [], "tau": []}

    def setup(self, base: Pipeline) -> None:
        """The regime's pipeline and LUT, the budgets' limits, and the ILP's test top-1 at every budget (the room)."""
        tp = self.tp
        _, self.pipe, self.lut = regime_pipe(base, self.configure, tp.batch, self.result)
        self.memo = Memo(self.pipe)
        low, self.w8a8 = span(self.pipe.cost, self.lut.mask())
        self.limit = {f: budget_limit(low, self.w8a8, tp.key, f) for f in (*tp.train, *tp.held_out)}
        probe = self.problem(tp.seeds[0], tp.train[0])
        for f, limit in self.limit.items():
            probe.limits = {tp.key: limit}
            bits = probe.ilp()
            top1 = None if bits is None else self.hits(probe.fitted(bits), "test")[0]["top1"]
            self.record["budgets"].append(
                {
                    "budget": budget_label(tp.kind, f),
                    "fraction": f,
                    "limit": limit,
                    "ratio_of_w8a8": limit / self.w8a8[tp.key],
                    "role": "train" if f in tp.train else "held out",
                    "ilp_test_top1": top1,
                }
            )

    def settings(self, seed: int, fraction: float) -> SearchSettings:
        """The bench config's search settings for ``search.method=rl-cond`` at one budget, with ``seed`` and the
        plan's largest k as ``search.episodes``."""
        tp = self.tp
        return SearchSettings.from_mapping(
            self.configure(
                [
                    f"hardware.batch_size={tp.batch}",
                    *CLEAR_BUDGETS,
                    f"budget.{tp.key}={self.limit[fraction]!r}",
                    f"search.method={TRANSFER_METHOD}",
                    f"search.seed={seed}",
                    f"search.episodes={max(1, tp.k_max)}",
                ]
            )
        )

    def budgets(self, fraction: float) -> Budgets:
        key = self.tp.key
        return Budgets({key: self.limit[fraction]}, None, self.w8a8, "W8A8", self.w8a8)

    def problem(self, seed: int, fraction: float) -> SearchProblem:
        """A fresh search problem at one budget (its own evaluation cache, the shared search-val cache behind it)."""
        p = build_problem(self.settings(seed, fraction), self.pipe, self.lut, self.budgets(fraction))
        return replace(p, evaluate=self.memo)

    # -- one seed ------------------------------------------------------------------------------------------------
    def seed(self, seed: int) -> None:
        """Train the seed's agent, then answer every held-out budget with every arm."""
        tp = self.tp
        folder = self.out / f"seed{seed}" / "agent"
        train = self.problem(seed, tp.train[0])
        start = time.perf_counter()
        log.info("transfer, seed %d: training over %s, %d episodes", seed, tp.train, tp.episodes)
        agent = self.learner.train(
            self.settings(seed, tp.train[0]), train, [{tp.key: self.limit[f]} for f in tp.train], tp.episodes
        )
        self.learner.save(agent, folder)
        seen = evaluated(train.cache)
        self.record["training"].append(
            {
                "seed": seed,
                "episodes": len(agent.history),
                "evaluations": len(train.cache),
                "wall_s": time.perf_counter() - start,
                "targets": [
                    {
                        "budget": budget_label(tp.kind, f),
                        "baseline": t.baseline,
                        "best_reward": None if t.best is None else float(t.best["reward"]),
                    }
                    for f, t in zip(tp.train, agent.targets)
                ],
                "history": agent.history,
            }
        )
        for f in tp.held_out:
            self.held_out(seed, f, folder, seen)
        save_json({**self.result, "transfer": self.record}, self.root / "bench.json")

    def held_out(self, seed: int, f: float, folder: Path, seen: tuple[np.ndarray, np.ndarray]) -> None:
        """Every arm at one held-out budget (fraction ``f``), and the rankers' tau on the ``local`` arm's policies."""
        tp = self.tp
        label, limits = budget_label(tp.kind, f), {tp.key: self.limit[f]}
        log.info("transfer, seed %d, %s: the arms", seed, label)
        problem = self.problem(seed, f)
        ilp = problem.ilp()
        if ilp is not None:
            self.answer(seed, label, 0, ILP, problem.fitted(ilp), evaluations=0)
        local = self.climb(seed, f, LOCAL, lambda s, p, r, o: LocalSearch(s, p, r, o))
        agent = self.learner.load(folder, self.settings(seed, f), self.problem(seed, f))
        nearest = agent.nearest(f)
        start = None if nearest.best is None else np.asarray(nearest.best["bits"])  # None: from the ILP
        self.climb(seed, f, NEAREST, lambda s, p, r, o: LocalSearch(s, p, r, o, start=start))
        self.climb(seed, f, SURROGATE, lambda s, p, r, o: SurrogateSearch(s, p, r, o, seen, s.candidates))
        for arm, frozen in ((AGENT, False), (FROZEN, True)):
            self.climb(seed, f, arm, lambda s, p, r, o, frozen=frozen: _Answer(self.learner, folder, s, p, r, frozen))
        # how the trained critic and the surrogate rank the policies local evaluated here (neither saw them)
        policies = [np.asarray(e["bits"]) for e in local if not e["skipped"]]
        rewards = [e["reward"] for e in local if not e["skipped"]]
        fresh = self.learner.load(folder, self.settings(seed, f), self.problem(seed, f))
        critic = fresh.score(fresh.target(limits), policies)
        surrogate = -Surrogate.fit(problem.proxy, *seen).predict(np.stack(policies)) if policies else []
        self.record["tau"].append(
            {
                "seed": seed,
                "budget": label,
                "critic": kendall(critic, rewards),
                "surrogate": kendall(surrogate, rewards),
            }
        )

    def climb(self, seed: int, f: float, arm: str, make: Any) -> list[dict[str, Any]]:
        """One arm's search at held-out budget ``f`` with the plan's largest k (``make(search, problem, recorder,
        out)`` builds it), its answers at every k recorded; returns its episode history."""
        tp = self.tp
        label, limits = budget_label(tp.kind, f), {tp.key: self.limit[f]}
        search, problem = self.settings(seed, f), self.problem(seed, f)
        out = self.out / label.replace(" ", "_") / arm / f"seed{seed}"
        recorder = Recorder(self.pipe, out, arm, seed, self.budgets(f))
        method = make(search, problem, recorder, out)
        if 0 in tp.evaluations and arm not in (LOCAL, FROZEN):  # local's k = 0 is the ILP, rl-frozen's the agent's
            first = method.initial()
            if first is not None:
                self.answer(seed, label, 0, arm, problem.fitted(first), evaluations=0)
        if tp.k_max > 0:
            method.run(dict(limits))
        history = recorder.history
        for k in (k for k in tp.evaluations if k > 0):
            bits = best_of(history, limits, k)
            if bits is not None:
                self.answer(seed, label, k, arm, bits, evaluations=sum(not e["cached"] for e in history[:k]))
        return history

    def hits_of(self, seed: int, label: str, k: int, arm: str) -> np.ndarray | None:
        """The per-image test hits (N,) of an answer, None where the arm gave none."""
        bits = self.answers.get((seed, label, k, arm))
        return None if bits is None else self.hits(bits, "test")[1]

    def answer(self, seed: int, label: str, k: int, arm: str, bits: np.ndarray, evaluations: int) -> None:
        """One answer's row: its test top-1 (evaluated once per policy), search-val metrics (from the shared cache:
        evaluated for the record where the arm did not), modelled cost, the evaluations it spent."""
        bits = np.asarray(bits)
        self.answers[(seed, label, k, arm)] = bits
        val = self.memo(bits)
        totals = self.pipe.cost.policy_cost(bits).totals()
        f = next(b["fraction"] for b in self.record["budgets"] if b["budget"] == label)
        self.record["answers"].append(
            {
                "seed": seed,
                "budget": label,
                "k": k,
                "arm": arm,
                "test_top1": self.hits(bits, "test")[0]["top1"],
                "search_val_top1": val["top1"],
                "search_val_kl": val["kl"],
                self.tp.key: float(totals[self.tp.key]),
                "within_budget": bool(within(totals, {self.tp.key: self.limit[f]})[self.tp.key]),
                "evaluations": evaluations,
            }
        )


class _Answer:
    """The agent as an arm: ``initial()`` is its greedy answer (k = 0), ``run`` answers with the search's
    ``episodes`` evaluations from a fresh copy of the artefact in ``folder`` (the actor frozen with ``frozen``),
    recording each episode."""

    def __init__(
        self,
        learner: Learner,
        folder: Path,
        search: SearchSettings,
        problem: SearchProblem,
        recorder: Recorder,
        frozen: bool,
    ) -> None:
        self.learner, self.folder, self.search, self.problem = learner, folder, search, problem
        self.recorder, self.frozen = recorder, frozen

    def initial(self) -> np.ndarray:
        agent = self.learner.load(self.folder, self.search, self.problem)
        greedy, _ = agent.answer(dict(self.problem.limits), 0)
        return greedy

    def run(self, limits: dict[str, float]) -> None:
        agent = self.learner.load(self.folder, self.search, self.problem)
        agent.answer(dict(limits), self.search.episodes, self.recorder.record, self.frozen)
