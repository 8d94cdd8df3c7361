"""The console scripts, one module each, all over the shared ``conf/`` tree:

    hysquant-train    apps/train.py   train (or report) the embedded default model
    hysquant-lut      apps/lut.py     build the sensitivity lookup table (LUT)
    hysquant-search   apps/search.py  search a mixed-precision policy under hardware budgets
    hysquant-apply    apps/apply.py   evaluate a policy on the test split and write the quantized model
    hysquant-bench    apps/bench.py   every search method under the same budgets, figures and plots

This is the only layer that sees a Hydra config: each app resolves it once (:func:`plain`, then the settings'
``from_mapping``) into the typed settings of :mod:`hysquant_rl.settings` and passes those down;
:func:`compose_config` gives scripts and tests the same config outside an app. A :class:`HySquantError` ends a
run with one ``error: ...`` line on stderr and exit status 2. In a sweep (``-m``) a failing job prints its line and
the sweep goes on; the sweep's exit status is the number of jobs that failed.
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
from omegaconf import DictConfig, OmegaConf

from hysquant_rl.errors import HySquantError

log = logging.getLogger("hysquant_rl")
CONF_DIR = str(importlib.resources.files("hysquant_rl.conf"))


def run_dir() -> Path:
    """The Hydra run directory of the current job."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def compose_config(app: str, overrides: list[str] | None = None) -> DictConfig:
    """The config ``conf/<app>.yaml`` with command-line style ``overrides``, as the app composes it (for scripts
    and tests that call the library outside an app)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return compose(app, overrides=list(overrides or []))


def plain(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain containers, interpolations resolved; a value left ``???`` is a one-line error."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise HySquantError(f"{', '.join(missing)} must be set: pass {missing[0]}=... on the command line")
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def app(config_name: str) -> Callable[[Callable[[DictConfig], Any]], Callable[[], Any]]:
    """Make ``fn(cfg)`` a Hydra console script over ``conf/<config_name>.yaml`` that turns a
    :class:`HySquantError` into one ``error:`` line and exit status 2 (in a sweep: the number of failed jobs)."""

    def deco(fn: Callable[[DictConfig], Any]) -> Callable[[], Any]:
        failed: list[str] = []

        @functools.wraps(fn)
        def task(cfg: DictConfig) -> Any:
            try:
                return fn(cfg)
            except HySquantError as e:
                message, code = str(e), getattr(e, "exit_code", 2)
            except KeyboardInterrupt:
                message, code = "interrupted: what was measured before is kept (the LUT cache, the checkpoints)", 130
            except OSError as e:  # a directory that cannot be written, a full disk
                where = f" {e.filename}" if e.filename else ""
                message = f"cannot write{where} ({e.strerror or e}): make it writable or free disk space"
                code = 2
            report(message)
            if not _in_sweep():
                sys.exit(code)
            failed.append(str(run_dir()))  # the sweep goes on with its next job

        run = hydra.main(version_base=None, config_path=CONF_DIR, config_name=config_name)(task)

        @functools.wraps(fn)
        def main() -> Any:
            failed.clear()
            _check_output_dirs(sys.argv[1:])
            result = run()
            if failed:
                print(f"{len(failed)} job(s) of the sweep failed: {', '.join(failed)}", file=sys.stderr)
                sys.exit(min(len(failed), 125))
            return result

        return main

    return deco


def _check_output_dirs(args: list[str]) -> None:
    """Create the run (or sweep) directory given on the command line now, so that one that cannot be written is
    one line, not the traceback of Hydra creating it."""
    for arg in args:
        key, _, value = arg.partition("=")
        if key in ("hydra.run.dir", "hydra.sweep.dir") and value:
            try:
                Path(value).mkdir(parents=True, exist_ok=True)
            except OSError as e:
                report(f"cannot create {key}={value} ({e.strerror or e}): choose a directory that can be written")
                sys.exit(2)


def report(message: str) -> None:
    """One ``error:`` line on stderr, and the same in the run's log file (not twice on the console)."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "error: %s", (message,), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
    print(f"error: {message}", file=sys.stderr)


def _in_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.get().mode == RunMode.MULTIRUN
