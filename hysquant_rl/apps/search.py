"""``hysquant-search``: the main job (paper section 3.3), top to bottom.

settings -> pipeline (model, splits, calibration, cost model) -> LUT (cached) and pruning -> budgets -> the
method on search-val -> hardware check of the best feasible policy, re-searching with tightened internal budgets
while one is missed -> test split, once -> best_policy.json, the quantized model, summary.json / summary.md,
TensorBoard under tb/.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from hysquant_rl.apps import app, plain, run_dir
from hysquant_rl.errors import HySquantError
from hysquant_rl.search.baselines import BASELINES
from hysquant_rl.settings import RunSettings, SearchSettings

METHOD_NAMES = ("rl", *BASELINES)


def make_method(search: SearchSettings, *args: Any) -> Any:
    """The ``search.method`` registry: the RL agent (``agents/``) or a baseline, built on the run's problem."""
    if search.method == "rl":
        from agents.rl import RLSearch

        return RLSearch(search, *args)
    return BASELINES[search.method](search, *args)


def check_method(search: SearchSettings) -> None:
    if search.method not in METHOD_NAMES:
        raise HySquantError(f"unknown search.method={search.method!r}: use one of {', '.join(METHOD_NAMES)}")


def run_search(run: RunSettings, search: SearchSettings, out: Path, pipe: Any = None) -> dict[str, Any]:
    """The whole job into ``out``; ``pipe`` reuses an already built pipeline of the same settings (tests)."""
    from hysquant_rl.lut.build import build_lut
    from hysquant_rl.lut.report import log_summary, write_lut
    from hysquant_rl.pipeline import build
    from hysquant_rl.search.loop import search as search_policy
    from hysquant_rl.search.summary import finish

    check_method(search)
    start = time.perf_counter()
    pipe = pipe or build(run)
    lut = build_lut(run, pipe)
    log_summary(lut)
    write_lut(lut, out)
    result = search_policy(search, pipe, lut, out, make_method)
    return finish(search, pipe, result, out, start)


def _main(cfg: DictConfig) -> dict[str, Any]:
    settings = plain(cfg)
    return run_search(RunSettings.from_mapping(settings), SearchSettings.from_mapping(settings), run_dir())


main = app("search")(_main)
