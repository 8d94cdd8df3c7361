"""Policy evaluations as independent jobs, in-process or on Ray actors, behind one interface.

A :class:`Job` is one policy (a ``(w_bits, a_bits)`` pair per quantizable layer, forward order; 32 = FP32)
to be measured on one split; its :class:`Result` carries the split's :class:`~hysquant_rl.evaluate.Metrics`.
The LUT submits layers x configurations, the search submits episode policies: both call
:meth:`Executor.map`, which yields results as they complete (not in submission order).

* :class:`LocalExecutor` (``workers=1``, no ``ray.address``): evaluates in this process on the caller's
  pipeline; no Ray.
* :class:`RayExecutor`: ``workers`` Ray actors, each building the pipeline once from the plain-dict run
  config and evaluating many jobs. Locally it starts Ray with ``num_cpus=workers``; with ``ray.address`` it
  joins that cluster. Each actor runs torch on ``threads`` (the config's) or ``max(1, cores // workers)``
  threads, so actors do not oversubscribe the CPU and numbers do not depend on scheduling.

Every worker skips the all-FP32 start of a policy's forward pass (:class:`PrefixReplay`): a LUT job
quantizes one layer, so everything before that layer's block is the FP32 model, whose activations are
recorded once. Results are bit-identical to :meth:`Evaluator.evaluate` (checked when the replay is set up).
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hysquant_rl.errors import HySquantError
from hysquant_rl.evaluate import Metrics, metrics_from_logits
from hysquant_rl.quant import FP32_BITS

if TYPE_CHECKING:
    from typing import Self  # Python 3.11+: imported for type checkers only

log = logging.getLogger(__name__)

DEFAULT_PREFIX_CACHE_MB = 1024.0  # for direct use; apps read eval.prefix_cache_mb (conf/lut.yaml)
DEFAULT_CONNECT_TIMEOUT_S = 5.0  # for direct use; apps read ray.connect_timeout_s
_IN_FLIGHT = 2  # jobs queued per actor: one running, one ready, so an actor never waits for the driver
_VERIFY_IMAGES = 16  # images the replay is checked on against the full forward pass


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


# -- skipping the FP32 prefix ------------------------------------------------------------------------------


def trunk(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Names of modules ``m_0 .. m_K`` with ``model(x) == m_K(... m_0(x))``, as fine-grained as the model
    allows (timm MobileViT: stem.conv, stem.bn, each block of each stage, final_conv, the head's parts).

    Found from one traced forward pass of ``x``: a module is split into its children when the children it
    calls, in call order, each take exactly the previous one's output tensor (the first takes the module's
    input, the last returns its output), each is called once with a single tensor argument, and nothing
    else computes in between (a residual add or a concatenation breaks the link, so such a block stays
    whole). ``[""]`` (the model itself) when the model cannot be split; :class:`PrefixReplay` then checks
    numerically what the trace cannot see (in-place ops between children).
    """
    calls: dict[str, list[Any] | None] = {}  # name -> [input, output, call order], None if unusable
    order = itertools.count()
    hooks = []

    def pre(name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            ok = name not in calls and not kwargs and len(args) == 1 and isinstance(args[0], torch.Tensor)
            calls[name] = [args[0], None, next(order)] if ok else None

        return hook

    def post(name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            rec = calls.get(name)
            if rec is not None:
                if isinstance(out, torch.Tensor) and rec[1] is None:
                    rec[1] = out
                else:
                    calls[name] = None

        return hook

    modules = dict(model.named_modules())
    for name, m in modules.items():
        hooks.append(m.register_forward_pre_hook(pre(name), with_kwargs=True))
        hooks.append(m.register_forward_hook(post(name), with_kwargs=True))
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in hooks:
            h.remove()

    def split(name: str) -> list[str]:
        rec = calls.get(name)
        kids = [f"{name}.{c}" if name else c for c, _ in modules[name].named_children()]
        called = [k for k in kids if k in calls]
        if rec is None or not called or any(calls[k] is None for k in called):
            return [name]
        called.sort(key=lambda k: calls[k][2])
        current = rec[0]
        for k in called:
            if calls[k][0] is not current:
                return [name]
            current = calls[k][1]
        if current is not rec[1]:
            return [name]
        return [e for k in called for e in split(k)]

    return split("")


class PrefixReplay:
    """FP32 activations entering each trunk element of one split, recorded once, so that a policy whose
    first quantized layer lies in element ``k`` runs only elements ``k..K``.

    Args:
        evaluator: the pipeline's :class:`~hysquant_rl.evaluate.Evaluator` (its model, batch size, FP32 logits).
        layer_names: quantizable layers in forward order (the QuantModel's).
        split: a split held in memory (``x`` not None).
        budget_mb: memory for recorded activations, in MB (1e6 bytes). Only elements that hold a quantizable
            layer are recorded, from the last one backwards while they fit (each costs N x its input elements
            x 4 bytes); a job whose element was not recorded starts from the nearest recorded one before it.
            0 disables the replay.

    ``available`` is False when the model cannot be split, the replay does not reproduce the full forward
    pass bit for bit, or nothing fits the budget: callers then run the full pass.
    """

    def __init__(self, evaluator: Any, layer_names: Sequence[str], split: str, budget_mb: float) -> None:
        self.evaluator = evaluator
        self.split = split
        self.model: nn.Module = evaluator.qmodel.model
        self.starts: dict[int, list[torch.Tensor]] = {}  # element -> FP32 input, one tensor per batch
        data = evaluator.data.split(split)
        self.available = False
        if data.x is None or budget_mb <= 0 or len(data) == 0:
            return
        qmodel = evaluator.qmodel
        saved = qmodel.bits()
        qmodel.apply_bits([(FP32_BITS, FP32_BITS)] * len(saved))
        qmodel.eval()
        try:
            names = trunk(self.model, data.x[:1])
            modules = dict(self.model.named_modules())
            self.elements = [modules[n] for n in names]
            self.layer_element = [_element_of(layer, names) for layer in layer_names]
            if len(names) < 2 or not self._verify(data.x[:_VERIFY_IMAGES]):
                return
            self._record(data, budget_mb * 1e6)
        finally:
            qmodel.apply_bits(saved)
        self.available = bool(self.starts)
        log.debug("prefix replay on %s: %d trunk elements, %d recorded", split, len(names), len(self.starts))

    def _inputs(self, x: torch.Tensor, elements: Sequence[int]) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
        """The inputs of trunk ``elements`` in one forward pass of ``x`` (copies: later ops may work in
        place), and the output. An element that runs more than once keeps its last input."""
        seen: dict[int, torch.Tensor] = {}

        def hook(k: int):
            return lambda _module, args: seen.__setitem__(k, args[0].clone())

        hooks = [self.elements[k].register_forward_pre_hook(hook(k)) for k in elements]
        try:
            with torch.inference_mode():
                out = self.model(x)
        finally:
            for h in hooks:
                h.remove()
        return seen, out

    def _run_from(self, k: int, h: torch.Tensor) -> torch.Tensor:
        for m in self.elements[k:]:
            h = m(h)
        return h

    @torch.inference_mode()
    def _verify(self, x: torch.Tensor) -> bool:
        """Replaying from every element reproduces the full forward pass exactly."""
        inner = range(1, len(self.elements))
        seen, out = self._inputs(x, inner)
        return len(seen) == len(inner) and all(torch.equal(self._run_from(k, seen[k]), out) for k in inner)

    def _record(self, data: Any, budget_bytes: float) -> None:
        candidates = sorted(set(self.layer_element) - {0}, reverse=True)  # only where some layer starts
        sizes, _ = self._inputs(data.x[:1], candidates)
        keep, used = [], 0.0
        for k in candidates:
            need = sizes[k].numel() * sizes[k].element_size() * len(data)
            if used + need <= budget_bytes:
                keep.append(k)
                used += need
        self.starts = {k: [] for k in keep}
        for x, _ in data.batches(self.evaluator.batch_size):  # the Evaluator's batches: same numbers
            seen, _ = self._inputs(x, keep)
            for k in keep:
                self.starts[k].append(seen[k])

    def start(self, bits: Sequence[tuple[int, int]]) -> int:
        """The recorded element to start ``bits`` from; 0 (the full pass) when nothing can be skipped."""
        first = next((i for i, b in enumerate(bits) if tuple(b) != (FP32_BITS, FP32_BITS)), None)
        if not self.available or first is None:
            return 0
        element = self.layer_element[first]
        return max((k for k in self.starts if k <= element), default=0)

    @torch.inference_mode()
    def evaluate(self, bits: Sequence[tuple[int, int]], k: int) -> Metrics:
        """Metrics of ``bits`` running elements ``k..K`` from the recorded FP32 inputs of element ``k``
        (``k = start(bits) > 0``; the caller runs the full pass when it is 0)."""
        if k not in self.starts:
            raise ValueError(f"trunk element {k} is not recorded: use start(bits), and the full pass when it is 0")
        ref, labels = self.evaluator.fp32(self.split)
        qmodel = self.evaluator.qmodel
        qmodel.apply_bits(bits)
        qmodel.eval()
        logits = torch.cat([self._run_from(k, h) for h in self.starts[k]])
        self.evaluator.evaluations += 1  # a (partial) quantized pass over the split, as Evaluator counts them
        return metrics_from_logits(logits, labels, ref)


def _element_of(layer: str, elements: Sequence[str]) -> int:
    """Index of the trunk element that holds ``layer`` (0 when none does: the full pass)."""
    for k, e in enumerate(elements):
        if e and (layer == e or layer.startswith(e + ".")):
            return k
    return 0


# -- workers -----------------------------------------------------------------------------------------------


class Worker:
    """Evaluates jobs on one pipeline: through :class:`PrefixReplay` where a job's start is FP32, else
    :meth:`Evaluator.evaluate`. ``prefix_cache_mb``: the replay's memory per split (0 = off)."""

    def __init__(self, pipe: Any, prefix_cache_mb: float = DEFAULT_PREFIX_CACHE_MB) -> None:
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
        k = self._replay(job.split).start(job.bits) if first and self.prefix_cache_mb > 0 else 0
        if k > 0:
            metrics = self._replays[job.split].evaluate(job.bits, k)
        else:
            metrics = evaluator.evaluate(job.bits, job.split)
        return Result(job, metrics, evaluator.evaluations > before, time.perf_counter() - start)


class _RayWorker:
    """The body of one Ray actor: builds the pipeline once from the plain-dict run config."""

    def __init__(self, cfg: dict[str, Any], workers: int, prefix_cache_mb: float) -> None:
        from omegaconf import OmegaConf

        from hysquant_rl.pipeline import build

        conf = OmegaConf.create(cfg)
        threads = int(conf.get("threads") or max(1, (os.cpu_count() or 1) // workers))
        conf.threads = threads
        torch.set_num_threads(threads)
        self.worker = Worker(build(conf), prefix_cache_mb)

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

    def close(self) -> None:
        """Release the workers."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalExecutor(Executor):
    """One in-process worker on the caller's pipeline, jobs in submission order."""

    def __init__(self, pipe: Any, prefix_cache_mb: float = DEFAULT_PREFIX_CACHE_MB) -> None:
        super().__init__()
        self.worker = Worker(pipe, prefix_cache_mb)

    def map(self, jobs: Iterable[Job]) -> Iterator[Result]:
        for job in jobs:
            result = self.worker.evaluate(job)
            self.evaluations += result.evaluated
            yield result


class RayExecutor(Executor):
    """``workers`` Ray actors, each with its own pipeline built from ``cfg``.

    Args:
        cfg: the composed run config (resolved into plain containers for the actors).
        workers: number of actors.
        address: an existing cluster (``host:port``, ``ray://host:port`` or ``auto``); None starts Ray on this
            machine with ``num_cpus=workers``.
        prefix_cache_mb: :class:`PrefixReplay` memory per actor and split.
        connect_timeout_s: how long ``address`` may take to accept a TCP connection.

    Raises :class:`HySquantError` (one line) when Ray is missing or the address does not answer.
    """

    def __init__(
        self,
        cfg: Any,
        workers: int,
        address: str | None = None,
        prefix_cache_mb: float = DEFAULT_PREFIX_CACHE_MB,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    ) -> None:
        super().__init__()
        from omegaconf import OmegaConf

        self.workers = workers
        self._ray, self._owns_ray = _connect(address, workers, connect_timeout_s)
        self._actors: list[Any] = []
        try:
            actor = self._ray.remote(num_cpus=1)(_RayWorker)
            plain = OmegaConf.to_container(cfg, resolve=True)
            self._actors = [actor.remote(plain, workers, prefix_cache_mb) for _ in range(workers)]
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


def make_executor(cfg: Any, workers: int, pipe: Any = None) -> Executor:
    """The executor a config asks for: :class:`LocalExecutor` on ``pipe`` (built from ``cfg`` if None) when
    ``workers == 1`` and no ``ray.address`` is set, else :class:`RayExecutor`. Reads ``ray.address``,
    ``ray.connect_timeout_s`` and ``eval.prefix_cache_mb``; a config without them (an app composed from
    another file) gets the values of ``conf/lut.yaml``."""

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise HySquantError(f"workers must be a positive integer, got {workers!r}")
    s = cfg
    address = s.ray.address
    prefix_mb = float(s.eval.prefix_cache_mb)
    if workers == 1 and not address:
        if pipe is None:
            from hysquant_rl.pipeline import build

            pipe = build(cfg)
        return LocalExecutor(pipe, prefix_mb)
    return RayExecutor(s, workers, address=address or None, prefix_cache_mb=prefix_mb,
                       connect_timeout_s=float(s.ray.connect_timeout_s))
