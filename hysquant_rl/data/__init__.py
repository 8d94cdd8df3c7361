"""Data sets -> disjoint, seeded splits: train (for a model our own code trains), calibration, search-val, test.

calibration sets activation ranges; search-val is what every search optimises; test is reported once, at the end of
a run. Small splits are held as tensors in memory; a large test split (ImageNet's val/) streams from disk, and so do
the training images of a photo data set. Each loader is registered by name (``data.name``), like timm's models:

* :mod:`~hysquant_rl.data.bundled`: ``digits`` (scikit-learn's, nothing to download) and ``fashion_mnist`` (IDX files);
* :mod:`~hysquant_rl.data.trees`: photos in the ImageNet folder layout, read from a folder or in place from a zip
  archive: ``imagenet`` (a user's tree, timm's transforms), ``imagenette`` and ``cifar10``.

A file that cannot be read (a corrupt or truncated ``.gz`` or zip, an image that does not decode, an image folder with
no images) is one :class:`HySquantError` naming the file and the cause; a corrupt image is refused, not skipped
(skipping would change the splits without saying so).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from hysquant_rl.data import bundled, trees
from hysquant_rl.data.bundled import FASHION_FILES
from hysquant_rl.data.splits import DATASETS, Augmented, Batch, DataSplits, Split, register_dataset, shuffled_batches
from hysquant_rl.data.trees import ImageReadError, read_image

if TYPE_CHECKING:
    from hysquant_rl.settings import DataSettings

log = logging.getLogger(__name__)


def load_data(settings: DataSettings, seed: int, model: torch.nn.Module | None = None) -> DataSplits:
    """Build the splits for ``settings.name`` (the ``conf/data/`` settings). ``model`` is needed only by
    data sets whose transforms come from the model (ImageNet: timm's resolved data config)."""
    splits = DATASETS.get(settings.name)(settings, seed=seed, model=model)
    log.info(
        "data %s%s: train %s, calib %d, search-val %d, test %d images",
        settings.name,
        f" from {splits.meta['source']}" if "source" in splits.meta else "",
        len(splits.train) if splits.train else "-",
        len(splits.calib),
        len(splits.search_val),
        len(splits.test),
    )
    return splits


__all__ = [
    "DATASETS",
    "FASHION_FILES",
    "Augmented",
    "Batch",
    "DataSplits",
    "ImageReadError",
    "Split",
    "bundled",
    "load_data",
    "read_image",
    "register_dataset",
    "shuffled_batches",
    "trees",
]
