"""Backend ``onnxruntime``: a policy's latency measured by timing its exported ONNX graph with onnxruntime.

:class:`OnnxRuntimeCheck` exports the policy (:func:`hysquant_rl.export_onnx.export_onnx`, the file a user deploys),
opens it in onnxruntime's CPU provider on ``timing.threads`` intra-op threads (all graph optimisations on), feeds a
fixed random batch of the cost model's batch size, runs it ``timing.warmup`` times untimed, then ``timing.repeats``
times timed one by one (``time.perf_counter``); the latency is the median, and the coefficient of variation
(stdev / mean) says how steady the machine was. A timing with CV above ``timing.max_cv`` is measured once more, and
is an error if it is still unsteady. Results are cached by policy (its (L, 2) bits), so the hardware-feedback
loop and the summary never time one policy twice.

Only latency is measured: energy, size, BitOps and the per-unit arrays of the returned
:class:`~hysquant_rl.hardware.cost.PolicyCost` stay the roofline's (``modelled``), and the summary says so.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from hysquant_rl.errors import HySquantError
from hysquant_rl.export_onnx import INPUT, export_onnx, onnx_session
from hysquant_rl.hardware.cost import CostModel, PolicyCost
from hysquant_rl.hardware.profile import Timing, runtime_version

if TYPE_CHECKING:
    from hysquant_rl.policy import QuantPolicy
    from hysquant_rl.quant.model import QuantModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Measurement:
    """One policy's timing: median latency [s] of ``runs`` runs at ``batch_size`` images, and their CV."""

    latency_s: float
    cv: float
    runs: int
    batch_size: int
    threads: int

    def describe(self) -> str:
        return f"{1e3 * self.latency_s:.4g} ms (CV {self.cv:.3f}, median of {self.runs}, {self.threads} thread(s))"


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


class OnnxRuntimeCheck:
    """Latency of a policy measured on this machine's CPU by onnxruntime; the rest from ``cost`` (the roofline).

    ``qmodel`` is the calibrated quantizer (its units in ``cost``'s order), ``policy_of(bits)`` builds the
    :class:`QuantPolicy` the export writes into the graph, ``input_shape`` is one image's (C, H, W).
    """

    backend = "onnxruntime"

    def __init__(
        self,
        qmodel: QuantModel,
        policy_of: Callable[[np.ndarray], QuantPolicy],
        input_shape: Sequence[int],
        cost: CostModel,
        timing: Timing,
        seed: int = 0,
    ) -> None:
        self.runtime = runtime_version()
        self.qmodel, self.policy_of, self.cost, self.timing = qmodel, policy_of, cost, timing
        self.device = f"{cost.device} ({self.runtime})"
        self.batch_size = cost.batch_size
        self.input_shape = tuple(input_shape)
        images = np.random.default_rng(seed).standard_normal((cost.batch_size, *input_shape)).astype(np.float32)
        self.feed = {INPUT: images}  # a fixed batch of the cost model's size
        self.measurements: dict[bytes, Measurement] = {}

    def open(self, bits: np.ndarray | Sequence[tuple[int, int]]) -> Any:
        """An onnxruntime session of the policy's exported graph (exported to a temporary file, then removed)."""
        policy = self.policy_of(np.asarray(bits, dtype=np.int64))
        self.qmodel.apply_bits(policy.bits())
        with tempfile.TemporaryDirectory() as tmp:
            path = export_onnx(self.qmodel, policy, self.input_shape, tmp)
            session = onnx_session(path, self.timing.threads)
        time.sleep(0.2)  # the exporter's torch threads go idle before a clock starts
        return session

    def measure(self, bits: np.ndarray | Sequence[tuple[int, int]]) -> Measurement:
        """The policy's :class:`Measurement` (cached by its bits)."""
        key = np.asarray(bits, dtype=np.int64).tobytes()
        if key not in self.measurements:
            session = self.open(bits)
            m = self.summarise(run_times(session, self.feed, self.timing.warmup, self.timing.repeats))
            if m.cv > self.timing.max_cv:  # one more try: a neighbour's burst should not fail a search
                m = self.summarise(run_times(session, self.feed, self.timing.warmup, self.timing.repeats))
            if m.cv > self.timing.max_cv:
                raise HySquantError(
                    f"onnxruntime timing too unsteady: CV {m.cv:.3f} > hardware.timing.max_cv {self.timing.max_cv} over"
                    f" {m.runs} runs; stop other jobs on this machine or raise hardware.timing.max_cv"
                )
            self.measurements[key] = m
        return self.measurements[key]

    def summarise(self, times: Sequence[float]) -> Measurement:
        """Median and coefficient of variation of run times [s]."""
        return Measurement(
            latency_s=statistics.median(times),
            cv=statistics.stdev(times) / statistics.fmean(times),
            runs=len(times),
            batch_size=self.batch_size,
            threads=self.timing.threads,
        )

    def policy_cost(self, bits: np.ndarray | Sequence[tuple[int, int]]) -> PolicyCost:
        """The roofline's :class:`PolicyCost` with ``latency_s`` measured and ``backend`` ``onnxruntime``."""
        modelled = self.cost.policy_cost(bits)
        m = self.measure(bits)
        log.info("measured on %s at batch %d: %s", self.runtime, self.batch_size, m.describe())
        return replace(modelled, latency_s=m.latency_s, backend=self.backend, device=self.device)
