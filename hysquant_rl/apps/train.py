"""``hysquant-train``: train the embedded model of ``model=embedded`` on ``data=...`` into the model cache
(``train.force=true`` retrains it)."""

from __future__ import annotations

from omegaconf import DictConfig

from hysquant_rl.apps import app, log, plain
from hysquant_rl.errors import HySquantError
from hysquant_rl.settings import RunSettings


def run_train(cfg: DictConfig) -> None:
    from hysquant_rl.data import load_data
    from hysquant_rl.models import embedded_checkpoint
    from hysquant_rl.train import embedded_state

    settings = plain(cfg)
    run = RunSettings.from_mapping(settings)
    if not run.model.embedded:
        raise HySquantError(
            f"model={run.model.name} is not the embedded model: hysquant-train trains model=embedded only"
        )
    _, trained = embedded_state(run, lambda: load_data(run.data, seed=run.seed), bool(settings["train"]["force"]))
    path = embedded_checkpoint(run.model, run.data, run.seed, run.cache_dir)
    if not trained:
        log.info("embedded model already cached at %s (train.force=true retrains it)", path)
    elif not path.is_file():  # the cache filled up during training (the warning above says why)
        raise HySquantError(f"the model trained but could not be cached at {path}: free disk space and run again")


main = app("train")(run_train)
