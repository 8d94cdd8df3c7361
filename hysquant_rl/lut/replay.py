"""Skipping the all-FP32 start of a policy's forward pass.

A LUT job quantizes one layer, so everything before that layer's block is the FP32 model, whose activations are
recorded once per split (:class:`PrefixReplay`). :func:`trunk` finds the chain of modules the model's forward
pass is made of; results are bit-identical to :meth:`Evaluator.evaluate` (checked when the replay is set up).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from hysquant_rl.bits import FP32_BITS
from hysquant_rl.evaluate import Metrics, metrics_from_logits

log = logging.getLogger(__name__)

_VERIFY_IMAGES = 16  # images the replay is checked on against the full forward pass


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

    def __init__(self, evaluator: Any, unit_names: Sequence[str], split: str, budget_mb: float) -> None:
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
            self.unit_element = [_element_of(unit, names) for unit in unit_names]
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
        candidates = sorted(set(self.unit_element) - {0}, reverse=True)  # only where some layer starts
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
        element = self.unit_element[first]
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


def _element_of(unit: str, elements: Sequence[str]) -> int:
    """Index of the trunk element that holds ``layer`` (0 when none does: the full pass)."""
    for k, e in enumerate(elements):
        if e and (unit == e or unit.startswith(e + ".")):
            return k
    return 0
