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
from tests.conftest import run_settings

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
    with pytest.raises(HySquantError, match="no train/ folder"):
        load_data(run_settings(overrides=["data=imagenet", f"data.root={tmp_path / 'x'}"]).data, seed=0, model=model)
