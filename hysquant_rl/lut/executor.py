"""Policy evaluations as independent jobs, in-process or on Ray actors, behind one interface.

A :class:`Job` is one policy (a ``(w_bits, a_bits)`` pair per quantizable layer, forward order; 32 = FP32)
to be measured on one split; its :class:`Result` carries the split's :class:`~hysquant_rl.evaluate.Metrics`.
The LUT submits layers x configurations, the search submits episode policies: both call
:meth:`Executor.map`, which yields results as they complete (not in submission order).

* :class:`LocalExecutor` (``workers=1``, no ``ray.address``): evaluates in this process on the caller's
  pipeline; no Ray.
* :class:`RayExecutor`: ``workers`` Ray actors, each building the pipeline once from the run settings
  and evaluating many jobs. Locally it starts Ray with ``num_cpus=workers``; with ``ray.address`` it
  joins that cluster. Each actor runs torch on ``threads`` (the config's) or ``max(1, cores // workers)``
  threads, so actors do not oversubscribe the CPU and numbers do not depend on scheduling.

Every worker skips the all-FP32 start of a policy's forward pass (:class:`~hysquant_rl.lut.replay.PrefixReplay`).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from hysquant_rl.bits import FP32_BITS
from hysquant_rl.errors import HySquantError
from hysquant_rl.evaluate import Metrics
from hysquant_rl.lut.replay import PrefixReplay

if TYPE_CHECKING:
    from typing import Self  # Python 3.11+: imported for type checkers only

    from hysquant_rl.pipeline import Pipeline
    from hysquant_rl.settings import RunSettings

log = logging.getLogger(__name__)

DEFAULT_PREFIX_CACHE_MB = 1024.0  # for direct use; apps read eval.prefix_cache_mb (conf/base.yaml)
_IN_FLIGHT = 2  # jobs queued per actor: one running, one ready, so an actor never waits for the driver


# -- jobs --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One policy to measure: ``bits`` one (w_bits, a_bits) per layer in forward order (any int sequence or
    an (L, 2) array; stored as a tuple of int pairs), on ``split``; ``tag`` is the caller's label, returned
    unchanged with the result (e.g. ``(layer, config)``)."""

    bits: tuple[tuple[int, int], ...]
    split: str = "search_val"
    tag: Any = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "bits", tuple((int(w), int(a)) for w, a in self.bits))


@dataclass(frozen=True)
class Result:
    """The metrics of ``job``; ``evaluated``: a quantized forward pass ran (False for an all-FP32 policy,
    answered from the cached FP32 logits); ``seconds``: the worker's wall time for the job."""

    job: Job
    metrics: Metrics
    evaluated: bool
    seconds: float


# -- workers -----------------------------------------------------------------------------------------------


class Worker:
    """Evaluates jobs on one pipeline: through :class:`PrefixReplay` where a job's start is FP32, else
    :meth:`Evaluator.evaluate`. ``prefix_cache_mb``: the replay's memory per split (0 = off)."""

    def __init__(self, pipe: Pipeline, prefix_cache_mb: float = DEFAULT_PREFIX_CACHE_MB) -> None:
        self.pipe = pipe
        self.prefix_cache_mb = float(prefix_cache_mb)
        self._replays: dict[str, PrefixReplay] = {}

    def _replay(self, split: str) -> PrefixReplay:
        if split not in self._replays:
            self._replays[split] = PrefixReplay(self.pipe.evaluator, self.pipe.names, split, self.prefix_cache_mb)
        return self._replays[split]

    def evaluate(self, job: Job) -> Result:
        start = time.perf_counter()
        evaluator = self.pipe.evaluator
        before = evaluator.evaluations
        first = next((i for i, b in enumerate(job.bits) if b != (FP32_BITS, FP32_BITS)), None)
        # Set up the replay only for a job that could use it: search policies quantize layer 0.
        replay = first and self.prefix_cache_mb > 0 and getattr(evaluator, "replayable", True)
        k = self._replay(job.split).start(job.bits) if replay else 0
        if k > 0:
            metrics = self._replays[job.split].evaluate(job.bits, k)
        else:
            metrics = evaluator.evaluate(job.bits, job.split)
        return Result(job, metrics, evaluator.evaluations > before, time.perf_counter() - start)


class _RayWorker:
    """The body of one Ray actor: builds the pipeline once from the run settings, on its share of the cores."""

    def __init__(self, run: RunSettings, workers: int) -> None:
        from dataclasses import replace

        from hysquant_rl.pipeline import build
        from hysquant_rl.settings import default_threads

        threads = run.threads or default_threads(workers)
        torch.set_num_threads(threads)
        self.worker = Worker(build(replace(run, threads=threads)), run.eval.prefix_cache_mb)

    def evaluate(self, job: Job) -> Result:
        return self.worker.evaluate(job)

    def ready(self) -> bool:
        return True


# -- executors ---------------------------------------------------------------------------------------------


class Executor(ABC):
    """Runs jobs on ``workers`` workers. ``evaluations``: jobs that ran a quantized forward pass so far.
    Use as a context manager (or call :meth:`close`) to release the workers."""

    workers: int = 1

    def __init__(self) -> None:
        self.evaluations = 0

    @abstractmethod
    def map(self, jobs: Iterable[Job]) -> Iterator[Result]:
        """Run ``jobs``, yielding each result as it completes. Closing the iterator early (or an exception
        in the consumer) abandons the jobs not yet returned."""

    def close(self) -> None:  # noqa: B027 - optional hook: a local executor holds nothing to release
        """Release the workers."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalExecutor(Executor):
    """One in-process worker on the caller's pipeline, jobs in submission order."""

    def __init__(self, pipe: Pipeline, prefix_cache_mb: float = DEFAULT_PREFIX_CACHE_MB) -> None:
        super().__init__()
        self.worker = Worker(pipe, prefix_cache_mb)

    def map(self, jobs: Iterable[Job]) -> Iterator[Result]:
        for job in jobs:
            result = self.worker.evaluate(job)
            self.evaluations += result.evaluated
            yield result


class RayExecutor(Executor):
    """``run.lut.workers`` Ray actors, each with its own pipeline built from ``run``.

    Locally Ray starts with ``num_cpus=workers``; with ``run.ray.address`` it joins that cluster (which must
    accept a TCP connection within ``run.ray.connect_timeout_s``). Each actor keeps ``run.eval.prefix_cache_mb``
    of :class:`PrefixReplay` memory per split.

    Raises :class:`HySquantError` (one line) when Ray is missing or the address does not answer.
    """

    def __init__(self, run: RunSettings, workers: int | None = None) -> None:
        super().__init__()
        workers = run.lut.workers if workers is None else workers
        self.workers = workers
        self._ray, self._owns_ray = _connect(run.ray.address, workers, run.ray.connect_timeout_s)
        self._actors: list[Any] = []
        try:
            actor = self._ray.remote(num_cpus=1)(_RayWorker)
            self._actors = [actor.remote(run, workers) for _ in range(workers)]
            start = time.perf_counter()
            for a in self._actors:  # a pipeline that fails to build fails here, with its own message
                _ray_result(self._ray, a.ready.remote())
        except BaseException:
            self.close()
            raise
        log.info("%d Ray workers ready in %.1f s", workers, time.perf_counter() - start)

    def map(self, jobs: Iterable[Job]) -> Iterator[Result]:
        ray = self._ray
        pending = iter(jobs)
        in_flight: dict[Any, Any] = {}

        def submit(actor: Any) -> None:
            job = next(pending, None)
            if job is not None:
                in_flight[actor.evaluate.remote(job)] = actor

        for actor in self._actors:
            for _ in range(_IN_FLIGHT):
                submit(actor)
        while in_flight:
            (ref,), _ = ray.wait(list(in_flight), num_returns=1)
            actor = in_flight.pop(ref)
            result = _ray_result(ray, ref)
            self.evaluations += result.evaluated
            submit(actor)
            yield result

    def close(self) -> None:
        for a in self._actors:
            self._ray.kill(a)
        self._actors = []
        if self._owns_ray and self._ray.is_initialized():
            self._ray.shutdown()
            self._owns_ray = False


def _ray_result(ray: Any, ref: Any) -> Result:
    """``ray.get`` with a worker's failure as one :class:`HySquantError` line (its own message if it was one)."""
    from ray.exceptions import RayActorError, RayTaskError

    try:
        return ray.get(ref)
    except RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, HySquantError):
            raise HySquantError(str(cause)) from None
        raise HySquantError(f"a Ray worker failed: {type(cause or e).__name__}: {_last_line(cause or e)}") from e
    except RayActorError as e:  # also a pipeline that failed to build in the actor
        own = f"{HySquantError.__module__}.{HySquantError.__name__}: "
        last = _last_line(e)
        if own in last:
            raise HySquantError(last.split(own, 1)[1]) from None
        raise HySquantError(f"a Ray worker died: {type(e).__name__}: {last}") from e


def _last_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[-1] if text else ""


def _probe(address: str, timeout_s: float) -> None:
    """Fail fast on an address nothing listens on: Ray itself retries for minutes."""
    target = address.split("://", 1)[-1].rstrip("/")
    host, _, port = target.rpartition(":")
    if not host:  # "head-node" without a port: the GCS default
        host, port = target, "6379"
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError) as e:
        raise HySquantError(
            f"ray.address={address} does not answer ({type(e).__name__}: {e}): start the cluster there"
            " (ray start --head) or set ray.address=null to run on this machine"
        ) from None


def _connect(address: str | None, workers: int, timeout_s: float) -> tuple[Any, bool]:
    """``ray`` initialised: on this machine with ``num_cpus=workers``, or joined to ``address``; and whether
    this call initialised it (a session the caller already holds is reused and left running)."""
    try:
        import ray
    except ImportError:  # pragma: no cover - ray is a dependency
        raise HySquantError("Ray is not installed: pip install 'ray>=2.9', or set lut.workers=1") from None
    if ray.is_initialized():
        return ray, False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False, "include_dashboard": False}
    if address:
        if address not in ("auto", "local"):
            _probe(address, timeout_s)
        kwargs["address"] = address
    else:
        kwargs["num_cpus"] = workers
    try:
        ray.init(**kwargs)
    except (ConnectionError, TimeoutError, RuntimeError, ValueError) as e:
        where = f"ray.address={address}" if address else "a local Ray instance"
        raise HySquantError(f"could not start {where}: {type(e).__name__}: {_last_line(e)}") from None
    return ray, True


def make_executor(run: RunSettings, pipe: Pipeline | None = None) -> Executor:
    """The executor the settings ask for: :class:`LocalExecutor` on ``pipe`` (built from ``run`` if None) when
    ``lut.workers == 1`` and no ``ray.address`` is set, else :class:`RayExecutor`."""
    if run.lut.workers == 1 and not run.ray.address:
        if pipe is None:
            from hysquant_rl.pipeline import build

            pipe = build(run)
        return LocalExecutor(pipe, run.eval.prefix_cache_mb)
    return RayExecutor(run)
