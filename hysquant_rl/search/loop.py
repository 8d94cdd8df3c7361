"""The outer loop of paper section 3.3: budgets -> a search method on search-val -> the best feasible policy
checked on the hardware backend -> while a budget is missed, internal budgets tightened by checked/modelled
and the search repeated.

The method is given as a factory (``make_method(search, problem, recorder, out)``): the baselines of
:mod:`hysquant_rl.search.baselines`, or the RL agent the app layer adds from ``agents/``. The library never
imports ``envs/`` or ``agents/``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hysquant_rl.bits import parse_uniform
from hysquant_rl.deploy import Check, TimedCheck
from hysquant_rl.deploy.timing import UnsteadyTiming
from hysquant_rl.errors import NoPolicyError
from hysquant_rl.search.budget import Budgets, UnreachableBudget, reference_name, resolve
from hysquant_rl.search.problem import SearchProblem, build_problem
from hysquant_rl.search.recorder import Recorder

if TYPE_CHECKING:
    from hysquant_rl.lut.executor import Executor
    from hysquant_rl.lut.table import LUT
    from hysquant_rl.pipeline import Pipeline
    from hysquant_rl.settings import SearchSettings

log = logging.getLogger(__name__)

MethodFactory = Callable[["SearchSettings", SearchProblem, Recorder, Path], Any]


@dataclass
class SearchResult:
    """What a search found before the test split: the policy ``bits`` (L, 2) and how it was found."""

    bits: np.ndarray
    budgets: Budgets
    problem: SearchProblem  # search-val metrics cache, evaluation time
    recorder: Recorder
    rounds: list[dict[str, Any]]
    wall_s: float
    check: Check  # what the rounds were checked on: a cost model, or a runtime's timing (its measurements cached)
    unchecked: UnsteadyTiming | None = None  # why the last round's check could not be made (a busy machine)


def resolve_measured(search: SearchSettings, pipe: Pipeline, mask: np.ndarray, check: Check) -> Budgets:
    """:func:`~hysquant_rl.search.budget.resolve` of the run's budgets; on a timed runtime a latency budget below the
    cheapest policy is refused with the fastest policy measured too: of the model's cheapest, FP32 and uniform W8A8
    (in the space), the one whose whole graph runs fastest, against the reference."""
    try:
        return resolve(search.budget, pipe.cost, mask, pipe.space)
    except UnreachableBudget as e:
        if e.key != "latency_ms" or not isinstance(check, TimedCheck):
            raise
        name = reference_name(search.budget, pipe.space)
        ref_s = check.measure(pipe.uniform(parse_uniform(name))).latency_s
        tried = {"the model's cheapest": e.policy, "FP32": pipe.uniform((32, 32)), "W8A8": pipe.uniform((8, 8))}
        times = {k: check.measure(bits).latency_s for k, bits in tried.items()}
        best = min(times, key=times.__getitem__)
        raise UnreachableBudget(
            f"{e}; measured on {check.device} at batch {check.batch_size}, the fastest of {', '.join(tried)} is"
            f" {best}: {1e3 * times[best]:.4g} ms against {name}'s {1e3 * ref_s:.4g} ms, {times[best] / ref_s:.3f}x"
            f" {name}",
            e.key,
            e.limit,
            e.minimum,
            tried[best],
        ) from None


def search(
    search: SearchSettings,
    pipe: Pipeline,
    lut: LUT,
    out: Path,
    make_method: MethodFactory,
    log_lut: bool = True,
    executor: Executor | None = None,
) -> SearchResult:
    """Budgets -> ``make_method`` on search-val -> hardware check, re-searching with tightened internal budgets
    while the checked policy misses one (paper 3.3). Writes TensorBoard (with the LUT's heatmap when ``log_lut``:
    seconds of plotting) and best_policy.json to ``out``. ``executor``: workers that evaluate parallel episodes
    (``search.workers``)."""
    from torch.utils.tensorboard import SummaryWriter

    from hysquant_rl.lut.report import log_to_tensorboard

    start = time.perf_counter()
    # The search prices with the cost model; the check runs on the profile's backend (the same model when that is
    # the roofline). The internal budgets start at the user's and tighten by the checked-over-modelled ratio.
    from hysquant_rl.pipeline import make_check

    check = make_check(pipe)
    budgets = resolve_measured(search, pipe, lut.mask(), check)
    problem = build_problem(search, pipe, lut, budgets, executor)
    budgets = replace(budgets, min_top1=problem.min_top1)  # with budget.max_drop's floor, in every report of the run
    log.info("budgets on %s at batch %d: %s", pipe.cost.device, pipe.cost.batch_size, budgets.describe())
    recorder = Recorder(pipe, out, search.method, search.seed, budgets, writer=SummaryWriter(str(out / "tb")))
    if log_lut:
        log_to_tensorboard(lut, recorder.writer)

    internal = dict(budgets.limits)
    rounds: list[dict[str, Any]] = []
    method = make_method(search, problem, recorder, out)
    best_bits, unchecked = None, None
    try:
        for r in range(search.max_rounds):
            try:
                bits = method.run(internal, round_index=r)
            except NoPolicyError:
                if best_bits is None:
                    raise
                bits = None
            if bits is None and best_bits is not None:  # tightened past what any policy reaches: keep the last
                log.warning(
                    "round %d: no policy within the tightened internal budgets %s; the search ends with round %d's"
                    " policy, which missed a budget on %s",
                    r,
                    {k: round(v, 6) for k, v in internal.items()},
                    r - 1,
                    check.backend,
                )
                break
            if bits is None:
                raise NoPolicyError(
                    f"search.method={search.method} found no policy within {budgets.describe()}: relax the budgets"
                )
            modelled = {k: v for k, v in problem.totals(bits).items() if k in budgets.limits}
            try:
                checked = check.policy_cost(bits).totals()
            except UnsteadyTiming as e:  # the search's own results are still written; the exit status says so
                log.warning("round %d: the hardware check could not be made: %s", r, e)
                rounds.append(
                    {"round": r, "internal_limits": dict(internal), "modelled": modelled, "unchecked": str(e)}
                )
                best_bits, unchecked = bits, e
                break
            holds = budgets.holds(checked, problem.metrics(bits)["top1"])
            rounds.append(
                {
                    "round": r,
                    "internal_limits": dict(internal),
                    "modelled": modelled,
                    "checked": checked,
                    "backend": check.backend,
                    "device": check.device,
                    "holds": holds,
                }
            )
            if isinstance(check, TimedCheck):  # a timed runtime: its median, CV and run count
                rounds[-1]["timing"] = asdict(check.measure(bits))
            log.info(
                "round %d: checked on %s (%s): %s",
                r,
                check.backend,
                check.device,
                ", ".join(f"{k} {'ok' if v else 'MISSED'}" for k, v in holds.items()) or "no budget",
            )
            best_bits = bits
            if all(holds.values()):
                break
            for k, limit in budgets.limits.items():
                if not holds[k]:  # within the budget tolerance, as everywhere (budget.within)
                    internal[k] = internal[k] * limit / checked[k]
    finally:
        recorder.writer.close()
    wall = time.perf_counter() - start
    return SearchResult(np.asarray(best_bits), budgets, problem, recorder, rounds, wall, check, unchecked)
