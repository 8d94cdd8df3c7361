"""Shared fixtures: Hydra configs composed from the real conf/ tree, and one digits pipeline per session
(its embedded model is trained once into the model cache, then reused, exactly as the CLI does)."""

from __future__ import annotations

import copy

import pytest
from hydra import compose, initialize_config_dir

from hysquant_rl.cli import CONF_DIR


def make_cfg(app: str = "search", overrides: list[str] | None = None):
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return compose(app, overrides=list(overrides or []), return_hydra_config=False)


@pytest.fixture(scope="session")
def digits_pipeline():
    from hysquant_rl.pipeline import build

    return build(make_cfg("search"))


@pytest.fixture(scope="session")
def small_model():
    """A randomly initialised mobilevit_xxs for 1x32x32 inputs, 10 classes (no training needed)."""
    import timm
    import torch

    torch.manual_seed(0)
    return timm.create_model("mobilevit_xxs", num_classes=10, in_chans=1).eval()


@pytest.fixture
def fresh_small_model(small_model):
    return copy.deepcopy(small_model)
