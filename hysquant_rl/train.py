"""Train a timm model from scratch on a data set's training split (``hysquant-train``), with the data set's recipe
(``data.train``, :class:`~hysquant_rl.settings.TrainRecipe`).

AdamW (timm's optimizer factory: no weight decay on biases and norms) with a one-cycle cosine schedule, label
smoothing, the data set's own augmentation (:data:`hysquant_rl.data.Augmented`: a random shift for images held in
memory, random-resized crops and flips for photos), progressive resizing (``resolution`` steps) and an exponential
moving average of the weights (``ema``), kept when it scores higher on search-val. Channels-last memory layout (1.25x
faster on this CPU than NCHW at 128 px; bf16 autocast was not faster here).

Resumable by epoch: after every epoch the model, its average, the optimiser and the schedule are written atomically
as tensors to a state file (read with ``weights_only=True``); a run started again with the same recipe continues after
the last finished epoch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from hysquant_rl.errors import HySquantError
from hysquant_rl.io import check_writable, load_error, save_torch
from hysquant_rl.models import ModelSpec, build_architecture, embedded_checkpoint, read_state_dict, shipped_weights

if TYPE_CHECKING:
    from hysquant_rl.data import DataSplits
    from hysquant_rl.settings import ModelSettings, RunSettings, TrainRecipe

log = logging.getLogger(__name__)
STATE_VERSION = 1
CHECK_EVERY = 5  # epochs between search-val checks of the training's progress


@torch.inference_mode()
def accuracy(model: torch.nn.Module, split: Any, batch_size: int = 256) -> float:
    """Top-1 in percent on a split."""
    model.eval()
    correct = 0
    for x, y in split.batches(batch_size):
        correct += (model(x.contiguous(memory_format=torch.channels_last)).argmax(1) == y).sum().item()
    return 100.0 * correct / max(len(split), 1)


def _resume(state_path: Path | None, key: dict[str, Any]) -> dict[str, Any] | None:
    """The last finished epoch's state at ``state_path`` when it was made by the same recipe, else None."""
    if state_path is None or not state_path.is_file():
        return None
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged state file costs its epochs, nothing else
        log.warning("cannot resume from %s (%s): training from the start", state_path, load_error(e))
        return None
    if not isinstance(state, dict) or state.get("key") != key:
        log.warning("%s was made by another recipe or model: training from the start", state_path)
        return None
    return state


def train_model(
    model: torch.nn.Module,
    data: DataSplits,
    recipe: TrainRecipe,
    seed: int,
    threads: int | None = None,
    state_path: Path | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place on ``data.train`` (see the module docstring); returns the wall time of this call and of
    the whole training (s), the epochs, whether the weight average was kept, and search-val / test top-1 (%).
    ``state_path``: where each finished epoch is kept for a resume (None: not kept)."""
    if data.train is None or data.train.augmented is None:
        raise HySquantError(
            f"data {data.name} has no training split: use model.checkpoint or model.pretrained instead of training"
        )
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    classes = getattr(head, "out_features", data.num_classes)
    if classes != data.num_classes:
        raise HySquantError(
            f"the model has {classes} outputs but data {data.name} has {data.num_classes} classes: set"
            f" model.num_classes={data.num_classes} (data.num_classes={data.num_classes})"
        )
    from timm.optim import create_optimizer_v2
    from timm.utils import ModelEmaV3

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model.to(memory_format=torch.channels_last)
    batch = int(recipe.batch_size)
    steps_per_epoch = max(1, len(data.train) // batch + (len(data.train) % batch >= 2))
    total = int(recipe.epochs) * steps_per_epoch
    opt = create_optimizer_v2(model, "adamw", lr=float(recipe.lr), weight_decay=float(recipe.weight_decay))
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=float(recipe.lr), total_steps=total, pct_start=float(recipe.warmup)
    )
    # the average's decay warms up (timm's schedule), so that it does not hold the random start for thousands of steps
    ema = ModelEmaV3(model, decay=float(recipe.ema), use_warmup=True) if recipe.ema else None
    key = {"version": STATE_VERSION, "recipe": recipe.to_dict(), "seed": int(seed), "images": len(data.train)}
    first, elapsed, history = 0, 0.0, []
    state = _resume(state_path, key)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        if ema is not None:
            ema.module.load_state_dict(state["ema"])
        first, elapsed, history = int(state["epoch"]), float(state["elapsed_s"]), list(state["history"])
        log.info("resuming training after epoch %d of %d (%s)", first, recipe.epochs, state_path)
    start = time.perf_counter()
    for epoch in range(first, int(recipe.epochs)):
        resolution = recipe.at(epoch, data.img_size)
        model.train()
        seen, total_loss = 0, 0.0
        bar = tqdm(
            data.train.augmented(epoch, batch, resolution),
            total=steps_per_epoch,
            desc=f"train {epoch + 1}/{recipe.epochs} @{resolution}px",
            unit="batch",
            disable=None,
            leave=False,
        )
        for x, y in bar:
            loss = F.cross_entropy(
                model(x.contiguous(memory_format=torch.channels_last)), y, label_smoothing=float(recipe.label_smoothing)
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if recipe.clip_grad:
                torch.nn.utils.clip_grad_norm_(model.parameters(), float(recipe.clip_grad))
            opt.step()
            if sched.last_epoch < total:
                sched.step()
            if ema is not None:
                ema.update(model)
            seen += len(y)
            total_loss += loss.item() * len(y)
            bar.set_postfix(loss=f"{total_loss / seen:.3f}")
        record = {"epoch": epoch + 1, "resolution": resolution, "loss": total_loss / max(seen, 1)}
        if (epoch + 1) % CHECK_EVERY == 0 and epoch + 1 < int(recipe.epochs):  # progress on held-out images
            record["search_val_top1"] = accuracy(model, data.search_val)
        history.append(record)
        log.info(
            "epoch %d/%d at %d px: loss %.4f%s, %.0f s so far",
            epoch + 1,
            recipe.epochs,
            resolution,
            record["loss"],
            f", search-val top-1 {record['search_val_top1']:.2f} %" if "search_val_top1" in record else "",
            elapsed + time.perf_counter() - start,
        )
        if state_path is not None:
            saved = {
                "key": key,
                "epoch": epoch + 1,
                "elapsed_s": elapsed + time.perf_counter() - start,
                "history": history,
                "model": model.state_dict(),
                "opt": opt.state_dict(),
                "sched": sched.state_dict(),
            }
            if ema is not None:
                saved["ema"] = ema.module.state_dict()
            try:
                save_torch(saved, state_path)
            except OSError as e:
                log.warning("cannot keep epoch %d at %s (%s): a resume will start earlier", epoch + 1, state_path, e)
    kept_ema = False
    if ema is not None:
        raw, averaged = accuracy(model, data.search_val), accuracy(ema.module, data.search_val)
        log.info("search-val top-1: weights %.2f %%, their average %.2f %%", raw, averaged)
        if averaged > raw:
            model.load_state_dict(ema.module.state_dict())
            kept_ema = True
    model.to(memory_format=torch.contiguous_format).eval()
    wall = time.perf_counter() - start
    return {
        "train_s": elapsed + wall,
        "this_run_s": wall,
        "epochs": int(recipe.epochs),
        "ema_kept": kept_ema,
        "search_val_top1": accuracy(model, data.search_val),
        "test_top1": accuracy(model, data.test),
        "history": history,
    }


def train_embedded(
    model_settings: ModelSettings,
    data: DataSplits,
    recipe: TrainRecipe | None,
    seed: int,
    path: Path,
    threads: int | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train the embedded model, cache its state dict at ``path`` (atomically) and return its weights and training
    metrics. Each finished epoch is kept beside it (``<path>.partial``) until the training ends, so that an
    interrupted training resumes. A cache that cannot be written now (a disk that filled up during training) costs
    the cache, not the model: one warning, and the weights are returned from memory."""
    if recipe is None:
        raise HySquantError(
            f"data {data.name} has no training recipe (data.train): use model.checkpoint or model.pretrained"
        )
    spec = ModelSpec.of(model_settings)
    model = build_architecture(spec)
    partial = path.with_name(path.name + ".partial")
    metrics = train_model(model, data, recipe, seed, threads, partial)
    log.info(
        "trained %s on %s in %.1f s: search-val top-1 %.2f %%, test top-1 %.2f %%",
        spec.name,
        data.name,
        metrics["train_s"],
        metrics["search_val_top1"],
        metrics["test_top1"],
    )
    summary = {k: v for k, v in metrics.items() if k != "history"}
    try:
        save_torch({"state_dict": model.state_dict(), "spec": spec.to_dict(), "metrics": summary}, path)
    except OSError as e:
        log.warning(
            "cannot cache the trained model at %s (%s): using it from memory for this run only; it trains again next"
            " time unless paths.cache (HYSQUANT_CACHE) can be written",
            path,
            e.strerror or e,
        )
        return {k: v.detach().clone() for k, v in model.state_dict().items()}, metrics
    partial.unlink(missing_ok=True)
    return read_state_dict(path, f"the cached embedded model {path}"), metrics


def embedded_state(
    run: RunSettings, data: Callable[[], DataSplits], force: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """The embedded model's weights for ``run``, and its training metrics when it was trained now (else None): the
    weights this project ships for the same recipe (:func:`hysquant_rl.models.shipped_weights`), else the model cache,
    else trained on ``data()`` (called only then) and cached atomically when the file is missing, cannot be read (a
    damaged cache file is ours to repair), or ``force``. A cache that cannot be written is a one-line error before
    the training (minutes to hours), not after it."""
    path = embedded_checkpoint(run.model, run.data, run.seed, run.cache_dir)
    source = f"the cached embedded model {path}"
    shipped = None if force else shipped_weights(path)
    if shipped is not None:
        return read_state_dict(shipped, f"the shipped weights {shipped}"), None
    if force:
        problem = "retraining it (train.force=true)"
    elif not path.exists():
        problem = "not cached"
    else:
        try:
            return read_state_dict(path, source), None
        except HySquantError as e:
            problem = f"unreadable ({e})"
    check_writable(
        path.parent,
        "the model cache",
        "make it writable, or move it with HYSQUANT_CACHE=... or paths.cache=... (the embedded model trains for"
        " minutes and is kept there)",
    )
    log.warning("embedded model %s at %s: %s; training it", run.model.name, path, problem)
    state, metrics = train_embedded(run.model, data(), run.data.train, run.seed, path, run.threads)
    return state, metrics
