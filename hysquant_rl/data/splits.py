"""What a data set is split into (:class:`DataSplits` of :class:`Split` s), the registry of loaders by ``data.name``
(:data:`DATASETS`), and training batches over tensors held in memory (:func:`shuffled_batches`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from hysquant_rl.errors import HySquantError
from hysquant_rl.registry import Registry

Batch = tuple[torch.Tensor, torch.Tensor]
Augmented = Callable[[int, int, int], Iterator[Batch]]
"""``(epoch, batch_size, resolution) -> batches``: one epoch of shuffled, augmented training batches at ``resolution``
pixels (seeded by the epoch)."""


@dataclass
class Split:
    """Images ``x`` (N, C, H, W) float32, normalised, and labels ``y`` (N,) int64, in memory; or a ``loader`` that
    streams (x, y) batches (large splits). A training split also has ``augmented`` (:data:`Augmented`)."""

    name: str
    x: torch.Tensor | None = None
    y: torch.Tensor | None = None
    loader: Any = None  # a torch DataLoader when streamed
    size: int = 0
    augmented: Augmented | None = None

    def __post_init__(self) -> None:
        if self.x is not None:
            self.size = len(self.x)

    def __len__(self) -> int:
        return self.size

    def batches(self, batch_size: int) -> Iterator[Batch]:
        if self.x is None:
            yield from self.loader
            return
        for i in range(0, self.size, batch_size):
            yield self.x[i : i + batch_size], self.y[i : i + batch_size]


@dataclass
class DataSplits:
    """The splits of one data set and what a model needs to know of its images. ``meta`` says where the images were
    read from (``source``) and, for an archive, its SHA-256 (``sha256``, computed when asked: :func:`source_sha256`)."""

    name: str
    num_classes: int
    in_chans: int
    img_size: int
    calib: Split
    search_val: Split
    test: Split
    train: Split | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """One image's (C, H, W)."""
        return (self.in_chans, self.img_size, self.img_size)

    def split(self, name: str) -> Split:
        if name not in ("train", "calib", "search_val", "test"):
            raise HySquantError(f"unknown split {name!r}: use calib, search_val or test")
        return getattr(self, name)


DATASETS: Registry[Callable[..., DataSplits]] = Registry("data set", "data.name")
"""Loaders ``fn(settings, seed, model) -> DataSplits`` by ``data.name``."""
register_dataset = DATASETS.register


def shuffled_batches(x: torch.Tensor, y: torch.Tensor, seed: int, augment: Callable[..., torch.Tensor]) -> Augmented:
    """:data:`Augmented` over tensors in memory: each epoch a permutation seeded by ``(seed, epoch)``, each batch
    passed through ``augment(x, generator)``; a last batch of one image is dropped (BatchNorm cannot train on one)."""

    def epoch(index: int, batch_size: int, resolution: int) -> Iterator[Batch]:
        gen = torch.Generator().manual_seed(seed * 100_003 + index)
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch_size):
            idx = perm[i : i + batch_size]
            if len(idx) >= 2:
                yield augment(x[idx], gen), y[idx]

    return epoch
