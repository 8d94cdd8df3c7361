"""Hydra entry points, one per console script, all over the shared ``conf/`` tree.

    hysquant-train    train (or report) the embedded default model
    hysquant-lut      build the sensitivity lookup table (LUT)
    hysquant-search   search a mixed-precision policy under hardware budgets
    hysquant-apply    evaluate a policy on the test split and write the quantized model
    hysquant-bench    benchmarks that print figures

A :class:`HySquantError` ends a run with one ``error: ...`` line on stderr and exit status 2.
"""

from __future__ import annotations

import functools
import importlib.resources
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from hysquant_rl.errors import HySquantError

log = logging.getLogger("hysquant_rl")
CONF_DIR = str(importlib.resources.files("hysquant_rl.conf"))


def run_dir() -> Path:
    """The Hydra run directory of the current job."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def _app(config_name: str) -> Callable[[Callable[[DictConfig], Any]], Callable[[], Any]]:
    def deco(fn: Callable[[DictConfig], Any]) -> Callable[[], Any]:
        @functools.wraps(fn)
        def task(cfg: DictConfig) -> Any:
            try:
                return fn(cfg)
            except HySquantError as e:
                log.error("error: %s", e)
                print(f"error: {e}", file=sys.stderr)
                sys.exit(2)

        return hydra.main(version_base=None, config_path=CONF_DIR, config_name=config_name)(task)

    return deco


@_app("train")
def train(cfg: DictConfig) -> None:
    """Train the embedded model for this config into the model cache (``train.force=true`` retrains)."""
    from hysquant_rl.data import load_data
    from hysquant_rl.models import embedded_checkpoint
    from hysquant_rl.train import train_embedded

    if not cfg.model.embedded:
        raise HySquantError(f"model={cfg.model.name} is not the embedded model: hysquant-train trains model=embedded only")
    path = embedded_checkpoint(cfg)
    if path.exists() and not cfg.train.force:
        log.info("embedded model already cached at %s (train.force=true retrains it)", path)
        return
    train_embedded(cfg, load_data(cfg.data, seed=int(cfg.seed)), path)


@_app("apply")
def apply(cfg: DictConfig) -> None:
    from hysquant_rl.apply import apply_policy

    apply_policy(cfg, run_dir())


@_app("search")
def search(cfg: DictConfig) -> None:
    from hysquant_rl.search import run_search

    run_search(cfg, run_dir())


@_app("bench")
def bench(cfg: DictConfig) -> None:
    from hysquant_rl.bench import run_bench

    run_bench(cfg, run_dir())


@_app("lut")
def lut(cfg: DictConfig) -> None:
    from hysquant_rl.sensitivity import run_lut

    run_lut(cfg, run_dir())
