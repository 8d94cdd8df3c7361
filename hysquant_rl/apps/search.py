"""``hysquant-search``: the main job (paper section 3.3), top to bottom.

settings -> pipeline (model, splits, calibration, cost model) -> LUT (cached) and pruning -> budgets -> the
method on search-val -> hardware check of the best feasible policy, re-searching with tightened internal budgets
while one is missed -> test split, once -> best_policy.json, the quantized model, summary.json / summary.md,
TensorBoard under tb/.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from hysquant_rl.apps import app, plain, run_dir
from hysquant_rl.budget_kinds import BY_KEY, KEYS
from hysquant_rl.errors import HySquantError
from hysquant_rl.io import UnsafeFile, read_json, save_json
from hysquant_rl.search.baselines import METHODS
from hysquant_rl.settings import TRANSFER_METHOD, RunSettings, SearchSettings

METHODS.lazy("rl", "agents.rl:RLSearch")  # the agents live above the library: named here, imported when chosen
METHODS.lazy(TRANSFER_METHOD, "agents.conditioned_search:ConditionedSearch")


def make_method(search: SearchSettings, *args: Any) -> Any:
    """The ``search.method`` of :data:`~hysquant_rl.search.baselines.METHODS` (a baseline or control, the RL agent or
    the budget-conditioned one), built on the run's problem."""
    return METHODS.get(search.method)(search, *args)


def check_method(search: SearchSettings) -> None:
    """The method (and for an agent the agent, and a trained agent's folder and budget) exist: checked before any
    work."""
    if search.method not in METHODS:
        METHODS.get(search.method)  # one line naming the methods
    if search.method in ("rl", TRANSFER_METHOD):
        from agents.factory import check_agent

        check_agent(search.agent.name)
    if search.method == TRANSFER_METHOD and search.transfer.agent is not None:
        from agents.storage import read_manifest

        folder = Path(search.transfer.agent)
        key = read_manifest(folder).get("identity", {}).get("budget key")
        (ours,) = [k for k in KEYS if any(search.budget.given(k))]
        if key != ours:
            raise HySquantError(
                f"the agent in {folder} answers {key} budgets, this run sets {ours}: set that budget instead"
                f" (budget={BY_KEY[key].name if key in BY_KEY else key}), or train an agent for this one"
                " (search.transfer.agent=null)"
            )


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
    executor = None
    if search.workers > 1:  # parallel episodes: Ray actors that each hold the calibrated model
        from hysquant_rl.lut.executor import RayExecutor

        executor = RayExecutor(run, search.workers)
    try:
        result = search_policy(search, pipe, lut, out, make_method, executor=executor)
    finally:
        if executor is not None:
            executor.close()
    summary = finish(search, pipe, result, out, start, run.export)
    if result.unchecked is not None:  # everything is written; the exit status says the check is missing
        raise type(result.unchecked)(
            f"{result.unchecked} -- the search's results are written to {out} without the hardware check"
        )
    return summary


RECORD = "run_settings.json"  # the resolved settings of a run, in its directory: what resume=true restores


def record_or_restore(settings: dict[str, Any], out: Path, given: list[str]) -> dict[str, Any]:
    """A new run records its resolved ``settings`` in ``out``; ``resume=true`` returns the recorded ones instead,
    refusing a value ``given`` again on the command line (``key=value`` overrides) that differs from the record. A
    record that cannot be read, is not JSON, or no longer makes valid settings is one line naming it."""
    path = out / RECORD
    if not settings.get("resume"):
        save_json(settings, path)
        return settings
    if not (path.exists() or path.is_symlink()):
        raise HySquantError(
            f"resume=true but {out} holds no interrupted run ({RECORD} is missing): pass"
            " hydra.run.dir=<the interrupted run's directory>"
        )
    damaged = f"the run's settings file {path}, which resume=true restores, is damaged"
    new_run = "start a new run directory (another hydra.run.dir, without resume=true)"
    try:
        recorded = read_json(path, "settings")  # a regular file, never through a link, NaN refused, bounded
        if not isinstance(recorded, dict):
            raise ValueError(f"expected a JSON object, got {type(recorded).__name__}")
        RunSettings.from_mapping(recorded)
        SearchSettings.from_mapping(recorded)
    except RecursionError:
        raise HySquantError(f"{damaged} (JSON nested too deeply): {new_run}") from None
    except UnsafeFile as e:
        raise HySquantError(f"{damaged} ({e.problem}): {new_run}") from None
    except HySquantError as e:
        raise HySquantError(f"{damaged}: it holds a value that is refused now ({e}); {new_run}") from None
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
        cause = " ".join(f"{type(e).__name__}: {e}".split())[:300]
        raise HySquantError(f"{damaged} ({cause}): {new_run}") from None
    for override in given:
        key = override.lstrip("+~").split("=", 1)[0]
        if key == "resume" or key.startswith("hydra"):
            continue
        now, then = _lookup(settings, key), _lookup(recorded, key)
        if now != then:
            raise HySquantError(
                f"{key}={_show(now)} differs from the interrupted run's {key}={_show(then)}: drop it to resume"
                " that run, or start a new run directory"
            )
    return {**recorded, "resume": True}


def _lookup(tree: Any, key: str) -> Any:
    for part in key.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def _show(value: Any) -> str:
    return value.get("name", json.dumps(value)) if isinstance(value, dict) else json.dumps(value)


def _main(cfg: DictConfig) -> dict[str, Any]:
    from hydra.core.hydra_config import HydraConfig

    out = run_dir()
    settings = plain(cfg)
    RunSettings.from_mapping(settings)  # every value is checked before anything is written or loaded
    check_method(SearchSettings.from_mapping(settings))
    settings = record_or_restore(settings, out, list(HydraConfig.get().overrides.task))
    if settings.get("resume") and settings["search"]["method"] == "rl":
        from agents.rl import CHECKPOINT_DIR
        from agents.storage import check_resumable

        check_resumable(out / CHECKPOINT_DIR)  # missing, damaged or foreign: one line before the model and LUT
    return run_search(RunSettings.from_mapping(settings), SearchSettings.from_mapping(settings), out)


main = app("search")(_main)
