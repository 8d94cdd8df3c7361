"""Train the embedded default model (``hysquant-train``): a small timm hybrid from scratch on a bundled data set.

AdamW with a one-cycle cosine schedule, label smoothing, random-shift augmentation; CPU-friendly.
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
from hysquant_rl.io import check_writable, save_torch
from hysquant_rl.models import ModelSpec, build_architecture, embedded_checkpoint, read_state_dict

if TYPE_CHECKING:
    from hysquant_rl.data import DataSplits
    from hysquant_rl.settings import ModelSettings, RunSettings, TrainRecipe

log = logging.getLogger(__name__)


def _shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Random translation by up to ``max_shift`` pixels per image (zero fill), the one augmentation digit-like
    data needs."""
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=float(x.min()))
    dx, dy = (torch.randint(0, 2 * max_shift + 1, (2, n), generator=gen)).tolist()
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


@torch.inference_mode()
def accuracy(model: torch.nn.Module, split: Any, batch_size: int = 512) -> float:
    """Top-1 in percent on a split."""
    model.eval()
    correct = 0
    for x, y in split.batches(batch_size):
        correct += (model(x).argmax(1) == y).sum().item()
    return 100.0 * correct / max(len(split), 1)


def train_model(model: torch.nn.Module, data: Any, recipe: TrainRecipe, seed: int) -> dict[str, float]:
    """Train ``model`` in place on ``data.train``; returns wall time (s) and search-val / test top-1 (%)."""
    if data is None or data.train is None:
        raise HySquantError(
            "this data set has no training split for the embedded model: use model.checkpoint or model.pretrained"
        )
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x, y = data.train.x, data.train.y
    steps_per_epoch = -(-len(x) // int(recipe.batch_size))
    opt = torch.optim.AdamW(model.parameters(), lr=float(recipe.lr), weight_decay=float(recipe.weight_decay))
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=float(recipe.lr), total_steps=int(recipe.epochs) * steps_per_epoch, pct_start=0.15
    )
    start = time.perf_counter()
    bar = tqdm(range(int(recipe.epochs)), desc="train", unit="epoch", disable=None)
    for _ in bar:
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), int(recipe.batch_size)):
            idx = perm[i : i + int(recipe.batch_size)]
            if len(idx) < 2:  # BatchNorm cannot train on one image; it returns next epoch in another batch
                continue
            loss = F.cross_entropy(
                model(_shift(x[idx], int(recipe.max_shift), gen)), y[idx], label_smoothing=float(recipe.label_smoothing)
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        bar.set_postfix(loss=f"{total / len(x):.3f}")
    wall = time.perf_counter() - start
    model.eval()
    return {
        "train_s": wall,
        "search_val_top1": accuracy(model, data.search_val),
        "test_top1": accuracy(model, data.test),
    }


def train_embedded(
    model_settings: ModelSettings, data: DataSplits, recipe: TrainRecipe | None, seed: int, path: Path
) -> dict[str, torch.Tensor]:
    """Train the embedded model, cache its state dict at ``path`` (atomically) and return its weights. A cache that
    cannot be written now (a disk that filled up during training) costs the cache, not the model: one warning, and
    the weights are returned from memory."""
    if recipe is None:
        raise HySquantError(
            f"data {data.name} has no training recipe (data.train): use model.checkpoint or model.pretrained"
        )
    spec = ModelSpec.of(model_settings)
    model = build_architecture(spec)
    metrics = train_model(model, data, recipe, seed)
    log.info(
        "trained %s on %s in %.1f s: search-val top-1 %.2f %%, test top-1 %.2f %%",
        spec.name,
        data.name,
        metrics["train_s"],
        metrics["search_val_top1"],
        metrics["test_top1"],
    )
    try:
        save_torch({"state_dict": model.state_dict(), "spec": spec.to_dict(), "metrics": metrics}, path)
    except OSError as e:
        log.warning(
            "cannot cache the trained model at %s (%s): using it from memory for this run only; it trains again next"
            " time unless paths.cache (HYSQUANT_CACHE) can be written",
            path,
            e.strerror or e,
        )
        return {k: v.detach().clone() for k, v in model.state_dict().items()}
    return read_state_dict(path, f"the cached embedded model {path}")


def embedded_state(
    run: RunSettings, data: Callable[[], DataSplits], force: bool = False
) -> tuple[dict[str, torch.Tensor], bool]:
    """The embedded model's weights for ``run`` and whether they were trained now: read from the cache, or trained
    on ``data()`` (called only then) and cached atomically when the file is missing, cannot be read (a damaged
    cache file is ours to repair), or ``force``. A cache that cannot be written is a one-line error before the
    training (minutes), not after it."""
    path = embedded_checkpoint(run.model, run.data, run.seed, run.cache_dir)
    source = f"the cached embedded model {path}"
    if force:
        problem = "retraining it (train.force=true)"
    elif not path.exists():
        problem = "not cached"
    else:
        try:
            return read_state_dict(path, source), False
        except HySquantError as e:
            problem = f"unreadable ({e})"
    check_writable(
        path.parent,
        "the model cache",
        "make it writable, or move it with HYSQUANT_CACHE=... or paths.cache=... (the embedded model trains for"
        " minutes and is kept there)",
    )
    log.warning("embedded model %s at %s: %s; training it", run.model.name, path, problem)
    return train_embedded(run.model, data(), run.data.train, run.seed, path), True
