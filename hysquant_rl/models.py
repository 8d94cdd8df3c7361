"""Build the FP32 model: any timm model name, with timm's pretrained weights, a local checkpoint, or the
embedded default (timm ``mobilevit_xxs`` trained by our own ``hysquant-train`` on the data set in use).

The embedded model is cached at ``{paths.cache}/models/{name}_{data}_{key}.pt``, where ``key`` hashes
everything that changes its weights (model name, data set and split settings, training recipe, seed);
it is trained only when that file is missing.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import timm
import torch
from torch import nn

from hysquant_rl.errors import HySquantError
from hysquant_rl.io import load_error

if TYPE_CHECKING:
    from hysquant_rl.settings import DataSettings, ModelSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """What it takes to rebuild the architecture (weights come separately)."""

    name: str
    num_classes: int
    in_chans: int
    img_size: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def of(cls, m: ModelSettings) -> ModelSpec:
        """The spec of the configured model."""
        return cls(m.name, m.num_classes, m.in_chans, m.img_size)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_chans, self.img_size, self.img_size)


def check_model_name(name: str) -> None:
    """Raise a one-line error naming the nearest timm models when ``name`` is not a timm architecture."""
    arch = name.split(".", 1)[0]  # "mobilevit_s.cvnets_in1k" names a pretrained tag of mobilevit_s
    if not timm.is_model(arch):
        near = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(near)}?" if near else "see timm.list_models()"
        raise HySquantError(f"unknown model.name={name!r}: not a timm model; {hint}")


def build_architecture(spec: ModelSpec, pretrained: bool = False) -> nn.Module:
    """The timm model for ``spec``, randomly initialised unless ``pretrained``."""
    check_model_name(spec.name)
    return timm.create_model(spec.name, pretrained=pretrained, num_classes=spec.num_classes, in_chans=spec.in_chans)


def read_state_dict(path: str | Path, source: str | None = None) -> dict[str, torch.Tensor]:
    """A state dict from .pth/.pt (optionally nested under state_dict/model/state_dict_ema) or .safetensors.
    ``source`` names the file in errors (default ``model.checkpoint=<path>``, the setting that points at it)."""
    path = Path(path).expanduser()
    source = source or f"model.checkpoint={path}"
    if not path.is_file():
        raise HySquantError(f"{source} does not exist: pass the path of a .pth, .pt or .safetensors file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt or foreign files: say which file and why in one line, not a traceback
        raise HySquantError(
            f"{source} could not be read ({load_error(e)}): pass a torch or safetensors state dict of tensors"
            " (torch.save(model.state_dict(), path))"
        ) from None
    for key in ("state_dict_ema", "state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise HySquantError(f"{source} holds no state dict of tensors: save model.state_dict()")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str, model_name: str) -> None:
    """Strict load with one line that says what does not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} shape mismatches (e.g. {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)})")
        raise HySquantError(
            f"{source} does not fit model {model_name}: {', '.join(parts)}; check model.name, model.num_classes"
            " and model.in_chans"
        )
    model.load_state_dict(state)


def embedded_checkpoint(model: ModelSettings, data: DataSettings, seed: int, cache_dir: Path) -> Path:
    """Cache path of the embedded model (see module docstring). Where the model trains on a fixed ``train_size``
    (the splits after it are drawn from the other images), the sizes of calibration, search-val and test do not change
    its weights and are left out of the key."""
    recipe = {"model": model.name, "data": data.to_dict(), "seed": int(seed)}
    unused = ["root", "download", "batch_size", "workers"]  # do not change the weights
    if data.train_size is not None:
        unused += ["calib_size", "search_val_size", "test_size"]
    for k in unused:
        recipe["data"].pop(k, None)
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:10]
    return cache_dir / "models" / f"{model.name}_{data.name}_{key}.pt"


SHIPPED = Path(__file__).resolve().parent / "weights"
"""Weights this project trained and ships (``<name>.safetensors`` beside ``<name>.json``, their provenance: the
command, the data's SHA-256, the training time and the top-1 they reached, and ``cache_file``, the embedded model's
cache name they stand for)."""


def shipped_weights(cache_path: Path) -> Path | None:
    """The shipped ``.safetensors`` that stands for the embedded model cached at ``cache_path`` (same model, data
    recipe and seed: the same cache name), or None."""
    if not SHIPPED.is_dir():
        return None
    for meta in sorted(SHIPPED.glob("*.json")):
        try:
            cache_file = json.loads(meta.read_text()).get("cache_file")
        except (OSError, ValueError, AttributeError):
            continue
        weights = meta.with_suffix(".safetensors")
        if cache_file == cache_path.name and weights.is_file():
            return weights
    return None


def create_model(m: ModelSettings, embedded: dict[str, torch.Tensor] | None = None) -> tuple[nn.Module, ModelSpec]:
    """The FP32 model in eval mode and its spec. An embedded model takes the weights ``embedded``
    (:func:`hysquant_rl.train.embedded_state` reads them from the model cache, training them first if needed)."""
    check_model_name(m.name)
    spec = ModelSpec.of(m)
    if m.embedded:
        if embedded is None:
            raise HySquantError(f"embedded model {m.name} has no weights: run hysquant-train first")
        model = build_architecture(spec)
        load_weights(model, embedded, "the cached embedded model", m.name)
    elif m.checkpoint:
        model = build_architecture(spec)
        load_weights(model, read_state_dict(m.checkpoint), f"model.checkpoint={m.checkpoint}", m.name)
    elif m.pretrained:
        try:
            model = build_architecture(spec, pretrained=True)
        except HySquantError:
            raise
        except Exception as e:
            raise HySquantError(
                f"timm could not load pretrained weights for {m.name} ({type(e).__name__}; offline?): download them"
                " where the internet is reachable and pass model.checkpoint=PATH"
            ) from None
    else:
        raise HySquantError(f"model {m.name} has no weights: set model.pretrained=true or model.checkpoint=PATH")
    return model.eval(), spec
