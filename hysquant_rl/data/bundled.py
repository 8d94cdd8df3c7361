"""The small data sets that ship with a dependency or a system package, held in memory: scikit-learn's ``digits``
(nothing to download) and ``fashion_mnist`` (the IDX files of Debian's ``dataset-fashion-mnist``)."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from hysquant_rl.data.splits import DataSplits, Split, register_dataset, shuffled_batches
from hysquant_rl.errors import HySquantError

if TYPE_CHECKING:
    from hysquant_rl.settings import DataSettings


def _sizes(n: int, settings: DataSettings) -> tuple[int, int, int]:
    sizes = int(settings.calib_size), int(settings.search_val_size), int(settings.test_size)
    if sum(sizes) >= n:
        raise HySquantError(
            f"data.calib_size + search_val_size + test_size = {sum(sizes)} leaves no training images out of {n}:"
            " lower them"
        )
    return sizes


def _normalise(x: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    return ((x - mean) / std).contiguous()


def shift(max_shift: int):
    """Random translation by up to ``max_shift`` pixels per image (filled with the batch's minimum), the one
    augmentation digit-like data needs: ``augment(x, generator)``."""

    def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if max_shift <= 0:
            return x
        n, _, h, w = x.shape
        padded = F.pad(x, (max_shift,) * 4, value=float(x.min()))
        dx, dy = (torch.randint(0, 2 * max_shift + 1, (2, n), generator=gen)).tolist()
        return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])

    return augment


def _train_split(x: torch.Tensor, y: torch.Tensor, settings: DataSettings, seed: int) -> Split:
    max_shift = settings.train.max_shift if settings.train is not None else 0
    return Split("train", x, y, augmented=shuffled_batches(x, y, seed, shift(max_shift)))


@register_dataset("digits")
def digits(settings: DataSettings, seed: int, model: Any = None) -> DataSplits:
    """scikit-learn's bundled 8x8 digits (1797 images), upsampled to ``img_size``. test and search-val are
    held out of training; calibration images come from the training part, as in any PTQ deployment."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    x = torch.nn.functional.interpolate(
        x, size=(settings.img_size, settings.img_size), mode="bilinear", align_corners=False
    )
    x = _normalise(x, 0.5, 0.5)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    n_calib, n_val, n_test = _sizes(len(x), settings)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    test, val, train = perm[:n_test], perm[n_test : n_test + n_val], perm[n_test + n_val :]
    calib = train[:n_calib]
    return DataSplits(
        name="digits",
        num_classes=10,
        in_chans=1,
        img_size=settings.img_size,
        calib=Split("calib", x[calib], y[calib]),
        search_val=Split("search_val", x[val], y[val]),
        test=Split("test", x[test], y[test]),
        train=_train_split(x[train], y[train], settings, seed),
        meta={"source": "scikit-learn's bundled digits"},
    )


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:  # a bad or truncated .gz, an unreadable file
        cause = (e.strerror if isinstance(e, OSError) else None) or str(e) or type(e).__name__
        raise HySquantError(
            f"cannot read {path} ({type(e).__name__}: {cause}): replace the file (delete it and set"
            " data.download=true, or reinstall dataset-fashion-mnist)"
        ) from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise HySquantError(f"{path} is not an IDX file of unsigned bytes: check data.root")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise HySquantError(f"{path} is truncated ({arr.size} of {int(np.prod(shape))} values): replace the file")
    return arr.reshape(shape)


def _find_idx(root: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        for p in (root / name, root / "FashionMNIST" / "raw" / name):
            if p.exists():
                return p
    return None


FASHION_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@register_dataset("fashion_mnist")
def fashion_mnist(settings: DataSettings, seed: int, model: Any = None) -> DataSplits:
    """Fashion-MNIST IDX files under ``data.root`` (Debian's ``dataset-fashion-mnist`` by default), padded
    from 28 to ``img_size``. The model trains on ``train_size`` training images; calibration and search-val
    come from the training images it never saw; test is the official test set (``test_size`` of it)."""
    root = Path(str(settings.root)).expanduser()
    paths = [_find_idx(root, stem) for stem in FASHION_FILES]
    if None in paths:
        if settings.download:
            import torchvision

            torchvision.datasets.FashionMNIST(str(root), train=True, download=True)
            torchvision.datasets.FashionMNIST(str(root), train=False, download=True)
            paths = [_find_idx(root, stem) for stem in FASHION_FILES]
        if None in paths:
            missing = FASHION_FILES[paths.index(None)]
            raise HySquantError(
                f"Fashion-MNIST not found in data.root={root} (no {missing}[.gz]): install Debian's"
                " dataset-fashion-mnist, point data.root at the IDX files, or set data.download=true"
            )
    xtr, ytr, xte, yte = (_read_idx(p) for p in paths)
    pad = (int(settings.img_size) - xtr.shape[-1]) // 2

    def tensor(images: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
        x = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        return _normalise(x, 0.2860, 0.3530)

    n_train, n_calib, n_val = int(settings.train_size), int(settings.calib_size), int(settings.search_val_size)
    if n_train + n_calib + n_val > len(xtr):
        raise HySquantError(
            f"data.train_size + calib_size + search_val_size = {n_train + n_calib + n_val} exceeds the"
            f" {len(xtr)} Fashion-MNIST training images: lower them"
        )
    perm = np.random.default_rng(seed).permutation(len(xtr))
    train, calib, val = (
        perm[:n_train],
        perm[n_train : n_train + n_calib],
        perm[n_train + n_calib : n_train + n_calib + n_val],
    )
    n_test = len(xte) if settings.test_size is None else min(int(settings.test_size), len(xte))
    test = np.random.default_rng(seed).permutation(len(xte))[:n_test] if n_test < len(xte) else np.arange(len(xte))
    ytr_t, yte_t = torch.from_numpy(ytr.astype(np.int64)), torch.from_numpy(yte.astype(np.int64))
    return DataSplits(
        name="fashion_mnist",
        num_classes=10,
        in_chans=1,
        img_size=int(settings.img_size),
        calib=Split("calib", tensor(xtr[calib]), ytr_t[calib]),
        search_val=Split("search_val", tensor(xtr[val]), ytr_t[val]),
        test=Split("test", tensor(xte[test]), yte_t[test]),
        train=_train_split(tensor(xtr[train]), ytr_t[train], settings, seed),
        meta={"source": str(root)},
    )
