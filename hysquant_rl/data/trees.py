"""Photos in the ImageNet folder layout, ``<root>/<split>/<class>/<image>``, read from a folder or in place from a zip
archive (members may sit under one top folder, ``imagenette-224/train/n01440764/x.JPEG``; a stored zip is read with a
seek per image, so nothing is unpacked):

* ``imagenet``: a user's tree (``train/``, ``val/``) for a pretrained timm model: timm's eval transforms of the model;
* ``imagenette`` (``train/``, ``val/``; 10 ImageNet classes at 224 px) and ``cifar10`` (``train/``, ``test/``; 32 px):
  photos for a model this project trains (``hysquant-train``), with the transforms and the training recipe of their
  ``conf/data/`` file.

Splits: the model trains on ``train_size`` images of ``train/`` (all but calibration and search-val when not set);
calibration and search-val are drawn, seeded and disjoint, from the rest of ``train/`` and held in memory; the test
split is the whole second folder (``val/`` or ``test/``, or ``test_size`` of it), held in memory when it fits in
:data:`IN_MEMORY_BYTES`, else streamed by ``data.workers`` loader processes. Training batches stream through the same
workers, each on one thread, decoding and augmenting (random-resized crop at the epoch's resolution, horizontal flip).

A missing root, an archive that is not a readable zip (truncated, damaged), a tree without the split folders, a class
folder without images, different classes in the two folders, and an image that does not decode (or fails its CRC)
are each one :class:`HySquantError` line naming the file and what to do.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hysquant_rl.data.splits import Batch, DataSplits, Split, register_dataset
from hysquant_rl.errors import HySquantError

if TYPE_CHECKING:
    from hysquant_rl.settings import DataSettings

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
IN_MEMORY_BYTES = 1 << 30  # a test split up to 1 GB of float32 pixels is held in memory, a larger one streams


class ImageReadError(HySquantError):
    """An image that cannot be decoded. Raised in a DataLoader worker it comes back with the worker's traceback in
    its message: only the last line, this error's own message, is kept."""

    def __init__(self, message: str) -> None:
        lines = [line for line in str(message).splitlines() if line.strip()]
        last = lines[-1] if lines else str(message)
        super().__init__(last.split(f"{ImageReadError.__name__}: ", 1)[-1])


def _decode(stream: Any, where: str) -> Any:
    from PIL import Image

    try:
        return Image.open(stream).convert("RGB")
    except Exception as e:  # not an image, truncated, a decompression bomb, unreadable
        cause = " ".join(str(e).split())[:200] or type(e).__name__
        raise ImageReadError(f"cannot read image {where} ({cause}): remove or replace it") from None


def read_image(path: str) -> Any:
    """An image file as an RGB PIL image: one that does not decode is an :class:`ImageReadError` naming it."""
    try:
        with open(path, "rb") as f:
            return _decode(f, path)
    except OSError as e:
        raise ImageReadError(f"cannot read image {path} ({e.strerror or e}): remove or replace it") from None


class ImageTree:
    """The images of ``root`` (a folder or a zip archive) in the layout ``<split>/<class>/<image>``, for the split
    folders ``splits``: ``samples[split]`` is a sorted list of (member, class index) with classes sorted by name
    (torchvision's ``ImageFolder`` order), the same class list in every split."""

    def __init__(self, root: Path, splits: Sequence[str], hint: str) -> None:
        self.root, self.splits, self.prefix = root, tuple(splits), ""
        if not root.exists():
            raise HySquantError(f"data.root={root} does not exist: {hint}")
        self.archive = root.is_file()
        files = self._zip_members() if self.archive else self._folder_members()
        by_split: dict[str, dict[str, list[str]]] = {s: {} for s in self.splits}
        for member, (split, cls) in files.items():
            by_split[split].setdefault(cls, []).append(member)
        self.classes = sorted({c for s in self.splits for c in by_split[s]})
        for split in self.splits:
            missing = [c for c in self.classes if c not in by_split[split]]
            if missing:
                other = next(s for s in self.splits if s != split)
                shown = ", ".join(f"{c} ({other} only)" for c in missing[:5])
                raise HySquantError(
                    f"{self._where(self.splits[0])} and {self._where(self.splits[1])} have different class folders"
                    f" ({shown}): fix the tree"
                )
        index = {c: i for i, c in enumerate(self.classes)}
        self.samples = {
            s: sorted((m, index[c]) for c, members in by_split[s].items() for m in members) for s in self.splits
        }
        self._zip: tuple[int, zipfile.ZipFile] | None = None

    def _where(self, split: str) -> str:
        return f"{self.root}:{self.prefix}{split}" if self.archive else str(self.root / split)

    def _zip_members(self) -> dict[str, tuple[str, str]]:
        try:
            with zipfile.ZipFile(self.root) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            cause = getattr(e, "strerror", None) or str(e) or type(e).__name__
            raise HySquantError(
                f"cannot read the archive {self.root} ({cause}): it is damaged or not a zip file; copy it again, or"
                " point data.root at an unpacked folder"
            ) from None
        tops: dict[str, set[str]] = {}  # folder above the split folders -> split folders seen there
        for name in names:
            parts = name.split("/")
            i = next((i for i, part in enumerate(parts[:-1]) if part in self.splits), None)
            if i is not None:
                tops.setdefault("".join(f"{p}/" for p in parts[:i]), set()).add(parts[i])
        complete = sorted((t for t, seen in tops.items() if set(self.splits) <= seen), key=lambda t: (t.count("/"), t))
        if not complete:
            raise HySquantError(
                f"the archive {self.root} holds no {' and '.join(s + '/' for s in self.splits)} folders: point"
                f" data.root at an archive (or folder) in the layout {'|'.join(self.splits)}/<class>/<image>"
            )
        self.prefix = complete[0]
        members: dict[str, tuple[str, str]] = {}
        folders: set[tuple[str, str]] = set()
        for name in names:
            if not name.startswith(self.prefix):
                continue
            parts = name[len(self.prefix) :].split("/")
            if len(parts) >= 2 and parts[0] in self.splits and parts[1]:
                folders.add((parts[0], parts[1]))
                if len(parts) == 3 and parts[2].lower().endswith(IMAGE_EXTENSIONS):
                    members[name] = (parts[0], parts[1])
        self._check_empty_classes(folders, members)
        return members

    def _folder_members(self) -> dict[str, tuple[str, str]]:
        members: dict[str, tuple[str, str]] = {}
        folders: set[tuple[str, str]] = set()
        for split in self.splits:
            folder = self.root / split
            if not folder.is_dir():
                raise HySquantError(
                    f"data.root={self.root} has no {split}/ folder: point data.root at a tree with"
                    f" {' and '.join(s + '/' for s in self.splits)} (or its zip archive)"
                )
            for entry in os.scandir(folder):
                if not entry.is_dir():
                    continue
                folders.add((split, entry.name))
                for f in os.scandir(entry.path):
                    if f.name.lower().endswith(IMAGE_EXTENSIONS) and f.is_file():
                        members[f"{split}/{entry.name}/{f.name}"] = (split, entry.name)
        self._check_empty_classes(folders, members)
        return members

    def _check_empty_classes(self, folders: set[tuple[str, str]], members: dict[str, tuple[str, str]]) -> None:
        held = set(members.values())
        for split in self.splits:
            empty = sorted(c for s, c in folders if s == split and (s, c) not in held and c)
            if empty:
                raise HySquantError(
                    f"cannot read the images in {self._where(split)} (class folder {empty[0]} holds no image):"
                    " every class folder needs at least one image"
                )

    def read(self, member: str) -> Any:
        """One image as an RGB PIL image (:class:`ImageReadError` naming it when it does not decode)."""
        if not self.archive:
            return read_image(str(self.root / member))
        import io

        where = f"{self.root}:{member}"
        try:
            data = self._archive().read(member)
        except (zipfile.BadZipFile, OSError, EOFError, KeyError, ValueError) as e:  # a bad CRC, a truncated member
            cause = getattr(e, "strerror", None) or str(e) or type(e).__name__
            raise ImageReadError(
                f"cannot read image {where} ({cause}): the archive is damaged; copy it again"
            ) from None
        return _decode(io.BytesIO(data), where)

    def _archive(self) -> zipfile.ZipFile:
        """This process's handle on the archive (each DataLoader worker opens its own)."""
        if self._zip is None or self._zip[0] != os.getpid():
            self._zip = (os.getpid(), zipfile.ZipFile(self.root))
        return self._zip[1]

    def __getstate__(self) -> dict[str, Any]:  # sent to loader workers without the parent's open handle
        return {**self.__dict__, "_zip": None}


def source_sha256(root: str | os.PathLike) -> str:
    """SHA-256 of a data archive's bytes, or of a folder's sorted relative file names and sizes: what a model's
    provenance records as the data it was trained on."""
    root = Path(root)
    h = hashlib.sha256()
    if root.is_file():
        with open(root, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f"{path.relative_to(root)}\t{path.stat().st_size}\n".encode())
    return h.hexdigest()


class TreeImages(torch.utils.data.Dataset):
    """(image tensor, label) of ``samples`` of an :class:`ImageTree` through ``transform``."""

    def __init__(self, tree: ImageTree, samples: Sequence[tuple[str, int]], transform: Any) -> None:
        self.tree, self.samples, self.transform = tree, list(samples), transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        member, label = self.samples[i]
        return self.transform(self.tree.read(member)), label


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)  # a loader worker takes its share of the cores, not all of them


def _loader(dataset: Any, batch_size: int, workers: int, **kwargs: Any) -> Any:
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        worker_init_fn=_one_thread if workers else None,
        **kwargs,
    )


class StreamedSplit:
    """Batches of a split read by loader workers, any batch size (what :meth:`Split.batches` yields); a worker's
    :class:`ImageReadError` comes back as one line."""

    def __init__(self, dataset: Any, batch_size: int, workers: int) -> None:
        self.dataset, self.batch_size, self.workers = dataset, batch_size, workers

    def __iter__(self) -> Iterator[Batch]:
        try:
            yield from _loader(self.dataset, self.batch_size, self.workers, shuffle=False)
        except ImageReadError as e:
            raise ImageReadError(str(e)) from None


def _stack(dataset: Any, workers: int) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for x, y in StreamedSplit(dataset, 64, workers):
        xs.append(x)
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)


def eval_transform(size: int, crop_pct: float, mean: Sequence[float], std: Sequence[float]) -> Any:
    """Resize the shorter side to ``size / crop_pct``, centre-crop ``size``, normalise (timm's eval transform)."""
    from torchvision import transforms as T

    return T.Compose(
        [
            T.Resize(int(round(size / crop_pct)), interpolation=T.InterpolationMode.BICUBIC, antialias=True),
            T.CenterCrop(size),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


def train_transform(resolution: int, min_scale: float, mean: Sequence[float], std: Sequence[float]) -> Any:
    """Random-resized crop to ``resolution`` (area ``min_scale``..1 of the image), horizontal flip, normalise."""
    from torchvision import transforms as T

    return T.Compose(
        [
            T.RandomResizedCrop(resolution, scale=(min_scale, 1.0), antialias=True),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


def tree_splits(
    settings: DataSettings, seed: int, splits: tuple[str, str], evaluate: Any, augment: Any, hint: str
) -> DataSplits:
    """The splits of an :class:`ImageTree` (module docstring): ``evaluate`` is the transform of calibration,
    search-val and test images, ``augment(resolution)`` the training transform at a resolution (None: no training)."""
    if settings.root is None:
        raise HySquantError(f"data.root is not set: {hint}")
    root = Path(str(settings.root)).expanduser()
    tree = ImageTree(root, splits, hint)
    train_all, test_all = tree.samples[splits[0]], tree.samples[splits[1]]
    n_calib, n_val = int(settings.calib_size), int(settings.search_val_size)
    n_train = len(train_all) - n_calib - n_val if settings.train_size is None else int(settings.train_size)
    if n_train < 0 or n_train + n_calib + n_val > len(train_all):
        raise HySquantError(
            f"data.train_size + calib_size + search_val_size = {max(n_train, 0) + n_calib + n_val} exceed the"
            f" {len(train_all)} images in {tree._where(splits[0])}: lower them"
        )
    perm = np.random.default_rng(seed).permutation(len(train_all))
    train_idx = perm[:n_train]
    calib_idx, val_idx = perm[n_train : n_train + n_calib], perm[n_train + n_calib : n_train + n_calib + n_val]
    if settings.test_size is not None and int(settings.test_size) < len(test_all):
        keep = np.sort(np.random.default_rng(seed).permutation(len(test_all))[: int(settings.test_size)])
        test_all = [test_all[i] for i in keep]
    workers = int(settings.workers or 0)
    batch = int(settings.batch_size or 64)

    def held(idx: Sequence[int], name: str) -> Split:
        x, y = _stack(TreeImages(tree, [train_all[i] for i in idx], evaluate), workers)
        return Split(name, x, y)

    test_images = TreeImages(tree, test_all, evaluate)
    first = evaluate(tree.read(test_all[0][0]))
    if len(test_all) * first.numel() * 4 <= IN_MEMORY_BYTES:
        x, y = _stack(test_images, workers)
        test = Split("test", x, y)
    else:
        test = Split("test", loader=StreamedSplit(test_images, batch, workers), size=len(test_all))
    train = None
    if augment is not None:
        samples = [train_all[i] for i in train_idx]

        def epoch(index: int, batch_size: int, resolution: int) -> Iterator[Batch]:
            gen = torch.Generator().manual_seed(seed * 100_003 + index)
            loader = _loader(
                TreeImages(tree, samples, augment(resolution)),
                batch_size,
                workers,
                shuffle=True,
                drop_last=True,  # BatchNorm cannot train on a batch of one
                generator=gen,
            )
            try:
                yield from loader
            except ImageReadError as e:
                raise ImageReadError(str(e)) from None

        train = Split("train", size=len(samples), augmented=epoch)
    return DataSplits(
        name=settings.name,
        num_classes=len(tree.classes),
        in_chans=int(first.shape[0]),
        img_size=int(first.shape[-1]),
        calib=held(calib_idx, "calib"),
        search_val=held(val_idx, "search_val"),
        test=test,
        train=train,
        meta={"source": str(root), "classes": tree.classes},
    )


@register_dataset("imagenet")
def imagenet(settings: DataSettings, seed: int, model: torch.nn.Module | None = None) -> DataSplits:
    """A user's ImageNet tree ``data.root/{train,val}/<class>/<image>`` (or its zip) for a pretrained model:
    timm's eval transforms from the model's resolved data config; no training split."""
    import timm.data

    if model is None:
        raise ValueError("the imagenet loader needs the model to resolve its transforms")
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    hint = "point data.root at an ImageNet tree with train/ and val/ (or its zip archive)"
    return tree_splits(settings, seed, ("train", "val"), transform, None, hint)


def _own(settings: DataSettings, seed: int, splits: tuple[str, str], archive: str) -> DataSplits:
    """A photo data set a model of ours trains on: transforms from its ``conf/data/`` file."""
    mean, std = tuple(settings.mean or (0.5, 0.5, 0.5)), tuple(settings.std or (0.5, 0.5, 0.5))
    evaluate = eval_transform(int(settings.img_size), float(settings.crop_pct or 1.0), mean, std)
    min_scale = settings.train.min_scale if settings.train is not None else 0.35

    def augment(resolution: int) -> Any:
        return train_transform(resolution, min_scale, mean, std)

    hint = (
        f"pass data.root=/path/to/{archive} (the zip, read in place) or a folder with"
        f" {splits[0]}/ and {splits[1]}/ of class folders"
    )
    return tree_splits(settings, seed, splits, evaluate, augment, hint)


@register_dataset("imagenette")
def imagenette(settings: DataSettings, seed: int, model: Any = None) -> DataSplits:
    """Imagenette (10 easy ImageNet classes, 224 px): ``train/`` and ``val/`` (the test split)."""
    return _own(settings, seed, ("train", "val"), "imagenette-224.zip")


@register_dataset("cifar10")
def cifar10(settings: DataSettings, seed: int, model: Any = None) -> DataSplits:
    """CIFAR-10 as JPEG files (32 px): ``train/`` and ``test/`` (the test split)."""
    return _own(settings, seed, ("train", "test"), "cifar10-jpeg.zip")
