"""Accuracy of a policy as the runtime computes it: what :meth:`hysquant_rl.deploy.runtimes.Runtime.evaluation_session`
opens for the policy (its deployable file in the runtime's layout, or the runtime's reference numerics) run over a
split, compared with the FP32 model's logits on the same runtime.

In the executable search space this replaces the PyTorch fake quantization (:class:`hysquant_rl.evaluate.Evaluator`,
the paper's simulation, whose quantization points are not the runtime's): the accuracy a search optimises is the
accuracy of the file it writes, integer kernels and their rounding included.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from hysquant_rl.bits import FP32_BITS
from hysquant_rl.data import DataSplits
from hysquant_rl.deploy.runtimes import Layout, Runtime, logits
from hysquant_rl.evaluate import Metrics, metrics_from_logits


class RuntimeEvaluator:
    """Evaluates policies (L, 2) on the splits of one data set with ``runtime`` on ``threads`` threads, the interface
    of :class:`hysquant_rl.evaluate.Evaluator`. FP32 logits of each split are computed once."""

    replayable = False  # the LUT build's FP32-prefix replay is a PyTorch shortcut: not for the runtime

    def __init__(
        self,
        layout: Layout,
        data: DataSplits,
        batch_size: int,
        threads: int,
        runtime: Runtime,
    ) -> None:
        self.layout, self.data, self.batch_size, self.threads = layout, data, batch_size, threads
        self.runtime = runtime
        self._fp32: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.evaluations = 0  # quantized graphs run over a split

    def _run(self, bits: np.ndarray, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        part = self.data.split(split)
        sess = self.runtime.evaluation_session(self.layout, np.asarray(bits), self.threads)
        outs, labels = [], []
        for x, y in part.batches(self.batch_size):
            outs.append(logits(sess, x.numpy(), self.batch_size))
            labels.append(y)
        return torch.from_numpy(np.concatenate(outs)), torch.cat(labels)

    def fp32(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """FP32 logits (N, K) and labels (N,) of a split from the runtime's FP32 model, computed once."""
        if split not in self._fp32:
            self._fp32[split] = self._run(np.full((len(self.layout.units), 2), FP32_BITS), split)
        return self._fp32[split]

    def logits(self, bits: Sequence[tuple[int, int]] | np.ndarray, split: str) -> torch.Tensor:
        """Logits (N, K) of the policy ``bits`` on ``split`` as the runtime computes them."""
        if all(a == FP32_BITS for _, a in np.asarray(bits).tolist()):
            return self.fp32(split)[0]
        self.evaluations += 1
        return self._run(np.asarray(bits), split)[0]

    def evaluate(self, bits: Sequence[tuple[int, int]] | np.ndarray, split: str = "search_val") -> Metrics:
        """Top-1, top-5, KL to FP32 and loss of ``bits`` on ``split``, as the runtime computes them."""
        return self.evaluate_with_predictions(bits, split)[0]

    def evaluate_with_predictions(
        self, bits: Sequence[tuple[int, int]] | np.ndarray, split: str = "search_val"
    ) -> tuple[Metrics, torch.Tensor]:
        """:meth:`evaluate`, plus the top-1 class of every image (N,), for paired tests between policies."""
        ref, labels = self.fp32(split)
        out = self.logits(bits, split)
        return metrics_from_logits(out, labels, ref), out.argmax(dim=1)
