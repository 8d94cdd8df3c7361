"""Fast batched evaluation of a quantized model against its own FP32 logits.

FP32 logits of each split are computed once (with every layer at 32 bits) and reused by every later
evaluation, which only runs the quantized forward and compares.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from hysquant_rl.bits import FP32_BITS
from hysquant_rl.data import DataSplits, Split
from hysquant_rl.quant import QuantModel


@dataclass(frozen=True)
class Metrics:
    """Accuracy of one evaluation. top1/top5 in percent; kl = mean KL(FP32 || quantized) of the softmax
    over images, in nats; loss = mean cross-entropy with the labels, in nats; n = images."""

    top1: float
    top5: float
    kl: float
    loss: float
    n: int

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def metrics_from_logits(logits: torch.Tensor, labels: torch.Tensor, ref_logits: torch.Tensor) -> Metrics:
    """Metrics of ``logits`` (N, K) against ``labels`` (N,) and the FP32 ``ref_logits`` (N, K)."""
    k = min(5, logits.shape[1])
    top5 = logits.topk(k, dim=1).indices
    logp = F.log_softmax(logits.float(), dim=1)
    ref_logp = F.log_softmax(ref_logits.float(), dim=1)
    kl = F.kl_div(logp, ref_logp, log_target=True, reduction="batchmean")
    return Metrics(
        top1=100.0 * (top5[:, 0] == labels).float().mean().item(),
        top5=100.0 * (top5 == labels[:, None]).any(dim=1).float().mean().item(),
        kl=max(kl.item(), 0.0),
        loss=F.nll_loss(logp, labels).item(),
        n=int(labels.numel()),
    )


class Evaluator:
    """Evaluates policies of one calibrated :class:`QuantModel` on the splits of one data set.

    Args:
        qmodel: the calibrated model; its bit-widths are switched in place by :meth:`evaluate`.
        data: the splits.
        batch_size: images per forward pass.
    """

    def __init__(self, qmodel: QuantModel, data: DataSplits, batch_size: int = 256) -> None:
        self.qmodel = qmodel
        self.data = data
        self.batch_size = batch_size
        self._fp32: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.evaluations = 0  # quantized forward passes over a split, for benchmarks and cache tests

    @torch.inference_mode()
    def logits(self, split: Split) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (N, K) of the model at its current bit-widths, and the labels (N,)."""
        self.qmodel.eval()
        outs, labels = [], []
        for x, y in split.batches(self.batch_size):
            outs.append(self.qmodel(x))
            labels.append(y)
        return torch.cat(outs), torch.cat(labels)

    def fp32(self, split_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """FP32 logits and labels of a split, computed once."""
        if split_name not in self._fp32:
            saved = self.qmodel.bits()
            self.qmodel.apply_bits([(FP32_BITS, FP32_BITS)] * len(saved))
            try:
                self._fp32[split_name] = self.logits(self.data.split(split_name))
            finally:
                self.qmodel.apply_bits(saved)
        return self._fp32[split_name]

    def evaluate(self, bits: Sequence[tuple[int, int]] | None = None, split: str = "search_val") -> Metrics:
        """Apply ``bits`` (or keep the current ones) and measure them on ``split``."""
        return self.evaluate_with_predictions(bits, split)[0]

    def evaluate_with_predictions(
        self, bits: Sequence[tuple[int, int]] | None = None, split: str = "search_val"
    ) -> tuple[Metrics, torch.Tensor]:
        """:meth:`evaluate`, plus the top-1 class of every image (N,), for paired tests between policies."""
        ref, labels = self.fp32(split)
        if bits is not None:
            self.qmodel.apply_bits(bits)
        if all(b == (FP32_BITS, FP32_BITS) for b in self.qmodel.bits()):
            return metrics_from_logits(ref, labels, ref), ref.argmax(dim=1)
        self.evaluations += 1
        logits, _ = self.logits(self.data.split(split))
        return metrics_from_logits(logits, labels, ref), logits.argmax(dim=1)
