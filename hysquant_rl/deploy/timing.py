"""Runtime backends (``hardware.backend=<runtime>``): a policy's latency measured by timing, on this machine's CPU, the
file a user deploys.

:class:`RuntimeCheck` gets a policy's graph (in the executable space its runtime's layout,
:mod:`hysquant_rl.deploy.runtime_graph`; in the simulated space the paper's layout,
:mod:`hysquant_rl.deploy.simulated_onnx`), opens it in the runtime (:mod:`hysquant_rl.deploy.runtimes`:
onnxruntime's CPU provider with every graph optimisation on, or OpenVINO's CPU plugin) on ``timing.threads``
threads, feeds a fixed random batch of the cost model's batch size, runs it
``timing.warmup`` times untimed, then ``timing.repeats`` times timed one by one (``time.perf_counter``). The latency
is the median; the coefficient of variation (stdev / mean) says how steady the machine was.

A busy machine (another process on the cores) makes single runs slow and the CV large. A timing whose CV exceeds
``timing.max_cv`` is measured again after a pause (``timing.pause_s``, doubling: another job's burst often passes),
pooling every run so far; the estimate is the median of the pooled runs and its steadiness the CV of the fastest half
(runs a neighbour slowed down lie in the slow half). If it is still above ``max_cv`` after ``timing.attempts`` attempts,
:class:`UnsteadyTiming` says the check could not be made: the search loop then ends with its own results written
and an exit status that says the check is missing.

Results are cached by policy (its (L, 2) bits), so the hardware-feedback loop and the summary never time one policy
twice. Only latency is measured: energy, size, BitOps and the per-unit arrays of the returned
:class:`~hysquant_rl.hardware.cost.PolicyCost` stay the cost model's, and the summary says so.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from hysquant_rl import machine
from hysquant_rl.deploy.runtimes import INPUT, Runtime
from hysquant_rl.errors import HySquantError
from hysquant_rl.hardware.cost import CostModel, PolicyCost
from hysquant_rl.hardware.profile import Timing

log = logging.getLogger(__name__)


class UnsteadyTiming(HySquantError):
    """The machine was too busy to time a policy: the hardware check could not be made (exit status 3)."""

    exit_code = 3


@dataclass(frozen=True)
class Measurement:
    """One policy's timing: median latency [s] of ``runs`` runs at ``batch_size`` images, and the CV that judged how
    steady they were (of the fastest half of the runs when a retry pooled several timings)."""

    latency_s: float
    cv: float
    runs: int
    batch_size: int
    threads: int
    attempts: int = 1

    def describe(self) -> str:
        retried = f", {self.attempts} attempts" if self.attempts > 1 else ""
        return (
            f"{1e3 * self.latency_s:.4g} ms (CV {self.cv:.3f}, median of {self.runs}, {self.threads} thread(s)"
            f"{retried})"
        )


def run_times(session: Any, feed: dict[str, np.ndarray], warmup: int, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` runs of ``session`` on the inputs ``feed``, timed one by one after ``warmup``
    runs."""
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return times


def cv(times: Sequence[float]) -> float:
    """Coefficient of variation (stdev / mean) of run times."""
    return statistics.stdev(times) / statistics.fmean(times)


def interleaved(
    sessions: Mapping[str, Any], feed: dict[str, np.ndarray], warmup: int, repeats: int, rounds: int
) -> dict[str, list[float]]:
    """Seconds per run of each session, side by side: the medians of ``rounds`` interleaved rounds of ``repeats`` runs
    each (after ``warmup`` runs in the first round, 2 in the others), so that a slow spell of the machine falls on
    every model alike. A model's figure is the median of its round medians (:func:`side_by_side`)."""
    medians: dict[str, list[float]] = {k: [] for k in sessions}
    for r in range(rounds):
        for k, sess in sessions.items():
            medians[k].append(statistics.median(run_times(sess, feed, warmup if r == 0 else 2, repeats)))
    return medians


def side_by_side(rounds: Mapping[str, Sequence[float]]) -> tuple[dict[str, float], float]:
    """Each model's seconds (the median of its round medians, :func:`interleaved`) and how steady the machine was: the
    largest coefficient of variation of a model's round medians."""
    spread = max((cv(v) for v in rounds.values() if len(v) > 1), default=0.0)
    return {k: statistics.median(v) for k, v in rounds.items()}, spread


class RuntimeCheck:
    """Latency of a policy measured on this machine's CPU by ``runtime``; the rest from ``cost`` (the cost model).
    ``backend`` is the runtime's name.

    ``graph_of(bits)`` gives a policy's serialised ONNX graph (the file the user deploys), ``input_shape`` is one
    image's (C, H, W), ``space`` names the layout (``executable``: the runtime's; ``simulated``: the paper's).
    """

    measured = True

    def __init__(
        self,
        graph_of: Callable[[np.ndarray], bytes],
        input_shape: Sequence[int],
        cost: CostModel,
        timing: Timing,
        space: str,
        runtime: Runtime,
        seed: int = 0,
    ) -> None:
        self.engine = runtime
        self.backend = self.engine.name
        self.runtime = self.engine.version()
        self.graph_of, self.cost, self.timing, self.space = graph_of, cost, timing, space
        self.device = f"{machine.describe()} ({self.runtime}, {space} layout)"
        self.batch_size = cost.batch_size
        self.input_shape = tuple(input_shape)
        images = np.random.default_rng(seed).standard_normal((cost.batch_size, *input_shape)).astype(np.float32)
        self.feed = {INPUT: images}  # a fixed batch of the cost model's size
        self.measurements: dict[bytes, Measurement] = {}

    def open(self, bits: np.ndarray | Sequence[tuple[int, int]]) -> Any:
        """A session of the policy's graph on the runtime, on ``timing.threads`` threads."""
        return self.engine.session(self.graph_of(np.asarray(bits, dtype=np.int64)), self.timing.threads)

    def measure(self, bits: np.ndarray | Sequence[tuple[int, int]]) -> Measurement:
        """The policy's :class:`Measurement` (cached by its bits); :class:`UnsteadyTiming` when the machine stays too
        busy to time it (see the module docstring)."""
        key = np.asarray(bits, dtype=np.int64).tobytes()
        if key not in self.measurements:
            session = self.open(bits)
            time.sleep(0.2)  # the exporter's threads go idle before a clock starts
            t = self.timing
            times = run_times(session, self.feed, t.warmup, t.repeats)
            steadiness, attempts = cv(times), 1
            while steadiness > t.max_cv and attempts < t.attempts:
                pause = t.pause_s * 2 ** (attempts - 1)
                log.warning(
                    "%s timing unsteady (CV %.3f > hardware.timing.max_cv %s): timing again in %g s",
                    self.backend,
                    steadiness,
                    t.max_cv,
                    pause,
                )
                time.sleep(pause)
                times += run_times(session, self.feed, t.warmup, t.repeats)
                attempts += 1
                steadiness = cv(sorted(times)[: len(times) // 2])  # the fastest half: runs a neighbour slowed
            if steadiness > t.max_cv:
                raise UnsteadyTiming(
                    f"{self.backend} timing too unsteady: CV {steadiness:.3f} > hardware.timing.max_cv {t.max_cv} after"
                    f" {attempts} attempts of {t.repeats} runs; stop other jobs on this machine or raise"
                    " hardware.timing.max_cv"
                )
            self.measurements[key] = Measurement(
                latency_s=statistics.median(times),
                cv=steadiness,
                runs=len(times),
                batch_size=self.batch_size,
                threads=t.threads,
                attempts=attempts,
            )
        return self.measurements[key]

    def policy_cost(self, bits: np.ndarray | Sequence[tuple[int, int]]) -> PolicyCost:
        """The cost model's :class:`PolicyCost` with ``latency_s`` measured and ``backend`` the runtime's name."""
        modelled = self.cost.policy_cost(bits)
        m = self.measure(bits)
        log.info("measured on %s at batch %d: %s", self.runtime, self.batch_size, m.describe())
        return replace(modelled, latency_s=m.latency_s, backend=self.backend, device=self.device)
