"""``hysquant-lut``: build (or load) the LUT, prune it, write ``lut.csv``, ``lut.json`` and ``lut_heatmap.png``
into the run directory and log what matters."""

from __future__ import annotations

from pathlib import Path

from hysquant_rl.apps import app, log, plain, run_dir
from hysquant_rl.lut.table import LUT
from hysquant_rl.settings import RunSettings


def run_lut(run: RunSettings, out: Path) -> LUT:
    """The LUT of ``run``'s model on its device profile, written into ``out``."""
    from hysquant_rl.lut.build import build_lut
    from hysquant_rl.lut.report import log_summary, write_lut
    from hysquant_rl.pipeline import build

    lut = build_lut(run, build(run))
    log_summary(lut)
    paths = write_lut(lut, out)
    log.info("written: %s", ", ".join(str(p) for p in paths.values()))
    return lut


main = app("lut")(lambda cfg: run_lut(RunSettings.from_mapping(plain(cfg)), run_dir()))
