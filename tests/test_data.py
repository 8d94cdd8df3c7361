"""Splits: disjoint, seeded, in memory; Fashion-MNIST IDX reading; an ImageNet-style folder tree."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from hysquant_rl.data import FASHION_FILES, load_data
from hysquant_rl.errors import HySquantError
from tests.conftest import assert_one_error_line, run_settings

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


def _rows(x: torch.Tensor) -> set[bytes]:
    return {r.numpy().tobytes() for r in x}


def test_digits_splits_disjoint_and_seeded():
    cfg = run_settings()
    a = load_data(cfg.data, seed=0)
    b = load_data(cfg.data, seed=0)
    c = load_data(cfg.data, seed=1)
    assert (len(a.calib), len(a.search_val), len(a.test)) == (128, 400, 400)
    assert len(a.train) == 1797 - 800
    assert torch.equal(a.test.x, b.test.x) and torch.equal(a.search_val.y, b.search_val.y)
    assert not torch.equal(a.test.x, c.test.x)
    test, val, train = _rows(a.test.x), _rows(a.search_val.x), _rows(a.train.x)
    # digits has a few duplicate images; index-disjoint splits may share those, so allow that many
    dups = 1797 - len(_rows(torch.from_numpy(load_digits().images.astype(np.float32))))
    assert len(test & val) <= dups and len(test & train) <= dups and len(val & train) <= dups
    assert _rows(a.calib.x) <= train
    assert a.test.x.shape[1:] == (1, 32, 32) and a.test.x.dtype == torch.float32


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


@pytest.fixture
def fashion_root(tmp_path):
    """IDX files in Fashion-MNIST's layout, made from sklearn's digits (28x28, labels 0..9)."""
    d = load_digits()
    imgs = np.kron(d.images, np.ones((3, 3)))[:, :, :]  # 24x24
    imgs = np.pad(imgs * 15, ((0, 0), (2, 2), (2, 2))).astype(np.uint8)  # 28x28
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", imgs[:1500])
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", d.target[:1500])
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", imgs[1500:])
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", d.target[1500:])
    return tmp_path


def test_fashion_mnist_from_idx(fashion_root):
    cfg = run_settings(
        overrides=[
            "data=fashion_mnist",
            f"data.root={fashion_root}",
            "data.train_size=1000",
            "data.calib_size=100",
            "data.search_val_size=300",
        ]
    )
    s = load_data(cfg.data, seed=0)
    assert (len(s.train), len(s.calib), len(s.search_val), len(s.test)) == (1000, 100, 300, 297)
    assert s.test.x.shape[1:] == (1, 32, 32)
    assert torch.equal(s.test.y, torch.from_numpy(load_digits().target[1500:]).long())


def test_fashion_mnist_missing_and_oversized(tmp_path, fashion_root):
    cfg = run_settings(overrides=["data=fashion_mnist", f"data.root={tmp_path / 'nowhere'}"])
    with pytest.raises(HySquantError, match="data.download=true"):
        load_data(cfg.data, seed=0)
    cfg = run_settings(overrides=["data=fashion_mnist", f"data.root={fashion_root}"])
    with pytest.raises(HySquantError, match="exceeds"):
        load_data(cfg.data, seed=0)  # 20000 training images asked of 1500


def test_corrupt_idx(tmp_path):
    for name in FASHION_FILES:
        (tmp_path / f"{name}.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03" + struct.pack(">III", 10, 28, 28)))
    cfg = run_settings(overrides=["data=fashion_mnist", f"data.root={tmp_path}"])
    with pytest.raises(HySquantError, match="truncated"):
        load_data(cfg.data, seed=0)


@pytest.mark.skipif(not DEBIAN_FASHION.exists(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_debian_package():
    s = load_data(run_settings(overrides=["data=fashion_mnist"]).data, seed=0)
    assert (len(s.train), len(s.calib), len(s.search_val), len(s.test)) == (20000, 256, 1000, 10000)
    assert sorted(s.test.y.unique().tolist()) == list(range(10))


def test_imagenet_folder(tmp_path, small_model):
    import timm

    d = load_digits()
    for split, idx in (("train", range(0, 60)), ("val", range(60, 90))):
        for i in idx:
            folder = tmp_path / split / f"n{d.target[i]:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray((d.images[i] * 15).astype(np.uint8)).convert("RGB").save(folder / f"{i}.png")
    model = timm.create_model("mobilevit_xxs", num_classes=10)
    cfg = run_settings(
        overrides=[
            "data=imagenet",
            f"data.root={tmp_path}",
            "data.calib_size=8",
            "data.search_val_size=16",
            "data.test_size=20",
            "data.batch_size=7",
            "data.workers=0",
        ]
    )
    s = load_data(cfg.data, seed=0, model=model)
    assert s.num_classes == 10 and s.in_chans == 3 and s.img_size == 256  # timm's resolved config
    assert s.calib.x.shape == (8, 3, 256, 256) and len(s.search_val) == 16 and len(s.test) == 20
    xs = [x for x, _ in s.test.batches(7)]
    assert sum(len(x) for x in xs) == 20 and xs[0].shape[1:] == (3, 256, 256)
    assert not (_rows(s.calib.x) & _rows(s.search_val.x))
    with pytest.raises(HySquantError, match="x does not exist: point data.root at an ImageNet tree"):
        load_data(run_settings(overrides=["data=imagenet", f"data.root={tmp_path / 'x'}"]).data, seed=0, model=model)


def _image_tree(root: Path, classes: dict[str, dict[str, int]]) -> None:
    """``root/<split>/<class>/<i>.png``: ``classes[split][class]`` small RGB images each."""
    d = load_digits()
    for split, counts in classes.items():
        for name, n in counts.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray((d.images[i] * 15).astype(np.uint8)).convert("RGB").save(folder / f"{i}.png")


def _imagenet(root: Path, **sizes: int):
    overrides = [f"data.{k}={v}" for k, v in {"calib_size": 2, "search_val_size": 2, "workers": 0, **sizes}.items()]
    return run_settings(overrides=["data=imagenet", f"data.root={root}", "data.batch_size=2", *overrides]).data


@pytest.mark.parametrize(
    "case, pattern",
    [
        ("a class folder without images", r"cannot read the images in .*/train \(class folder b holds no image\)"),
        ("a class missing from val", r"/train and .*/val have different class folders \(b \(train only\)\)"),
        ("an image that does not decode", r"cannot read image .*/train/a/0.png \(cannot identify image file"),
        ("a truncated image", r"cannot read image .*/train/a/0.png \(.*truncated"),
    ],
)
def test_image_folders_that_cannot_be_read_are_one_line(tmp_path, case, pattern):
    """What is wrong, and which file: never "cannot write", never a traceback. A corrupt image is refused, not skipped
    (the splits would change without a word)."""
    import timm

    _image_tree(tmp_path, {"train": {"a": 2, "b": 2}, "val": {"a": 1, "b": 1}})
    first = tmp_path / "train" / "a" / "0.png"
    if case == "a class folder without images":
        for p in (tmp_path / "train" / "b").iterdir():
            p.unlink()
    elif case == "a class missing from val":
        (tmp_path / "val" / "b" / "0.png").unlink()
        (tmp_path / "val" / "b").rmdir()
    elif case == "an image that does not decode":
        first.write_bytes(b"not an image at all")
    else:
        first.write_bytes(first.read_bytes()[:60])
    model = timm.create_model("mobilevit_xxs", num_classes=2)
    with pytest.raises(HySquantError, match=pattern) as e:
        load_data(_imagenet(tmp_path, calib_size=2, search_val_size=2), seed=0, model=model)  # every train image
    assert "\n" not in str(e.value)


def test_a_corrupt_image_in_the_streamed_test_split_is_one_line(tmp_path):
    """The test split is decoded through a DataLoader worker process (held in memory when small, streamed when
    large), whose error comes back wrapped in its traceback: the line names the file and the cause only."""
    import timm

    _image_tree(tmp_path, {"train": {"a": 2, "b": 2}, "val": {"a": 2, "b": 2}})
    bad = tmp_path / "val" / "b" / "1.png"
    bad.write_bytes(b"\x89PNG but not really")
    model = timm.create_model("mobilevit_xxs", num_classes=2)
    with pytest.raises(HySquantError) as e:
        list(load_data(_imagenet(tmp_path, workers=1), seed=0, model=model).test.batches(2))
    assert str(e.value).startswith(f"cannot read image {bad} (cannot identify image file") and "\n" not in str(e.value)


@pytest.mark.parametrize("damage", ["truncated", "not gzip"])
def test_a_bad_gz_is_a_read_error_through_the_app(tmp_path, fashion_root, run_here, damage):
    """Reported as what it is, a file that cannot be read, naming it (not "cannot write", not an EOFError traceback)."""
    from hysquant_rl.apps.apply import main

    path = fashion_root / "train-images-idx3-ubyte.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x00" * 64)
    ran = run_here(main, "policy=W8A8", "data=fashion_mnist", f"data.root={fashion_root}", tmp_path=tmp_path / "run")
    line = assert_one_error_line(ran, rf"cannot read {path} \((EOFError|BadGzipFile): .*\): replace the file")
    assert "cannot write" not in line
