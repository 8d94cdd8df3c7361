"""``hysquant-train``: train a timm model from scratch on ``data=...`` with the data set's recipe (``data.train``).

``model=embedded`` (the default) trains the embedded model into the model cache, where every other app finds it
(``train.force=true`` retrains it; weights this project ships for the same recipe are used instead of training);
any other ``model=`` trains that architecture from scratch. Either way the run directory receives
``model.safetensors`` (the state dict, for ``model.checkpoint=...``) and ``model.json`` (its provenance: the command,
the data's source and SHA-256, the recipe, the training time, search-val and test top-1). An interrupted training
resumes from its last finished epoch when started again with the same settings (the embedded model: from the cache;
any other: from ``train_state.pt`` in the same ``hydra.run.dir``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from hysquant_rl.apps import app, log, plain, run_dir
from hysquant_rl.errors import HySquantError
from hysquant_rl.settings import RunSettings, default_threads


def write_weights(state: dict[str, Any], provenance: dict[str, Any], out: Path) -> Path:
    """``out/model.safetensors`` and ``out/model.json`` (atomic each; the weights first)."""
    from safetensors.torch import save as save_safetensors

    from hysquant_rl.io import atomic_write, save_json

    tensors = {k: v.detach().contiguous() for k, v in state.items()}
    path = atomic_write(out / "model.safetensors", lambda f: f.write(save_safetensors(tensors)))
    save_json(provenance, out / "model.json")
    return path


def run_train(cfg: DictConfig) -> None:
    import torch

    from hysquant_rl.data import load_data
    from hysquant_rl.data.trees import source_sha256
    from hysquant_rl.models import ModelSpec, build_architecture, embedded_checkpoint
    from hysquant_rl.provenance import git_commit
    from hysquant_rl.train import embedded_state, train_model

    settings = plain(cfg)
    run = RunSettings.from_mapping(settings)
    torch.set_num_threads(run.threads or default_threads())
    if run.data.train is None:
        raise HySquantError(f"data={run.data.name} has no training recipe (data.train): nothing to train on it")
    out = run_dir()
    data = None

    def splits():
        nonlocal data
        data = load_data(run.data, seed=run.seed)
        return data

    if run.model.embedded:
        state, metrics = embedded_state(run, splits, bool(settings["train"]["force"]))
        path = embedded_checkpoint(run.model, run.data, run.seed, run.cache_dir)
        if metrics is None:
            log.info("embedded model already at hand for %s (train.force=true retrains it)", path.name)
            return
        if not path.is_file():  # the cache filled up during training (the warning above says why)
            log.warning("the model trained but could not be cached at %s", path)
        cache_file = path.name
    else:
        spec = ModelSpec.of(run.model)
        model = build_architecture(spec)
        metrics = train_model(model, splits(), run.data.train, run.seed, run.threads, out / "train_state.pt")
        state, cache_file = model.state_dict(), None
    source = data.meta.get("source") if data is not None else None
    provenance = {
        "model": run.model.name,
        "data": run.data.name,
        "command": " ".join(["hysquant-train", *sys.argv[1:]]),
        "git_commit": git_commit(),
        "seed": run.seed,
        "recipe": run.data.to_dict(),
        "source": source,
        "source_sha256": source_sha256(source) if source and Path(source).exists() else None,
        "threads": run.threads or default_threads(),
        "cache_file": cache_file,
        **{k: v for k, v in metrics.items()},
    }
    path = write_weights(state, provenance, out)
    log.info(
        "wrote %s (%s trained in %.0f s: search-val top-1 %.2f %%, test top-1 %.2f %%)",
        path,
        run.model.name,
        metrics["train_s"],
        metrics["search_val_top1"],
        metrics["test_top1"],
    )
    print(json.dumps({k: v for k, v in provenance.items() if k not in ("history", "recipe")}))


main = app("train")(run_train)
