"""Steps 1-2 of every run: model, splits, layer inventory, calibrated quantizer and evaluator, and the cost model
of the device profile, built once from the run settings and shared by every app.

In the executable search space (``search.space``, :func:`hysquant_rl.settings.resolve_space`) on a profile with a
runtime, policies are evaluated as the runtime runs them: the pipeline builds the model's runtime layout
(:class:`~hysquant_rl.deploy.runtime_graph.RuntimeGraphs`) and its evaluator is a
:class:`~hysquant_rl.deploy.runtime_eval.RuntimeEvaluator`; in the simulated space, the PyTorch fake quantization
(:class:`~hysquant_rl.evaluate.Evaluator`) of the paper."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from hysquant_rl.data import DataSplits, load_data
from hysquant_rl.errors import HySquantError
from hysquant_rl.evaluate import Evaluator
from hysquant_rl.hardware import CostModel
from hysquant_rl.inventory import inventory, other_ops
from hysquant_rl.models import ModelSpec, check_model_name, create_model
from hysquant_rl.policy import QuantPolicy
from hysquant_rl.provenance import weights_sha256
from hysquant_rl.quant import QuantModel
from hysquant_rl.settings import RunSettings, default_threads
from hysquant_rl.train import embedded_state
from hysquant_rl.units import AttentionMatmul, UnitInfo

if TYPE_CHECKING:
    from hysquant_rl.deploy import Check
    from hysquant_rl.deploy.runtime_eval import RuntimeEvaluator
    from hysquant_rl.deploy.runtimes import Layout, Runtime
    from hysquant_rl.settings import ExportSettings

log = logging.getLogger(__name__)


@dataclass
class Pipeline:
    """The model and everything measured on it once: ``layers`` and ``matmuls`` (the inventory), the calibrated
    ``qmodel``, the ``evaluator`` on the data splits (in the executable space the ``runtime``'s, on its ``layout``),
    and ``cost``, the device profile's cost model (what the search optimises and every report prices with)."""

    spec: ModelSpec
    model: nn.Module
    data: DataSplits
    units: list[UnitInfo]
    matmuls: list[AttentionMatmul]
    qmodel: QuantModel
    evaluator: Evaluator | RuntimeEvaluator
    cost: CostModel
    weights_sha256: str
    layout: Layout | None = None  # the model in the runtime's layout, in the executable space
    space: str = "simulated"  # search.space, resolved
    runtime: Runtime | None = None  # what runs the deployed model, in the executable space

    @property
    def names(self) -> list[str]:
        return [unit.name for unit in self.units]

    def uniform(self, pair: tuple[int, int]) -> np.ndarray:
        """The uniform policy (L, 2) of ``pair`` in this run's search space: in the executable space a unit the runtime
        cannot run at ``pair`` stays FP32 (:func:`hysquant_rl.space.uniform_policy`)."""
        from hysquant_rl.space import choice_mask, uniform_policy

        return uniform_policy(pair, choice_mask(self.units, self.cost.profile, self.space), self.units)

    def executes(self, pair: tuple[int, int]) -> bool:
        """Whether some unit with a weight can take ``pair`` in this run's search space (in the simulated space: every
        pair), i.e. whether a uniform ``pair`` means anything here."""
        weighted = np.array([unit.weighted for unit in self.units])
        return pair == (32, 32) or bool((self.uniform(pair)[weighted] == np.array(pair)).all(axis=1).any())

    def policy(self, bits: Sequence[tuple[int, int]], **meta: Any) -> QuantPolicy:
        """A :class:`QuantPolicy` for this model's weights; ``meta`` as in :meth:`QuantPolicy.from_bits`."""
        return QuantPolicy.from_bits(self.units, bits, self.spec.name, self.weights_sha256, **meta)

    def measure(
        self,
        bits: Any,
        splits: Sequence[str] = ("search_val",),
        known: Mapping[str, dict[str, float]] | None = None,
    ) -> dict[str, Any]:
        """Accuracy on each split and modelled cost of a policy: the ``metrics`` block of a policy JSON. ``known``
        gives splits already evaluated. Latency in ms and energy in mJ per inference of ``batch_size`` images;
        size in MB (1e6 bytes)."""
        known = known or {}
        out: dict[str, Any] = {
            s: dict(known[s]) if s in known else self.evaluator.evaluate(bits, s).to_dict() for s in (*splits, *known)
        }
        c = self.cost.policy_cost(bits)
        out["cost"] = {
            "device": c.device,
            "backend": c.backend,
            "batch_size": c.batch_size,
            **c.totals(),
            "bitops": c.bitops,
            "deployable": bool(c.deployable),
        }
        return out


def build(run: RunSettings) -> Pipeline:
    """Seeded model + data + inventory + calibrated :class:`QuantModel` + :class:`Evaluator` + cost model."""
    check_model_name(run.model.name)  # a typo fails before data, training or weights
    torch.manual_seed(run.seed)
    torch.set_num_threads(run.threads or default_threads())
    if run.model.embedded:  # trained on the data if missing: data first
        data = load_data(run.data, seed=run.seed)
        model, spec = create_model(run.model, embedded_state(run, lambda: data)[0])
    else:  # ImageNet transforms come from the model: model first
        model, spec = create_model(run.model)
        data = load_data(run.data, seed=run.seed, model=model)
    if spec.num_classes != data.num_classes or spec.in_chans != data.in_chans:
        raise HySquantError(
            f"model {spec.name} takes {spec.in_chans}-channel images into {spec.num_classes} classes but data"
            f" {data.name} has {data.in_chans}-channel images in {data.num_classes} classes: set model.num_classes"
            " and model.in_chans, or choose a matching data set"
        )
    for p in model.parameters():
        p.requires_grad_(False)
    sha = weights_sha256(model)
    q = run.quant
    units, matmuls = inventory(model, data.input_shape, q.scope)
    other = other_ops(model, data.input_shape, q.scope)  # before the quantizer swaps classes
    qmodel = QuantModel(
        model,
        [unit.name for unit in units],
        q.weight_granularity,
        q.calibrator,
        q.percentile,
        q.softmax,
        q.act_granularity,
    )
    start = time.perf_counter()
    qmodel.calibrate(data.calib.batches(run.eval.batch_size))
    log.info(
        "%s: %d quantizable units (%d Conv2d, %d Linear, %d attention matmuls, %d LayerNorm inputs), %d attention"
        " modules in float; calibrated on %d images in %.1f s",
        spec.name,
        len(units),
        sum(unit.op == "conv2d" for unit in units),
        sum(unit.op == "linear" for unit in units),
        sum(unit.op == "matmul" for unit in units),
        sum(unit.op == "layernorm" for unit in units),
        len(matmuls),
        len(data.calib),
        time.perf_counter() - start,
    )
    evaluator: Evaluator | RuntimeEvaluator = Evaluator(qmodel, data, run.eval.batch_size)
    cost = CostModel(units, matmuls, run.hardware, other=other)
    layout, runtime = None, None
    if run.space == "executable" and run.hardware.runtime is not None:
        from hysquant_rl.deploy import runtimes, unit_latency
        from hysquant_rl.deploy.runtime_eval import RuntimeEvaluator

        runtime = runtimes.get(run.hardware.runtime)
        calib = torch.cat([x for x, _ in data.calib.batches(run.eval.batch_size)]).numpy()
        layout = runtime.layout(model, units, data.input_shape, calib, q, batch_size=run.hardware.batch_size)
        evaluator = RuntimeEvaluator(layout, data, run.eval.batch_size, run.threads or default_threads(), runtime)
        # the latency a search prices with: each unit's, measured on this runtime (cached per machine)
        int8 = np.array([any(a == 8 for _, a in run.hardware.executable(unit.kind)) for unit in units])
        timing = run.hardware.timing
        table = unit_latency.cached(layout, int8, cost.batch_size, timing, run.cache_dir, runtime)
        cost = unit_latency.RuntimeCostModel(units, matmuls, run.hardware, table, other)
    elif run.hardware.measured_on is not None:
        log.warning(
            "latency on %s is modelled with constants measured on %s (this machine: %s): rerun"
            " benchmarks/cpu_profile.py here, or search.space=executable to measure each unit on this machine",
            run.hardware.name,
            run.hardware.measured_on,
            _this_machine(),
        )
    return Pipeline(spec, model, data, units, matmuls, qmodel, evaluator, cost, sha, layout, run.space, runtime)


def _this_machine() -> str:
    from hysquant_rl import machine

    return machine.describe()


def make_check(pipe: Pipeline) -> Check:
    """What a policy of ``pipe`` is checked on, by its profile's ``backend``: ``modelled``: the pipeline's own cost
    model; ``measured``: kernels timed on the local CUDA GPU (:class:`~hysquant_rl.deploy.cuda.MeasuredCostModel`);
    a runtime's name: the policy's file timed on this CPU by that runtime
    (:class:`~hysquant_rl.deploy.timing.RuntimeCheck`), in the runtime's layout in the executable space and in the
    paper's layout in the simulated one."""
    from hysquant_rl.hardware.profile import MODEL_BACKENDS

    profile = pipe.cost.profile
    if profile.backend == "measured":
        from hysquant_rl.deploy.cuda import MeasuredCostModel

        return MeasuredCostModel(pipe.units, pipe.matmuls, profile, other=pipe.cost.other)
    if profile.backend in MODEL_BACKENDS:
        return pipe.cost
    from hysquant_rl.deploy import runtimes
    from hysquant_rl.deploy.timing import RuntimeCheck

    space = "executable" if pipe.layout is not None else "simulated"
    runtime = pipe.runtime or runtimes.get(profile.backend)
    return RuntimeCheck(deployable(pipe), pipe.data.input_shape, pipe.cost, profile.timing, space, runtime)


def deployable(pipe: Pipeline) -> Callable[[np.ndarray], bytes]:
    """A policy (L, 2) of ``pipe`` -> the file a user deploys, as bytes: the runtime's layout in the executable space,
    the paper's simulated QDQ graph otherwise."""
    if pipe.layout is not None:
        return pipe.layout.artefact

    def simulated(bits: np.ndarray) -> bytes:
        from hysquant_rl.deploy.simulated_onnx import export_simulated

        policy = pipe.policy(bits)
        pipe.qmodel.apply_bits(policy.bits())
        with tempfile.TemporaryDirectory(prefix="hysquant-export-") as tmp:
            return Path(export_simulated(pipe.qmodel, policy, pipe.data.input_shape, tmp)).read_bytes()

    return simulated


def export(pipe: Pipeline, policy: QuantPolicy, out: Path, settings: ExportSettings) -> dict[str, Path]:
    """The quantized model a user takes away, written into ``out`` as a set (:func:`hysquant_rl.deploy.export.export`):
    in the executable space the runtime's deployable file (and its own files with ``export.<runtime>=true``), in the
    simulated space the PyTorch files and, with ``export.onnx=true``, the paper's QDQ graph."""
    from hysquant_rl.deploy.export import export as write

    return write(
        policy,
        out,
        runtime=pipe.runtime,
        layout=pipe.layout,
        runtime_files=pipe.runtime is not None and pipe.runtime.name in settings.runtime_files,
        qmodel=pipe.qmodel,
        spec=pipe.spec.to_dict(),
        input_shape=pipe.data.input_shape,
        simulated_onnx=settings.onnx,
    )
