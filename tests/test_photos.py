"""Photo data sets in the ImageNet folder layout (``data=imagenette``, ``data=cifar10``), read from a folder or in
place from a zip archive: splits, bad archives, training a model on them (resumable), the weights this project ships.
Small fixtures made here; one smoke test reads the real Imagenette zip when it is at hand."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hysquant_rl.data import load_data
from hysquant_rl.errors import HySquantError
from tests.conftest import assert_one_error_line, run_settings

CLASSES = ("n0001", "n0002", "n0003")
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenette-224.zip"  # benchmarks' data, if here


def _tree(root: Path, train: int = 10, val: int = 4, size: int = 40) -> Path:
    """``root/mini/{train,val}/<class>/<i>.JPEG``: small RGB photos of a colour per class plus noise."""
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("val", val)):
        for c, name in enumerate(CLASSES):
            folder = root / "mini" / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = np.zeros((size, size, 3), dtype=np.float32)
                base[..., c] = 180
                pixels = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{split}_{i}.JPEG", quality=90)
    return root / "mini"


def _zip(folder: Path, path: Path) -> Path:
    """A stored (uncompressed) zip of ``folder`` under its own name, with directory entries, as the shared archives."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        for p in sorted(folder.parent.rglob("*")):
            if folder in p.parents or p == folder:
                z.write(p, p.relative_to(folder.parent).as_posix() + ("/" if p.is_dir() else ""))
    return path


OVERRIDES = [
    "data.num_classes=3",
    "data.img_size=32",
    "data.train_size=18",
    "data.calib_size=6",
    "data.search_val_size=6",
    "data.workers=0",
]


def _settings(root: Path, *extra: str, data: str = "imagenette"):
    return run_settings("train", [f"data={data}", f"data.root={root}", *OVERRIDES, *extra]).data


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """(folder, its zip) of a three-class tree: 30 train images, 12 val images."""
    base = tmp_path_factory.mktemp("photos")
    folder = _tree(base)
    return folder, _zip(folder, base / "mini.zip")


def test_a_zip_reads_as_its_folder_with_seeded_disjoint_splits(photos):
    folder, archive = photos
    a, b = load_data(_settings(archive), seed=0), load_data(_settings(folder), seed=0)
    assert (len(a.train), len(a.calib), len(a.search_val), len(a.test)) == (18, 6, 6, 12)
    assert a.num_classes == 3 and a.input_shape == (3, 32, 32) and a.meta["classes"] == list(CLASSES)
    for name in ("calib", "search_val", "test"):  # the same images, bit for bit, from the archive and the folder
        assert torch.equal(a.split(name).x, b.split(name).x) and torch.equal(a.split(name).y, b.split(name).y)
    rows = {name: {r.numpy().tobytes() for r in a.split(name).x} for name in ("calib", "search_val")}
    assert not rows["calib"] & rows["search_val"]
    c = load_data(_settings(archive), seed=1)
    assert not torch.equal(a.calib.x, c.calib.x)  # another seed, another draw
    # training batches: augmented at the epoch's resolution, shuffled by the epoch, every batch full
    x, y = next(a.train.augmented(0, 4, 24))
    assert x.shape == (4, 3, 24, 24) and y.dtype == torch.int64
    assert sum(len(y) for _, y in a.train.augmented(1, 4, 24)) == 16  # 18 images, the last batch of 2 dropped


def test_a_large_test_split_streams(photos, monkeypatch):
    from hysquant_rl.data import trees

    monkeypatch.setattr(trees, "IN_MEMORY_BYTES", 1)
    s = load_data(_settings(photos[1], "data.batch_size=5"), seed=0)
    assert s.test.x is None and len(s.test) == 12
    assert [len(y) for _, y in s.test.batches(5)] == [5, 5, 2]


@pytest.mark.parametrize(
    "damage, pattern",
    [
        ("missing", r"data.root=.*nowhere.zip does not exist: pass data.root=/path/to/imagenette-224.zip"),
        ("truncated", r"cannot read the archive .*mini.zip \(.*\): it is damaged or not a zip file; copy it again"),
        ("not a tree", r"the archive .*mini.zip holds no train/ and val/ folders"),
        (
            "undecodable image",
            r"cannot read image .*mini.zip:mini/(train|val)/n0002/.*JPEG \(cannot identify image file",
        ),
        ("bad CRC", r"cannot read image .*mini.zip:mini/(train|val)/n0001/.*\(Bad CRC-32.*\): the archive is damaged"),
    ],
)
def test_bad_archives_are_one_line(photos, tmp_path, damage, pattern):
    folder, good = photos
    path = tmp_path / "mini.zip"
    if damage == "missing":
        path = tmp_path / "nowhere.zip"
    elif damage == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif damage == "not a tree":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("readme.txt", "no images here")
    else:
        with zipfile.ZipFile(good) as src, zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
            for info in src.infolist():
                data = src.read(info)
                if (
                    info.filename.endswith(".JPEG")
                    and ("n0002" if damage == "undecodable image" else "n0001") in info.filename
                ):
                    data = b"not a JPEG" + data[10:] if damage == "undecodable image" else data
                z.writestr(info, data)
        if damage == "bad CRC":  # flip bytes inside the stored members of one class: their CRC no longer matches
            raw = bytearray(path.read_bytes())
            with zipfile.ZipFile(path) as z:
                for info in z.infolist():
                    if "n0001/" in info.filename and info.filename.endswith(".JPEG"):
                        start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
                        raw[start + 200 : start + 210] = bytes(10)
            path.write_bytes(bytes(raw))
    with pytest.raises(HySquantError, match=pattern) as e:
        s = load_data(_settings(path), seed=0)
        list(s.test.batches(4))
    assert "\n" not in str(e.value)


def test_a_bad_archive_through_the_app_writes_nothing(photos, tmp_path, run_here):
    from hysquant_rl.apps.train import main

    bad = tmp_path / "mini.zip"
    bad.write_bytes(photos[1].read_bytes()[:5000])
    cache = tmp_path / "cache"
    ran = run_here(
        main, "data=imagenette", f"data.root={bad}", f"paths.cache={cache}", *OVERRIDES, tmp_path=tmp_path / "r"
    )
    assert_one_error_line(ran, r"cannot read the archive .*mini.zip .*damaged or not a zip file")
    assert not list((tmp_path / "r").glob("model.*")) and not list(cache.rglob("*.pt*"))


def test_train_a_named_model_resume_and_load_it(photos, tmp_path, run_here):
    """``hysquant-train model=mobilevit_xxs``: weights and provenance in the run directory, loadable with
    ``model.checkpoint``; the same training started again resumes after its last epoch instead of training again."""
    from hysquant_rl.apps.train import main
    from hysquant_rl.models import ModelSpec, build_architecture, create_model, read_state_dict
    from hysquant_rl.train import train_model

    run = tmp_path / "run"
    args = ["model=mobilevit_xxs", "data=imagenette", f"data.root={photos[1]}", *OVERRIDES]
    recipe = ["data.train.epochs=2", "data.train.batch_size=6", "data.train.resolution=[[0,24],[1,32]]"]
    ran = run_here(main, *args, *recipe, tmp_path=run)
    assert ran.returncode == 0, ran.stderr[-2000:]
    meta = json.loads((run / "model.json").read_text())
    assert meta["model"] == "mobilevit_xxs" and meta["epochs"] == 2 and meta["cache_file"] is None
    assert [h["resolution"] for h in meta["history"]] == [24, 32]
    assert len(meta["source_sha256"]) == 64 and meta["source"] == str(photos[1])
    settings = run_settings("search", [*args, *recipe, f"model.checkpoint={run / 'model.safetensors'}"])
    model, _ = create_model(settings.model)
    assert model.get_classifier().out_features == 3
    # resume: the state after the last epoch is there, so nothing is trained again and the weights are the ones saved
    fresh = build_architecture(ModelSpec.of(settings.model))
    out = train_model(fresh, load_data(settings.data, seed=0), settings.data.train, 0, 1, run / "train_state.pt")
    assert out["history"] == meta["history"]
    saved = read_state_dict(run / "model.safetensors")
    assert all(torch.equal(saved[k], v) for k, v in fresh.state_dict().items())


def test_shipped_weights_stand_for_their_recipe():
    """Each shipped ``.safetensors`` loads into its architecture, and its ``cache_file`` is the embedded model's cache
    name under the shipped configs: ``model=embedded data=<its data>`` uses it instead of training for hours."""
    from hysquant_rl.models import (
        SHIPPED,
        ModelSpec,
        build_architecture,
        embedded_checkpoint,
        load_weights,
        read_state_dict,
        shipped_weights,
    )

    metas = sorted(SHIPPED.glob("*.json"))
    for meta_path in metas:
        meta = json.loads(meta_path.read_text())
        run = run_settings("search", [f"data={meta['data']}", "data.root=/unused"])
        path = embedded_checkpoint(run.model, run.data, run.seed, run.cache_dir)
        assert meta["cache_file"] == path.name and shipped_weights(path) == meta_path.with_suffix(".safetensors")
        model = build_architecture(ModelSpec.of(run.model))
        load_weights(model, read_state_dict(meta_path.with_suffix(".safetensors")), meta_path.name, run.model.name)
        assert meta["test_top1"] > 50 and len(meta["source_sha256"]) == 64


@pytest.mark.skipif(not SHARED.is_file(), reason="the shared Imagenette archive is not on this machine")
def test_the_real_imagenette_archive():
    s = load_data(run_settings("search", ["data=imagenette", f"data.root={SHARED}", "data.search_val_size=64"]).data, 0)
    assert (len(s.train), len(s.calib), len(s.search_val), len(s.test)) == (8000, 256, 64, 3925)
    assert s.input_shape == (3, 224, 224) and s.test.x is None  # 2.4 GB as floats: streamed
