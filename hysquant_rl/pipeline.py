"""Steps 1-2 of every run (ARCHITECTURE.md, data flow): model, splits, layer inventory, calibrated
quantizer and evaluator, built once from the run config and shared by every app."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from hysquant_rl.data import DataSplits, load_data
from hysquant_rl.errors import HySquantError
from hysquant_rl.evaluate import Evaluator
from hysquant_rl.hardware import CostModel, load_profile
from hysquant_rl.layers import AttentionMatmul, LayerInfo, inventory
from hysquant_rl.models import ModelSpec, create_model
from hysquant_rl.policy import QuantPolicy, weights_sha256
from hysquant_rl.quant import QuantModel

log = logging.getLogger(__name__)


@dataclass
class Pipeline:
    cfg: Any
    spec: ModelSpec
    model: nn.Module
    data: DataSplits
    layers: list[LayerInfo]
    matmuls: list[AttentionMatmul]
    qmodel: QuantModel
    evaluator: Evaluator
    cost: CostModel
    weights_sha256: str

    @property
    def names(self) -> list[str]:
        return [l.name for l in self.layers]

    def policy(self, bits: Sequence[tuple[int, int]], **meta: Any) -> QuantPolicy:
        """A :class:`QuantPolicy` for this model's weights; ``meta`` as in :meth:`QuantPolicy.from_bits`."""
        meta.setdefault("seed", int(OmegaConf.select(self.cfg, "search.seed", default=self.cfg.seed)))
        return QuantPolicy.from_bits(self.layers, bits, self.spec.name, self.weights_sha256, **meta)

    def measure(self, bits: Sequence[tuple[int, int]], splits: Sequence[str] = ("search_val",)) -> dict[str, Any]:
        """Accuracy on each split and modelled cost of a policy: the ``metrics`` block of a policy JSON.
        Latency in ms and energy in mJ per inference of ``batch_size`` images; size in MB (1e6 bytes)."""
        out: dict[str, Any] = {s: self.evaluator.evaluate(bits, s).to_dict() for s in splits}
        c = self.cost.policy_cost(bits)
        out["cost"] = {
            "device": c.device, "backend": c.backend, "batch_size": c.batch_size,
            "latency_ms": c.latency_s * 1e3, "energy_mj": c.energy_j * 1e3, "size_mb": c.size_bytes / 1e6,
            "bitops": c.bitops, "deployable": bool(c.deployable),
        }
        return out


def build(cfg: Any) -> Pipeline:
    """Seeded model + data + inventory + calibrated :class:`QuantModel` + :class:`Evaluator` + cost model."""
    torch.manual_seed(int(cfg.seed))
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    if cfg.model.embedded:  # trained on the data if missing: data first
        data = load_data(cfg.data, seed=int(cfg.seed))
        model, spec = create_model(cfg, data)
    else:  # ImageNet transforms come from the model: model first
        model, spec = create_model(cfg)
        data = load_data(cfg.data, seed=int(cfg.seed), model=model)
    if spec.num_classes != data.num_classes or spec.in_chans != data.in_chans:
        raise HySquantError(
            f"model {spec.name} takes {spec.in_chans}-channel images into {spec.num_classes} classes but data"
            f" {data.name} has {data.in_chans}-channel images in {data.num_classes} classes: set model.num_classes"
            " and model.in_chans, or choose a matching data set"
        )
    for p in model.parameters():
        p.requires_grad_(False)
    sha = weights_sha256(model)
    layers, matmuls = inventory(model, (data.in_chans, data.img_size, data.img_size))
    qmodel = QuantModel(model, [l.name for l in layers], str(cfg.quant.weight_granularity))
    start = time.perf_counter()
    qmodel.calibrate(data.calib.batches(int(cfg.eval.batch_size)))
    log.info(
        "%s: %d quantizable layers (%d Conv2d, %d Linear), %d attention modules; calibrated on %d images in %.1f s",
        spec.name, len(layers), sum(l.op == "conv2d" for l in layers), sum(l.op == "linear" for l in layers),
        len(matmuls), len(data.calib),
        time.perf_counter() - start,
    )
    evaluator = Evaluator(qmodel, data, int(cfg.eval.batch_size))
    # the roofline model: what the search optimises and reports; search checks the result on the backend
    cost = CostModel(layers, matmuls, load_profile(cfg.hardware))
    return Pipeline(cfg, spec, model, data, layers, matmuls, qmodel, evaluator, cost, sha)
