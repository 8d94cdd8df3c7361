"""Building the LUT: one job per (layer, configuration), run on an executor, cached on disk by everything that
changes the numbers.

Cache: ``{lut.cache_dir}/<model>_<data>_<sha>.json``, the ``lut.json`` document; ``sha`` hashes the key
(:func:`cache_key`). Partial results are written atomically every ``lut.save_every`` jobs and when a build stops
for any reason, so a restart runs only the missing jobs. A corrupt or stale file is rebuilt with a warning,
never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from hysquant_rl.bits import FP32_BITS, label
from hysquant_rl.errors import HySquantError
from hysquant_rl.hardware.cost import in_budget_units
from hysquant_rl.io import check_writable, save_json
from hysquant_rl.lut.executor import Executor, Job, Result, make_executor
from hysquant_rl.lut.table import COLUMNS, LUT, METRICS, SPLIT, VERSION, document, read_document
from hysquant_rl.space import choice_mask

if TYPE_CHECKING:
    from hysquant_rl.pipeline import Pipeline
    from hysquant_rl.settings import RunSettings
    from hysquant_rl.units import UnitInfo

log = logging.getLogger(__name__)

_KEY_EXCLUDED_DATA = ("workers", "batch_size", "download")  # loader settings: the images stay the same
Measured = dict[tuple[int, int, int], dict[str, float]]  # (layer, w, a) -> metrics; (layer, a, a) for a weightless unit


def _measured_pair(unit: UnitInfo, w: int, a: int) -> tuple[int, int]:
    """The pair a configuration ``(w, a)`` of ``layer`` is measured at: itself, or ``(a, a)`` for an
    activation-only unit (its w changes nothing: one job per activation width)."""
    return (w, a) if unit.weighted else (a, a)


def _jobs(units: list[UnitInfo], configs: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """Every (layer, w, a) the LUT measures, in forward order: each configuration, once per activation width for
    an activation-only unit."""
    return list(dict.fromkeys((i, *_measured_pair(l, w, a)) for i, l in enumerate(units) for w, a in configs))


def lut_configs(run: RunSettings, pipe: Pipeline) -> list[tuple[int, int]]:
    """The configurations each unit is measured at: ``lut.configs`` in the simulated space; in the executable space
    the integer pairs the runtime executes for the model's unit kinds (on onnxruntime's CPU provider: W8A8)."""
    if run.space != "executable":
        return list(run.lut.configs)
    pairs = {pair for kind in dict.fromkeys(unit.kind for unit in pipe.units) for pair in run.hardware.executable(kind)}
    if not pairs:
        raise HySquantError(f"hardware profile {run.hardware.name} executes no integer pair: every unit would be FP32")
    return sorted(pairs)


def cache_key(run: RunSettings, pipe: Pipeline, configs: list[tuple[int, int]]) -> dict[str, Any]:
    """Everything that changes a LUT's numbers: format version; model name, weights SHA-256 and layer
    names; the data config (split sizes, image size, seed; not loader settings); split and its size;
    quantizer settings; configurations; the full device profile with batch size and backend; the eval
    settings (batch size)."""
    names = "\n".join(pipe.names)
    return {
        "version": VERSION,
        "model": {
            "name": pipe.spec.name,
            "weights_sha256": pipe.weights_sha256,
            "num_layers": len(pipe.names),
            "layers_sha256": hashlib.sha256(names.encode()).hexdigest(),
        },
        "data": {k: v for k, v in run.data.to_dict().items() if k not in _KEY_EXCLUDED_DATA},
        "seed": run.seed,
        "split": SPLIT,
        "split_size": len(pipe.data.split(SPLIT)),
        "quant": run.quant.key(),
        "configs": [list(c) for c in configs],
        "hardware": {
            **{k: v for k, v in pipe.cost.profile.to_dict().items() if k != "timing"},  # how, not what
            "batch_size": pipe.cost.batch_size,
            "backend": pipe.cost.backend,
        },
        "eval": run.eval.key(),
        "space": run.space,  # executable: measured on the runtime layout by the runtime itself
        "evaluator": pipe.evaluator.__class__.__name__,
        "runtime_layout": None if pipe.layout is None else pipe.layout.sha256,
    }


def key_sha256(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def cache_path(run: RunSettings, pipe: Pipeline, key: dict[str, Any]) -> Path:
    """``{lut.cache_dir}/<model>_<data>_<first 16 hex of the key's SHA-256>.json``."""
    return run.lut.cache_dir / f"{pipe.spec.name}_{run.data.name}_{key_sha256(key)[:16]}.json"


def _row(pipe: Pipeline, i: int, w: int, a: int, m: dict[str, float], fp32: dict[str, float]) -> dict[str, Any]:
    unit = pipe.units[i]
    c = pipe.cost.config_cost(i, w, a)
    units = in_budget_units(lambda field: getattr(c, field))
    return {
        "index": i,
        "unit": unit.name,
        "kind": unit.kind,
        "family": unit.family,
        "config": label(w, a),
        "w_bits": w,
        "a_bits": a,
        "top1": m["top1"],
        "top5": m["top5"],
        "top1_drop": fp32["top1"] - m["top1"],
        "top5_drop": fp32["top5"] - m["top5"],
        "kl": m["kl"],
        "loss": m["loss"],
        "n": int(m["n"]),
        "latency_ms": units["latency_ms"],
        "energy_mj": units["energy_mj"],
        "size_bytes": c.size_bytes,
        "bitops": c.bitops,
        "precision": c.precision,
        "deployable": c.deployable,
        "batch_size": c.batch_size,
    }


def _rows(
    pipe: Pipeline, configs: list[tuple[int, int]], fp32: dict[str, float], measured: Measured, complete: bool
) -> list[dict[str, Any]]:
    """Table rows per layer in forward order: the FP32 row, then each configuration (a partial table: only the
    measured ones)."""
    rows = []
    for i, unit in enumerate(pipe.units):
        if complete:
            rows.append(_row(pipe, i, FP32_BITS, FP32_BITS, fp32, fp32))
        for w, a in configs:
            m = measured.get((i, *_measured_pair(unit, w, a)))
            if m is not None:
                rows.append(_row(pipe, i, w, a, m, fp32))
    return rows


def assemble(
    pipe: Pipeline, configs: list[tuple[int, int]], fp32: dict[str, float], measured: Measured, meta: dict[str, Any]
) -> LUT:
    """The full table from measured metrics: FP32 row then each configuration, per layer."""
    frame = pd.DataFrame(_rows(pipe, configs, fp32, measured, complete=True), columns=list(COLUMNS))
    return LUT(frame, configs, fp32, meta)


class _Cache:
    """One LUT cache file: reads measured metrics back (rejecting corrupt or stale files with a warning)
    and writes partial or complete documents atomically."""

    def __init__(self, path: Path, key: dict[str, Any], pipe: Pipeline, configs: list[tuple[int, int]]) -> None:
        self.path, self.key, self.pipe, self.configs = path, key, pipe, configs
        self.problem = ""  # why an existing file was not used ("corrupt ...", "stale ...")
        self.unwritable = ""  # why the file could not be written: the build goes on in memory, writing no more

    def read(self) -> tuple[dict[str, float] | None, Measured]:
        """FP32 metrics and measured metrics by (layer, w, a) from the file; nothing if absent or unusable."""
        if not self.path.exists():
            return None, {}
        try:
            doc = read_document(self.path)
        except HySquantError as e:
            return self._reject(str(e))
        if doc.get("key") != self.key:
            key = doc.get("key")
            changed = sorted(k for k in self.key if not isinstance(key, dict) or key.get(k) != self.key[k])
            return self._reject(f"stale (its key differs in: {', '.join(changed) or 'format'})")
        try:
            fp32 = {k: float(doc["fp32"][k]) for k in METRICS}
            units = self.pipe.units
            wanted = {(i, w, a) for i in range(len(units)) for w, a in self.configs}
            measured = {}
            for r in doc["rows"]:
                i, w, a = int(r["index"]), int(r["w_bits"]), int(r["a_bits"])
                if (w, a) == (FP32_BITS, FP32_BITS):
                    continue
                if (i, w, a) not in wanted or r["unit"] != units[i].name:
                    raise ValueError(f"unexpected row {r.get('unit')!r} {label(w, a)}")
                m = {k: float(r[k]) for k in METRICS}
                if not all(math.isfinite(v) for v in m.values()):
                    raise ValueError(f"non-finite metrics in row {r['unit']} {label(w, a)}")
                measured[(i, *_measured_pair(units[i], w, a))] = m
        except (KeyError, TypeError, ValueError) as e:
            return self._reject(f"corrupt ({type(e).__name__}: {e})")
        return fp32, measured

    def _reject(self, problem: str) -> tuple[None, Measured]:
        self.problem = problem
        log.warning("LUT cache %s is %s: rebuilding it", self.path, problem)
        return None, {}

    def write(self, doc: dict[str, Any]) -> None:
        """Save ``doc`` atomically. A cache that cannot be written (a disk that filled up during the build, a NaN
        metric that JSON cannot hold) costs the cache, not the LUT: one warning, and the build goes on in memory."""
        if self.unwritable:
            return
        try:
            save_json(doc, self.path)
        except (OSError, HySquantError) as e:
            self.unwritable = str(e.strerror or e) if isinstance(e, OSError) else str(e)
            log.warning(
                "cannot write the LUT cache %s (%s): the LUT is kept in memory for this run (and written into the run"
                " directory); the next run measures it again unless lut.cache_dir can be written",
                self.path,
                self.unwritable,
            )

    def write_partial(self, fp32: dict[str, float], measured: Measured, meta: dict[str, Any]) -> None:
        rows = _rows(self.pipe, self.configs, fp32, measured, complete=False)
        self.write(document(self.configs, fp32, rows, meta, complete=False))


def build_lut(
    run: RunSettings,
    pipe: Pipeline,
    executor: Executor | None = None,
    on_result: Callable[[Result], None] | None = None,
) -> LUT:
    """The pruned LUT of ``pipe`` for ``run.lut``, from the cache when it holds it, else by running the missing
    (layer, configuration) jobs on ``executor`` (default: the one ``lut.workers`` / ``ray.address`` ask for,
    closed afterwards) and caching the result.

    ``on_result`` is called after each job's result is recorded (progress hooks; an exception raised there
    stops the build after saving what is done). ``lut.meta["cache"]`` tells what happened: ``status`` (hit,
    miss, resumed, rebuilt, off), ``path``, ``reused`` and ``evaluated`` job counts.
    """
    from tqdm import tqdm

    s = run.lut
    configs = lut_configs(run, pipe)
    key = cache_key(run, pipe, configs)
    cache = _Cache(cache_path(run, pipe, key), key, pipe, configs)
    fp32, measured = cache.read() if s.cache else (None, {})
    jobs = [job for job in _jobs(pipe.units, configs) if job not in measured]
    if jobs or not s.cache:  # the build will write the cache: one that cannot be written fails now, not after it
        check_writable(
            cache.path.parent, "the LUT cache", "make it writable, or move it with lut.cache_dir=... or paths.cache=..."
        )
    reused = len(measured)
    if not s.cache:
        status = "off"
    elif not jobs:
        status = "hit"
    else:
        status = "resumed" if reused else "rebuilt" if cache.problem else "miss"
    meta: dict[str, Any] = {
        "key": key,
        "key_sha256": key_sha256(key),
        "model": {"name": pipe.spec.name, "weights_sha256": pipe.weights_sha256, "num_layers": len(pipe.units)},
        "split": SPLIT,
        "device": {"name": pipe.cost.device, "backend": pipe.cost.backend, "batch_size": pipe.cost.batch_size},
    }
    start = time.perf_counter()
    evaluated = 0
    if jobs:
        log.info(
            "LUT: %d of %d jobs to run (%d cached) on %d worker(s)", len(jobs), len(jobs) + reused, reused, s.workers
        )
        fp = [(FP32_BITS, FP32_BITS)] * len(pipe.units)
        if fp32 is None:
            fp32 = pipe.evaluator.evaluate(fp, SPLIT).to_dict()
        own = executor is None
        unsaved, finished = 0, False
        try:
            if own:
                executor = make_executor(run, pipe)
            todo = (Job(fp[:i] + [(w, a)] + fp[i + 1 :], SPLIT, (i, w, a)) for i, w, a in jobs)
            with tqdm(total=len(jobs), desc="LUT", unit="job", disable=None) as bar:
                for result in executor.map(todo):
                    measured[result.job.tag] = result.metrics.to_dict()
                    evaluated += 1
                    unsaved += 1
                    if unsaved >= s.save_every:
                        cache.write_partial(fp32, measured, meta)
                        unsaved = 0
                    bar.update()
                    if on_result is not None:
                        on_result(result)
            finished = True
        finally:
            if not finished and unsaved:  # stopped early (error, Ctrl-C): keep what is done
                cache.write_partial(fp32, measured, meta)
                log.warning(
                    "LUT build stopped after %d of %d jobs; %s keeps them for the next run",
                    len(measured),
                    len(jobs) + reused,
                    cache.path,
                )
            if own and executor is not None:
                executor.close()
    meta["build"] = {
        "evaluated": evaluated,
        "reused": reused,
        "wall_s": time.perf_counter() - start,
        "workers": executor.workers if executor is not None else s.workers,
    }
    lut = assemble(pipe, configs, fp32, measured, meta).prune(s.rules)
    if run.space == "executable":
        lut.space = choice_mask(pipe.units, run.hardware, run.space)
    if jobs or not s.cache:
        cache.write(lut.to_dict())
    lut.meta["cache"] = {
        "status": status,
        "path": str(cache.path),
        "reused": reused,
        "evaluated": evaluated,
        "problem": cache.problem,
    }
    return lut
