"""Model loading: timm names, local checkpoints, the cached embedded model, and the errors users see."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import save_file

from hysquant_rl.errors import HySquantError
from hysquant_rl.models import check_model_name, create_model, embedded_checkpoint, read_state_dict
from hysquant_rl.train import embedded_state
from tests.conftest import run_settings

XXS = ["model=mobilevit_xxs", "model.pretrained=false", "model.num_classes=10", "model.in_chans=1", "model.img_size=32"]


def test_unknown_model_suggests_nearest():
    with pytest.raises(HySquantError, match="did you mean.*mobilevit_s"):
        check_model_name("mobilevit_ss")
    check_model_name("mobilevit_s.cvnets_in1k")  # a pretrained tag of a known architecture


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_checkpoint_roundtrip(tmp_path, small_model, suffix):
    path = tmp_path / f"w{suffix}"
    state = {k: v.contiguous() for k, v in small_model.state_dict().items()}
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)  # DDP-style, nested
    model, spec = create_model(run_settings(overrides=XXS + [f"model.checkpoint={path}"]).model)
    assert spec.input_shape == (1, 32, 32)
    x = torch.randn(2, 1, 32, 32)
    with torch.inference_mode():
        assert torch.equal(model(x), small_model(x))


def test_checkpoint_errors(tmp_path, small_model):
    with pytest.raises(HySquantError, match="does not exist"):
        create_model(run_settings(overrides=XXS + [f"model.checkpoint={tmp_path / 'missing.pth'}"]).model)
    path = tmp_path / "w.pth"
    torch.save(small_model.state_dict(), path)
    with pytest.raises(HySquantError, match=r"does not fit model mobilevit_xxs: .*shape mismatches.*head\.fc"):
        create_model(run_settings(overrides=XXS + [f"model.checkpoint={path}", "model.num_classes=5"]).model)
    with pytest.raises(HySquantError, match="does not fit model mobilevit_xs: .*shape mismatches"):
        create_model(run_settings(overrides=XXS + [f"model.checkpoint={path}", "model.name=mobilevit_xs"]).model)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(HySquantError, match="could not be read"):
        create_model(run_settings(overrides=XXS + [f"model.checkpoint={tmp_path / 'junk.pt'}"]).model)


def test_pretrained_offline_points_to_checkpoint(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # what an offline machine sees, without waiting on a network
    hub = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)  # read once at import: the variable alone comes too late
    with pytest.raises(HySquantError, match="model.checkpoint=PATH"):
        create_model(run_settings(overrides=["model=mobilevit_xxs"]).model)


def test_no_weights_is_an_error():
    with pytest.raises(HySquantError, match="has no weights"):
        create_model(run_settings(overrides=XXS).model)


def test_embedded_model_trained_once_and_reused(digits_pipeline):
    run = run_settings()
    path = embedded_checkpoint(run.model, run.data, run.seed, run.cache_dir)
    assert path.exists()
    stamp = os.stat(path).st_mtime_ns
    state, trained = embedded_state(run, data=lambda: pytest.fail("a cached model needs no data"))
    model, _ = create_model(run.model, state)
    assert not trained
    assert os.stat(path).st_mtime_ns == stamp  # loaded, not retrained
    assert torch.equal(model.state_dict()["head.fc.weight"], digits_pipeline.model.state_dict()["head.fc.weight"])
    # a different recipe is a different cache entry
    assert checkpoint_of(["data.train.epochs=3"]) != path
    assert checkpoint_of(["data.test_size=300"]) != path  # digits: fewer training images
    assert checkpoint_of(["eval.batch_size=64"]) == path  # evaluation only: same weights


def checkpoint_of(overrides: list[str]):
    run = run_settings(overrides=overrides)
    return embedded_checkpoint(run.model, run.data, run.seed, run.cache_dir)


def test_embedded_model_accuracy(digits_pipeline):
    m = digits_pipeline.evaluator.evaluate([(32, 32)] * len(digits_pipeline.units), "test")
    assert m.top1 >= 97.0


def test_a_damaged_cached_model_is_trained_again(tmp_path, run_here):
    """The model cache is ours: an unreadable file is reported by what it is (not as model.checkpoint, which the
    user never set) and trained again, by hysquant-train as by any app that needs it."""
    from hysquant_rl.apps.train import main as train_main

    overrides = [f"paths.cache={tmp_path / 'cache'}", "data.train.epochs=1"]  # one epoch: seconds on digits
    first = run_here(train_main, *overrides, tmp_path=tmp_path / "run1")
    assert first.returncode == 0, first.stderr[-2000:]
    path = checkpoint_of(overrides)
    good = path.stat().st_size
    path.write_bytes(b"\x00 not a checkpoint")
    again = run_here(train_main, *overrides, tmp_path=tmp_path / "run2")
    assert again.returncode == 0, again.stderr[-2000:]
    said = [line for line in (again.stdout + again.stderr).splitlines() if "unreadable" in line]
    assert said and "model.checkpoint" not in said[0] and "already cached" not in again.stdout + again.stderr
    assert path.stat().st_size == good and read_state_dict(path)  # a whole model again
