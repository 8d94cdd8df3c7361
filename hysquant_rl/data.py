"""Data sets -> disjoint, seeded splits: train (for our own embedded model), calibration, search-val, test.

calibration sets activation ranges; search-val is what every search optimises; test is reported once, at
the end of a run. Small splits are held as tensors in memory; an ImageNet test split streams from disk.
Each loader is registered by name (``data.name``), like timm's model registry.

A file that cannot be read (a corrupt or truncated ``.gz``, an image that does not decode, an image folder with no
images) is one :class:`HySquantError` naming the file and the cause; a corrupt image is refused, not skipped
(skipping would change the splits without saying so).
"""

from __future__ import annotations

import gzip
import logging
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hysquant_rl.errors import HySquantError

if TYPE_CHECKING:
    from hysquant_rl.settings import DataSettings

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]


class ImageReadError(HySquantError):
    """An image that cannot be decoded. Raised in a DataLoader worker it comes back with the worker's traceback in
    its message: only the last line, this error's own message, is kept."""

    def __init__(self, message: str) -> None:
        lines = [line for line in str(message).splitlines() if line.strip()]
        last = lines[-1] if lines else str(message)
        super().__init__(last.split(f"{ImageReadError.__name__}: ", 1)[-1])


def read_image(path: str) -> Any:
    """An image file as an RGB PIL image (torchvision's loader, whose errors name no file): one that does not decode
    is an :class:`ImageReadError` naming it."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except Exception as e:  # not an image, truncated, a decompression bomb, unreadable
        cause = " ".join(str(e).split())[:200] or type(e).__name__
        raise ImageReadError(f"cannot read image {path} ({cause}): remove or replace it") from None


@dataclass
class Split:
    """Images ``x`` (N, C, H, W) float32, normalised, and labels ``y`` (N,) int64, in memory; or a
    ``loader`` that streams (x, y) batches (large ImageNet splits)."""

    name: str
    x: torch.Tensor | None = None
    y: torch.Tensor | None = None
    loader: Any = None  # a torch DataLoader when streamed
    size: int = 0

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
    """The splits of one data set and what a model needs to know of its images."""

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


_DATASETS: dict[str, Callable[..., DataSplits]] = {}


def register_dataset(name: str):
    def deco(fn: Callable[..., DataSplits]) -> Callable[..., DataSplits]:
        _DATASETS[name] = fn
        return fn

    return deco


def list_datasets() -> list[str]:
    return sorted(_DATASETS)


def load_data(settings: DataSettings, seed: int, model: torch.nn.Module | None = None) -> DataSplits:
    """Build the splits for ``settings.name`` (the ``conf/data/`` settings). ``model`` is needed only by
    data sets whose transforms come from the model (ImageNet: timm's resolved data config)."""
    if settings.name not in _DATASETS:
        raise HySquantError(f"unknown data set {settings.name!r}: use data= one of {', '.join(list_datasets())}")
    splits = _DATASETS[settings.name](settings, seed=seed, model=model)
    log.info(
        "data %s: train %s, calib %d, search-val %d, test %d images",
        settings.name,
        len(splits.train) if splits.train else "-",
        len(splits.calib),
        len(splits.search_val),
        len(splits.test),
    )
    return splits


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
        train=Split("train", x[train], y[train]),
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
        train=Split("train", tensor(xtr[train]), ytr_t[train]),
    )


@register_dataset("imagenet")
def imagenet(settings: DataSettings, seed: int, model: torch.nn.Module | None = None) -> DataSplits:
    """An ImageFolder tree ``data.root/{train,val}/<class>/*.JPEG``. Calibration and search-val are drawn
    (seeded, disjoint) from train and held as tensors; test streams from val (``test_size`` images, or all).
    Transforms are timm's eval transforms from the model's resolved data config."""
    import timm.data
    from torchvision.datasets import ImageFolder

    root = Path(str(settings.root)).expanduser()
    for sub in ("train", "val"):
        if not (root / sub).is_dir():
            raise HySquantError(
                f"data.root={root} has no {sub}/ folder: point data.root at an ImageNet tree with train/ and val/"
            )
    if model is None:
        raise ValueError("the imagenet loader needs the model to resolve its transforms")
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    folders = {}
    for sub in ("train", "val"):
        try:
            folders[sub] = ImageFolder(str(root / sub), transform=transform, loader=read_image)
        except (FileNotFoundError, OSError) as e:  # no class folder, or a class folder without images
            cause = " ".join(str(e).split())[:300]
            raise HySquantError(
                f"cannot read the images in {root / sub} ({cause}): every class folder needs at least one image"
            ) from None
    train, val = folders["train"], folders["val"]
    if train.classes != val.classes:
        only = sorted(set(train.classes) ^ set(val.classes))
        shown = ", ".join(f"{c} ({'train' if c in train.classes else 'val'} only)" for c in only[:5])
        raise HySquantError(
            f"{root}/train and {root}/val have different class folders ({shown or 'in another order'}): fix the tree"
        )
    n_calib, n_val = int(settings.calib_size), int(settings.search_val_size)
    if n_calib + n_val > len(train):
        raise HySquantError(
            f"data.calib_size + search_val_size exceed the {len(train)} images in {root}/train: lower them"
        )
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))

    def stack(idx: torch.Tensor, name: str) -> Split:
        items = [train[int(i)] for i in idx]
        return Split(name, torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items]))

    test_idx = torch.randperm(len(val), generator=torch.Generator().manual_seed(seed))
    if settings.test_size is not None:
        test_idx = test_idx[: int(settings.test_size)]
    test_idx = test_idx.sort().values  # sequential reads
    subset = torch.utils.data.Subset(val, test_idx.tolist())
    loader = torch.utils.data.DataLoader(
        subset, batch_size=int(settings.batch_size), shuffle=False, num_workers=int(settings.workers)
    )
    x0, _ = train[0]
    return DataSplits(
        name="imagenet",
        num_classes=len(train.classes),
        in_chans=int(x0.shape[0]),
        img_size=int(x0.shape[-1]),
        calib=stack(perm[:n_calib], "calib"),
        search_val=stack(perm[n_calib : n_calib + n_val], "search_val"),
        test=Split("test", loader=loader, size=len(subset)),
    )
