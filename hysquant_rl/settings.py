"""Typed settings: the ``conf/`` tree, resolved once at an app's boundary, as small frozen dataclasses.

Each app (``hysquant_rl/apps/``) composes its Hydra config, turns it into plain containers and builds the
settings below with ``from_mapping``; everything under the app layer takes these, never a raw config. Each
``from_mapping`` checks what it reads and raises a one-line :class:`HySquantError` naming the key.

* :class:`RunSettings`: what every app shares (seed, threads, model, data, quantizer, evaluation, hardware
  profile, LUT, Ray); its ``lut`` is a :class:`LUTSettings` with the pruning rules.
* :class:`SearchSettings`: ``hysquant-search`` on top (method, episodes, reward, budget, agent).

Torch-free, like everything the search and the cost model read.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hysquant_rl.bits import MAX_BITS, MIN_BITS, label, parse_uniform
from hysquant_rl.budget_kinds import BY_KEY, KINDS
from hysquant_rl.errors import HySquantError
from hysquant_rl.hardware.profile import DeviceProfile, load_profile
from hysquant_rl.prune import PruneRules
from hysquant_rl.space import SPACES

PROXIES = ("kl", "top1_drop")
"""LUT columns ``search.proxy`` may name: the additive sensitivity the ILP minimises and the greedy walk and the
budget projection follow. KL is smooth; top-1 drops on a small search-val split are noisy, and an optimiser
summing them exploits the noise."""
REWARD_METRICS = ("top1", "kl", "loss")
BUDGET_MODES = ("project", "penalty")
BUDGET_REFERENCES = ("auto", "W8A8", "FP32")  # what budget.*_ratio is a ratio of
GRANULARITIES = ("tensor", "channel")
CALIBRATORS = ("minmax", "percentile", "mse")  # activation range rules: hysquant_rl/quant/calibrate.py
SCOPES = ("linear", "hybrid")
"""``quant.scope``: Conv2d/Linear only, or the transformer's activation-only units too (hysquant_rl/inventory.py)."""
SOFTMAX_LEVELS = ("uniform", "log2")  # levels of the softmax probabilities (attention-pv units)


def default_threads(workers: int = 1) -> int:
    """Torch threads of one of ``workers`` processes sharing this process's CPUs (its affinity, not the machine's
    core count): ``threads=null`` means this. Processes that each took every core would slow each other down many
    times over."""
    return max(1, len(os.sched_getaffinity(0)) // max(1, workers))


# -- checks ----------------------------------------------------------------------------------------------------


def _integer(value: Any, key: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        floor = "" if minimum is None else f" >= {minimum}"
        raise HySquantError(f"{key}={value!r} must be an integer{floor}")
    return value


GB_PER_WORKER = 1.5  # memory of one Ray worker process holding a calibrated model and its splits [GB]


def mem_available_gb() -> float | None:
    """The memory this machine has available (``/proc/meminfo`` MemAvailable) [GB]; None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1e6  # kB -> GB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _threads(value: Any, key: str) -> int:
    """``threads`` / ``hardware.timing.threads``: an integer >= 1, at most the CPUs this process may use
    (``os.sched_getaffinity``): more threads than CPUs only take turns (1000 of them made no progress in 11 minutes)."""
    n = _integer(value, key, 1)
    cpus = len(os.sched_getaffinity(0))
    if n > cpus:
        raise HySquantError(
            f"{key}={n} is more threads than this process may use: at most {cpus} (the CPUs of its affinity,"
            f" os.sched_getaffinity); lower it{' (threads=null takes them all)' if key == 'threads' else ''}"
        )
    return n


# Peak memory of one batch on a runtime [bytes per input pixel of one image]: onnxruntime's FP32 run measured about
# 112 (mobilevit_xxs) and 440 (mobilevit_xs, mobilevit_s), doubled for the int8 graph's extra tensors and the arena's
# slack; a model not listed is taken at twice the widest.
ACTIVATION_BYTES_PER_PIXEL = {"mobilevit_xxs": 256, "mobilevit_xs": 1024, "mobilevit_s": 1024}


def batch_bytes(model: str, in_chans: int, img_size: int) -> float:
    """The estimated memory of one image of a batch run by a runtime [bytes]: the model's activations, which scale
    with the image's pixels (:data:`ACTIVATION_BYTES_PER_PIXEL`), and the float input itself."""
    per_pixel = ACTIVATION_BYTES_PER_PIXEL.get(model, 2 * max(ACTIVATION_BYTES_PER_PIXEL.values()))
    return img_size * img_size * (per_pixel + 4 * in_chans)


def _batch_size(profile: DeviceProfile, space: str, c: Mapping[str, Any]) -> None:
    """``hardware.batch_size`` where this machine runs whole batches (a runtime backend, or the per-unit latency of
    the executable space): one batch's estimated memory (:func:`batch_bytes`) must fit the memory available, beside
    the process's own (about :data:`GB_PER_WORKER` GB); else one line naming the most that fits. The roofline and the
    CUDA kernels of a GPU profile only compute with the number."""
    if profile.batch_size <= 1 or (profile.backend in ("modelled", "measured") and space != "executable"):
        return
    available = mem_available_gb()
    if available is None:
        return
    model, data = str(c["model"]["name"]), c["data"]
    try:
        each = batch_bytes(model, int(data["in_chans"]), int(data["img_size"]))
    except (KeyError, TypeError, ValueError):
        return  # the data settings' own checks name what is wrong
    room = max(available - GB_PER_WORKER, 0.0) * 1e9
    if profile.batch_size * each > room:
        most = max(1, int(room // each))
        raise HySquantError(
            f"hardware.batch_size={profile.batch_size} needs about {profile.batch_size * each / 1e9:.1f} GB for one"
            f" batch of {model} at {data['img_size']}x{data['img_size']} ({each / 1e6:.2f} MB an image), more than"
            f" the {available:.1f} GB of memory available: at most {most} on this machine; lower it"
        )


def _workers(value: Any, key: str, c: Mapping[str, Any]) -> int:
    """``lut.workers`` / ``search.workers``: an integer >= 1 that this machine can run, each of N > 1 workers being a
    Ray process that holds its own model and data (about :data:`GB_PER_WORKER` GB): at most the CPUs this process
    may use, and the memory available (``/proc/meminfo`` MemAvailable) over that. Not capped on a cluster
    (``ray.address``)."""
    n = _integer(value, key, 1)
    if n == 1 or (c.get("ray") or {}).get("address"):
        return n
    cpus = len(os.sched_getaffinity(0))
    available_gb = mem_available_gb()
    limit = cpus if available_gb is None else min(cpus, int(available_gb // GB_PER_WORKER))
    if n > limit:
        memory = "" if available_gb is None else f", {available_gb:.1f} GB of memory free at ~{GB_PER_WORKER} GB each"
        raise HySquantError(
            f"{key}={n} is more workers than this machine can run: at most {max(1, limit)} ({cpus} CPU(s) this process"
            f" may use{memory}); lower it, or join a Ray cluster with ray.address=..."
        )
    return n


def _number(value: Any, key: str, positive: bool = False, optional: bool = False) -> float | None:
    """A finite number (NaN and infinities are refused: they switch checks off or reach the outputs as bare
    ``NaN`` / ``Infinity``), > 0 when ``positive``; None when ``optional`` and not given."""
    if value is None and optional:
        return None
    kind = f"{'positive ' if positive else ''}number"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise HySquantError(f"{key}={value!r} must be a {kind}")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float
        number = math.inf
    if not math.isfinite(number):
        raise HySquantError(f"{key}={value!r} must be a finite {kind}, not NaN or infinite")
    if positive and not number > 0:
        raise HySquantError(f"{key}={value!r} must be a {kind}")
    return number


def _flag(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise HySquantError(f"{key}={value!r} must be true or false")
    return value


def check_choice(value: Any, key: str, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``, else a one-line error naming ``key`` and the choices."""
    if value not in choices:
        raise HySquantError(f"{key}={value!r} is unknown: use one of {', '.join(choices)}")
    return str(value)


# -- shared by every app ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSettings:
    """``conf/model/``: which timm architecture, and where its weights come from."""

    name: str
    num_classes: int
    in_chans: int
    img_size: int
    embedded: bool = False
    pretrained: bool = False
    checkpoint: str | None = None

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> ModelSettings:
        return cls(
            name=str(m["name"]),
            num_classes=_integer(m["num_classes"], "model.num_classes", 1),
            in_chans=_integer(m["in_chans"], "model.in_chans", 1),
            img_size=_integer(m["img_size"], "model.img_size", 1),
            embedded=_flag(m.get("embedded", False), "model.embedded"),
            pretrained=_flag(m.get("pretrained", False), "model.pretrained"),
            checkpoint=None if m.get("checkpoint") in (None, "") else str(m["checkpoint"]),
        )


@dataclass(frozen=True)
class TrainRecipe:
    """``data.train``: how ``hysquant-train`` trains a model from scratch on this data set. AdamW at ``lr`` with a
    one-cycle cosine schedule (``warmup``: the fraction of steps it warms up), ``label_smoothing``; augmentation: a
    random shift of up to ``max_shift`` pixels (data held in memory) or a random-resized crop of ``min_scale``..1 of
    the image's area and a horizontal flip (photos); ``resolution``: (first epoch, pixels) steps of the training
    resolution (progressive resizing; empty: ``data.img_size`` throughout); ``ema``: the decay of an exponential
    moving average of the weights, kept instead of the weights when it scores higher on search-val (None: off);
    ``clip_grad``: the largest gradient norm a step takes (None: unclipped; transformers from scratch spike without).
    ``given`` names the keys the config set (what a model's cache key hashes)."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    label_smoothing: float
    max_shift: int = 0
    min_scale: float = 0.35
    resolution: tuple[tuple[int, int], ...] = ()
    warmup: float = 0.15
    ema: float | None = None
    clip_grad: float | None = None
    given: tuple[str, ...] = field(default=(), repr=False)

    @classmethod
    def from_mapping(cls, t: Mapping[str, Any]) -> TrainRecipe:
        known = {f for f in cls.__dataclass_fields__ if f != "given"}
        unknown = sorted(set(t) - known)
        if unknown:
            raise HySquantError(f"data.train.{unknown[0]} is not a training setting: use {', '.join(sorted(known))}")
        steps = t.get("resolution") or ()
        if not isinstance(steps, (list, tuple)) or not all(isinstance(s, (list, tuple)) and len(s) == 2 for s in steps):
            raise HySquantError(
                f"data.train.resolution={steps!r} must be a list of [first epoch, pixels] pairs, e.g."
                " [[0,128],[20,160]]"
            )
        resolution = tuple(
            (_integer(e, "data.train.resolution", 0), _integer(px, "data.train.resolution", 8)) for e, px in steps
        )
        if [e for e, _ in resolution] != sorted({e for e, _ in resolution}):
            raise HySquantError(f"data.train.resolution={steps!r} must list its first epochs in increasing order")
        min_scale = _number(t.get("min_scale", 0.35), "data.train.min_scale", positive=True)
        warmup = _number(t.get("warmup", 0.15), "data.train.warmup", positive=True)
        ema = _number(t.get("ema"), "data.train.ema", positive=True, optional=True)
        clip_grad = _number(t.get("clip_grad"), "data.train.clip_grad", positive=True, optional=True)
        for key, value in (("min_scale", min_scale), ("warmup", warmup), ("ema", ema)):
            if value is not None and value >= 1:
                raise HySquantError(f"data.train.{key}={value!r} must lie in (0, 1)")
        return cls(
            epochs=_integer(t["epochs"], "data.train.epochs", 1),
            batch_size=_integer(t["batch_size"], "data.train.batch_size", 2),
            lr=_number(t["lr"], "data.train.lr", positive=True),
            weight_decay=_number(t["weight_decay"], "data.train.weight_decay"),
            label_smoothing=_number(t["label_smoothing"], "data.train.label_smoothing"),
            max_shift=_integer(t.get("max_shift", 0), "data.train.max_shift", 0),
            min_scale=min_scale,
            resolution=resolution,
            warmup=warmup,
            ema=ema,
            clip_grad=clip_grad,
            given=tuple(k for k in t if k in known),
        )

    def at(self, epoch: int, default: int) -> int:
        """The training resolution in pixels at ``epoch`` (0-based): the last step that has begun, else ``default``."""
        pixels = default
        for first, px in self.resolution:
            if epoch >= first:
                pixels = px
        return pixels

    def to_dict(self) -> dict[str, Any]:
        """The keys the config set, with their values."""
        d = asdict(self)
        d["resolution"] = [list(s) for s in self.resolution]
        return {k: d[k] for k in self.given}


@dataclass(frozen=True)
class DataSettings:
    """``conf/data/``: one data set and its splits. ``given`` names the keys the config set, so that
    :meth:`to_dict` (what the model and LUT cache keys hash) is the config as written."""

    name: str
    num_classes: int
    in_chans: int
    img_size: int
    calib_size: int
    search_val_size: int
    test_size: int | None = None
    train_size: int | None = None
    root: str | None = None
    download: bool = False
    batch_size: int | None = None  # loader batch of a streamed split
    workers: int | None = None  # loader processes of a streamed split (each on one thread)
    mean: tuple[float, ...] | None = None  # photos: per-channel normalisation
    std: tuple[float, ...] | None = None
    crop_pct: float | None = None  # photos: the evaluation crop's share of the resized image (1: no border cut)
    train: TrainRecipe | None = None
    given: tuple[str, ...] = field(default=(), repr=False)

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any]) -> DataSettings:
        known = {f for f in cls.__dataclass_fields__ if f != "given"}
        values = {k: v for k, v in d.items() if k in known}
        for key in ("calib_size", "search_val_size"):
            _integer(d.get(key), f"data.{key}", 1)
        for key in ("test_size", "train_size"):
            if d.get(key) is not None:
                _integer(d[key], f"data.{key}", 1)
        if isinstance(values.get("train"), Mapping):
            values["train"] = TrainRecipe.from_mapping(values["train"])
        if values.get("root") is not None:
            values["root"] = str(values["root"])
        for key in ("mean", "std"):
            if values.get(key) is not None:
                values[key] = tuple(_number(v, f"data.{key}", positive=key == "std") for v in values[key])
        if values.get("crop_pct") is not None:
            values["crop_pct"] = _number(values["crop_pct"], "data.crop_pct", positive=True)
        return cls(**values, given=tuple(k for k in d if k in known))

    def to_dict(self) -> dict[str, Any]:
        """The keys the config set, with their values (the recipe as a mapping)."""
        d = asdict(self)
        if self.train is not None:
            d["train"] = self.train.to_dict()
        for key in ("mean", "std"):
            if d[key] is not None:
                d[key] = list(d[key])
        return {k: d[k] for k in self.given}


@dataclass(frozen=True)
class QuantSettings:
    """``quant``: quantizer options (the equations are the paper's, per tensor and min-max by default).
    ``scope``: which units a policy covers (:data:`SCOPES`); ``calibrator``: the activation range rule
    (:mod:`hysquant_rl.quant.calibrate`); ``percentile``: its ``p``; ``softmax``: uniform or log2 levels of the
    attention probabilities; ``act_granularity``: per-tensor or per-channel ranges of ``layernorm-in`` units."""

    scope: str = "hybrid"
    weight_granularity: str = "tensor"
    act_granularity: str = "tensor"
    calibrator: str = "minmax"
    percentile: float = 99.99
    softmax: str = "uniform"

    @classmethod
    def from_mapping(cls, q: Mapping[str, Any]) -> QuantSettings:
        percentile = _number(q.get("percentile", 99.99), "quant.percentile")
        if not 90 <= percentile <= 100:  # the range [(100-p)-th, p-th percentile] is empty for p <= 50
            raise HySquantError(
                f"quant.percentile={percentile!r} must be in (0, 100] and at least 90, e.g. 99.99: the range is the"
                " [(100-p)-th, p-th] percentiles, empty for p <= 50 and clipping over a fifth of the values below 90"
            )
        return cls(
            scope=check_choice(q.get("scope", "hybrid"), "quant.scope", SCOPES),
            weight_granularity=check_choice(
                q.get("weight_granularity", "tensor"), "quant.weight_granularity", GRANULARITIES
            ),
            act_granularity=check_choice(q.get("act_granularity", "tensor"), "quant.act_granularity", GRANULARITIES),
            calibrator=check_choice(q.get("calibrator", "minmax"), "quant.calibrator", CALIBRATORS),
            percentile=percentile,
            softmax=check_choice(q.get("softmax", "uniform"), "quant.softmax", SOFTMAX_LEVELS),
        )

    def key(self) -> dict[str, Any]:
        """What changes a measured number: the percentile only under its rule, the rule only when not min-max, the
        hybrid options only under the hybrid scope (so that a linear-scope, min-max LUT cache keeps its key)."""
        key: dict[str, Any] = {"weight_granularity": self.weight_granularity}
        if self.calibrator != "minmax":
            key["calibrator"] = self.calibrator
        if self.calibrator == "percentile":
            key["percentile"] = self.percentile
        if self.scope != "linear":
            key.update(scope=self.scope, softmax=self.softmax, act_granularity=self.act_granularity)
        return key


@dataclass(frozen=True)
class EvalSettings:
    """``eval``: batch size of every evaluation, and the FP32-prefix replay's memory in MB per worker and split."""

    batch_size: int = 256
    prefix_cache_mb: float = 1024.0

    @classmethod
    def from_mapping(cls, e: Mapping[str, Any]) -> EvalSettings:
        return cls(
            batch_size=_integer(e["batch_size"], "eval.batch_size", 1),
            prefix_cache_mb=_number(e.get("prefix_cache_mb", 1024.0), "eval.prefix_cache_mb"),
        )

    def key(self) -> dict[str, Any]:
        """What changes a measured number (the replay is bit-identical to a full pass)."""
        return {"batch_size": self.batch_size}


def parse_configs(items: Any) -> list[tuple[int, int]]:
    """``lut.configs`` -> (w_bits, a_bits) pairs, bits 2..8. Items are ``[w, a]`` pairs or ``"W4A8"`` strings.
    Raises :class:`HySquantError` naming the first bad item, a duplicate, or an empty list."""
    hint = (
        f"use [w_bits, a_bits] pairs with bits {MIN_BITS}..{MAX_BITS}, e.g. lut.configs=[[4,4],[8,8]]"
        " (FP32 rows are added anyway)"
    )
    if not isinstance(items, (list, tuple)) or not items:
        raise HySquantError(f"lut.configs={items!r} is not a non-empty list: {hint}")
    out: list[tuple[int, int]] = []
    for item in items:
        pair = _pair(item)
        if pair is None:
            raise HySquantError(
                f"lut.configs: {item!r} is not a (w_bits, a_bits) pair with bits {MIN_BITS}..{MAX_BITS}: {hint}"
            )
        if pair in out:
            raise HySquantError(f"lut.configs lists {label(*pair)} twice: {hint}")
        out.append(pair)
    return out


def _pair(item: Any) -> tuple[int, int] | None:
    if isinstance(item, str):
        try:
            pair = parse_uniform(item)
        except HySquantError:
            return None
    elif isinstance(item, (list, tuple)) and len(item) == 2:
        pair = tuple(item)
    else:
        return None
    if pair is None or not all(
        isinstance(b, int) and not isinstance(b, bool) and MIN_BITS <= b <= MAX_BITS for b in pair
    ):
        return None
    return int(pair[0]), int(pair[1])


@dataclass(frozen=True)
class LUTSettings:
    """``lut`` and ``prune``: the configurations every layer is measured at, the build's workers and cache."""

    configs: tuple[tuple[int, int], ...]
    rules: PruneRules
    cache_dir: Path
    workers: int = 1
    cache: bool = True
    save_every: int = 8

    @classmethod
    def from_mapping(cls, lut: Mapping[str, Any], prune: Mapping[str, Any]) -> LUTSettings:
        return cls(
            configs=tuple(parse_configs(lut["configs"])),
            rules=PruneRules.from_mapping(prune),
            cache_dir=Path(str(lut["cache_dir"])).expanduser(),
            workers=_integer(lut["workers"], "lut.workers", 1),
            cache=_flag(lut["cache"], "lut.cache"),
            save_every=_integer(lut["save_every"], "lut.save_every", 1),
        )


@dataclass(frozen=True)
class RaySettings:
    """``ray``: where LUT and evaluation workers run (null address: this machine)."""

    address: str | None = None
    connect_timeout_s: float = 5.0

    @classmethod
    def from_mapping(cls, r: Mapping[str, Any]) -> RaySettings:
        return cls(
            address=r.get("address") or None,
            connect_timeout_s=_number(r.get("connect_timeout_s", 5.0), "ray.connect_timeout_s", positive=True),
        )


@dataclass(frozen=True)
class RunSettings:
    """What every app shares (``conf/base.yaml`` and its groups)."""

    seed: int
    threads: int | None
    cache_dir: Path  # paths.cache: embedded models (and the LUT cache by default)
    model: ModelSettings
    data: DataSettings
    quant: QuantSettings
    eval: EvalSettings
    hardware: DeviceProfile
    lut: LUTSettings
    ray: RaySettings
    space: str = "simulated"  # search.space resolved: executable (the runtime's choices) | simulated (2..8 and FP32)
    export: ExportSettings = field(default_factory=lambda: ExportSettings())  # export.*: the files written

    @classmethod
    def from_mapping(cls, c: Mapping[str, Any]) -> RunSettings:
        threads = c.get("threads")
        _workers(c["lut"]["workers"], "lut.workers", c)  # before any work: Ray workers this machine can run
        hardware = load_profile(c["hardware"])
        space = resolve_space(c.get("search", {}).get("space", "auto"), hardware, c["quant"])
        _threads(hardware.timing.threads, "hardware.timing.threads")  # before any work: threads and memory
        _batch_size(hardware, space, c)  # this machine has
        return cls(
            seed=_integer(c["seed"], "seed"),
            threads=None if threads is None else _threads(threads, "threads"),
            cache_dir=Path(str(c["paths"]["cache"])).expanduser(),
            model=ModelSettings.from_mapping(c["model"]),
            data=DataSettings.from_mapping(c["data"]),
            quant=QuantSettings.from_mapping(c["quant"]),
            eval=EvalSettings.from_mapping(c["eval"]),
            hardware=hardware,
            lut=LUTSettings.from_mapping(c["lut"], c["prune"]),
            ray=RaySettings.from_mapping(c["ray"]),
            space=space,
            export=ExportSettings.from_mapping(c.get("export", {}), hardware, space),
        )


@dataclass(frozen=True)
class ExportSettings:
    """``export``: which files a run writes besides the policy (:mod:`hysquant_rl.deploy.export`). ``onnx``: in the
    simulated space, the paper's QDQ graph too (the executable space always writes its runtime's deployable file);
    ``runtime_files``: the runtimes whose own files to add (``export.<runtime>=true``, e.g. OpenVINO's
    ``model.xml``/``.bin``): only the runtime the run searches on writes its layout, so only it may be named."""

    onnx: bool = False
    runtime_files: tuple[str, ...] = ()

    @classmethod
    def from_mapping(cls, e: Mapping[str, Any], profile: DeviceProfile, space: str) -> ExportSettings:
        from hysquant_rl.hardware.profile import known_runtimes

        for key in e:
            if key != "onnx" and key not in known_runtimes():
                raise HySquantError(
                    f"export.{key} is not an export setting: use export.onnx or export.<runtime>"
                    f" ({', '.join(known_runtimes())})"
                )
        wanted = tuple(str(k) for k, v in e.items() if k != "onnx" and _flag(v, f"export.{k}"))
        for name in wanted:
            if space != "executable" or profile.runtime != name:
                raise HySquantError(
                    f"export.{name}=true writes {name}'s own files of {name}'s layout, which only a search on {name}"
                    f" produces: add hardware=cpu hardware.backend={name} (search.space=auto or executable)"
                )
        return cls(onnx=_flag(e.get("onnx", False), "export.onnx"), runtime_files=wanted)


def resolve_space(value: Any, profile: DeviceProfile, quant: Mapping[str, Any]) -> str:
    """``search.space``: ``auto`` is ``executable`` on a profile with a runtime (``cpu``: onnxruntime), ``simulated``
    elsewhere. The executable space is the runtime's layout: quantizer options it has no kernel for are refused."""
    space = check_choice(value, "search.space", ("auto", *SPACES))
    if space == "auto":
        space = "executable" if profile.runtime is not None else "simulated"
    if space == "executable" and profile.runtime is not None:
        for key, simulated in (("softmax", "uniform"), ("act_granularity", "tensor")):
            if quant.get(key, simulated) != simulated:
                raise HySquantError(
                    f"quant.{key}={quant[key]} has no kernel on {profile.runtime}: use quant.{key}={simulated} for"
                    " search.space=executable, or search.space=simulated"
                )
        if quant.get("calibrator", "minmax") == "mse":
            raise HySquantError(
                "quant.calibrator=mse has no onnxruntime counterpart: use minmax or percentile for"
                " search.space=executable, or search.space=simulated"
            )
    return space


# -- hysquant-search -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BudgetSpec:
    """``conf/budget/``: latency [ms], energy [mJ] and size [MB] per inference, each absolute and/or as a ratio of
    the ``reference`` policy's cost (both given: the tighter holds; None: no such budget), an accuracy floor on
    search-val top-1 [%], and what an episode does with a policy over budget (``mode``: project or penalty).
    ``reference``: ``W8A8`` or ``FP32`` (uniform), or ``auto``: FP32 in the executable space (a runtime's float
    model is what a deployment is compared with), W8A8 in the simulated one (the paper's). ``max_drop`` asks the dual
    question: the policy that minimises the ``minimize`` cost with search-val top-1 at most ``max_drop`` points below
    FP32's (the other budgets still hold)."""

    mode: str = "project"
    penalty_weight: float = 10.0
    latency_ms: float | None = None
    latency_ratio: float | None = None
    energy_mj: float | None = None
    energy_ratio: float | None = None
    size_mb: float | None = None
    size_ratio: float | None = None
    min_top1: float | None = None
    reference: str = "auto"
    max_drop: float | None = None  # the dual question: minimise ``minimize`` within this search-val top-1 drop [points]
    minimize: str = "latency"  # a budget kind (latency, energy, size)

    @classmethod
    def from_mapping(cls, b: Mapping[str, Any]) -> BudgetSpec:
        values: dict[str, Any] = {"mode": check_choice(b.get("mode", "project"), "budget.mode", BUDGET_MODES)}
        values["reference"] = check_choice(b.get("reference", "auto"), "budget.reference", BUDGET_REFERENCES)
        values["penalty_weight"] = _number(b.get("penalty_weight", 10.0), "budget.penalty_weight")
        if values["penalty_weight"] < 0:
            raise HySquantError(f"budget.penalty_weight={values['penalty_weight']!r} must be a finite number >= 0")
        for key in (key for k in KINDS for key in (k.key, k.ratio_key)):
            values[key] = _number(b.get(key), f"budget.{key}", positive=True, optional=True)
        values["min_top1"] = _number(b.get("min_top1"), "budget.min_top1", optional=True)
        values["max_drop"] = _number(b.get("max_drop"), "budget.max_drop", optional=True)
        if values["max_drop"] is not None and not 0 <= values["max_drop"] <= 100:
            raise HySquantError(
                f"budget.max_drop={values['max_drop']!r} must be in [0, 100]: points of search-val top-1 below FP32"
            )
        values["minimize"] = check_choice(b.get("minimize", "latency"), "budget.minimize", tuple(k.name for k in KINDS))
        if values["min_top1"] is not None and not 0 <= values["min_top1"] <= 100:
            raise HySquantError(
                f"budget.min_top1={values['min_top1']!r} must be in [0, 100]: a search-val top-1 floor in percent"
            )
        return cls(**values)

    def given(self, key: str) -> tuple[float | None, float | None]:
        """(absolute, ratio of the reference) of the budget ``key`` (latency_ms, energy_mj, size_mb)."""
        return getattr(self, key), getattr(self, BY_KEY[key].ratio_key)


@dataclass(frozen=True)
class AgentSettings:
    """``conf/agent/``: the SB3 agent and its hyperparameters (HAQ's for DDPG)."""

    name: str
    net_arch: tuple[int, ...]
    learning_rate: float  # the critic's (and SAC's entropy coefficient's)
    actor_learning_rate: float
    normalize_reward: bool  # robust standardisation of the rewards in the replay buffer
    buffer_size: int
    batch_size: int
    tau: float
    gamma: float
    gradient_steps: int  # updates after every episode
    warmup_episodes: int  # exploration before the first update
    noise_sigma: float  # HAQ's truncated-normal exploration, in [0, 1] action units
    noise_decay: float  # per episode

    @classmethod
    def from_mapping(cls, a: Mapping[str, Any]) -> AgentSettings:
        return cls(
            name=str(a["name"]),
            net_arch=tuple(_integer(n, "agent.net_arch", 1) for n in a["net_arch"]),
            learning_rate=_number(a["learning_rate"], "agent.learning_rate", positive=True),
            actor_learning_rate=_number(a["actor_learning_rate"], "agent.actor_learning_rate", positive=True),
            normalize_reward=_flag(a["normalize_reward"], "agent.normalize_reward"),
            buffer_size=_integer(a["buffer_size"], "agent.buffer_size", 1),
            batch_size=_integer(a["batch_size"], "agent.batch_size", 1),
            tau=_number(a["tau"], "agent.tau"),
            gamma=_number(a["gamma"], "agent.gamma"),
            gradient_steps=_integer(a["gradient_steps"], "agent.gradient_steps", 0),
            warmup_episodes=_integer(a["warmup_episodes"], "agent.warmup_episodes", 0),
            noise_sigma=_number(a["noise_sigma"], "agent.noise_sigma"),
            noise_decay=_number(a["noise_decay"], "agent.noise_decay"),
        )


@dataclass(frozen=True)
class ScreenSettings:
    """``search.screen``: once the agent's critic is seen to rank, it screens ``candidates`` new policies per episode
    instead of ``search.candidates`` (0: never). Seen to rank: Kendall's tau between its predicted and realised gains
    over the incumbent, over the episodes it scored so far (:mod:`hysquant_rl.search.ranking`), is above 0 with a
    one-sided p below ``p_max`` on at least ``min_pairs`` episodes."""

    candidates: int = 0
    min_pairs: int = 20
    p_max: float = 0.05

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> ScreenSettings:
        p_max = _number(m["p_max"], "search.screen.p_max", positive=True)
        if p_max > 1:
            raise HySquantError(f"search.screen.p_max={p_max!r} must be a p-value in (0, 1], e.g. 0.05")
        return cls(
            candidates=_integer(m["candidates"], "search.screen.candidates", 0),
            min_pairs=_integer(m["min_pairs"], "search.screen.min_pairs", 3),
            p_max=p_max,
        )


TRANSFER_METHOD = "rl-cond"  # the search method of the budget-conditioned agent


@dataclass(frozen=True)
class TransferSettings:
    """``search.transfer``: the budget-conditioned agent (``search.method=rl-cond``, :mod:`agents.conditioned`).
    ``agent``: the folder of a trained agent to answer with; None: train one first, over the budgets ``train``
    (ratios of ``budget.reference`` for the one budget the run sets), for ``episodes`` PTQ evaluations in all, and
    save it as ``agent/`` in the run directory. It answers the run's budget with ``evaluations`` (k) PTQ evaluations:
    0, its greedy policy fitted to the budget; k > 0, that policy and k - 1 more picked by its critic, learning as it
    goes (the actor frozen with ``freeze_actor``, the ablation)."""

    agent: str | None = None
    train: tuple[float, ...] = ()
    episodes: int = 60
    evaluations: int = 5
    freeze_actor: bool = False

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> TransferSettings:
        train = m["train"]
        if not isinstance(train, (list, tuple)) or not train:
            raise HySquantError(
                f"search.transfer.train={train!r} must be a non-empty list of budget ratios, e.g. [0.5,0.6,0.7]"
            )
        ratios = tuple(_number(x, "search.transfer.train", positive=True) for x in train)
        if len(set(ratios)) < len(ratios):
            raise HySquantError(f"search.transfer.train={list(ratios)} lists a budget twice: give each once")
        episodes = _integer(m["episodes"], "search.transfer.episodes", 1)
        if episodes < len(ratios):
            raise HySquantError(
                f"search.transfer.episodes={episodes} is fewer than the {len(ratios)} training budgets: each needs"
                " at least its warm-start episode"
            )
        return cls(
            agent=None if m.get("agent") in (None, "") else str(m["agent"]),
            train=ratios,
            episodes=episodes,
            evaluations=_integer(m["evaluations"], "search.transfer.evaluations", 0),
            freeze_actor=_flag(m["freeze_actor"], "search.transfer.freeze_actor"),
        )


@dataclass(frozen=True)
class SearchSettings:
    """``conf/search.yaml``: how a policy is searched. ``episodes`` counts PTQ evaluations per hardware round
    (paper 3.3), for every episodic method."""

    method: str
    proxy: str
    seed: int
    episodes: int
    max_rounds: int
    warm_start: bool
    offset_range: int
    warm_start_noise_bits: float
    refine_groups: int  # ilp-refine: contiguous unit groups whose sensitivity is re-measured in context
    checkpoint_every: int
    workers: int  # parallel episodes: policies evaluated at once (Ray actors when > 1)
    candidates: int  # new policies per episode the agent's critic picks from, once it learns
    reference: tuple[str, ...]
    reward_metric: str
    reward_scale: float
    resume: bool
    budget: BudgetSpec
    agent: AgentSettings
    swap_moves: bool = False  # the candidates' moves raise one unit and lower another within the budgets
    screen: ScreenSettings = field(default_factory=ScreenSettings)
    transfer: TransferSettings = field(default_factory=TransferSettings)

    @classmethod
    def from_mapping(cls, c: Mapping[str, Any]) -> SearchSettings:
        s, r = c["search"], c["reward"]
        return cls(
            method=str(s["method"]),
            proxy=check_choice(s["proxy"], "search.proxy", PROXIES),
            seed=_integer(s["seed"], "search.seed"),
            episodes=_integer(s["episodes"], "search.episodes", 1),
            max_rounds=_integer(s["max_rounds"], "search.max_rounds", 1),
            warm_start=_flag(s["warm_start"], "search.warm_start"),
            offset_range=_integer(s["offset_range"], "search.offset_range", 0),
            warm_start_noise_bits=_number(s["warm_start_noise_bits"], "search.warm_start_noise_bits"),
            # a run recorded before the setting existed (resume=true) gets the conf/search.yaml default
            refine_groups=_integer(s.get("refine_groups", 16), "search.refine_groups", 1),
            checkpoint_every=_integer(s["checkpoint_every"], "search.checkpoint_every", 1),
            workers=_workers(s["workers"], "search.workers", c),
            candidates=_integer(s["candidates"], "search.candidates", 1),
            reference=_references(s["reference"]),
            reward_metric=check_choice(r["metric"], "reward.metric", REWARD_METRICS),
            reward_scale=_number(r["scale"], "reward.scale"),
            resume=_flag(c.get("resume", False), "resume"),
            budget=BudgetSpec.from_mapping(c["budget"]),
            agent=AgentSettings.from_mapping(c["agent"]),
            # a run recorded before these settings existed (resume=true) gets the conf/search.yaml defaults
            swap_moves=_flag(s.get("swap_moves", False), "search.swap_moves"),
            screen=ScreenSettings.from_mapping(s.get("screen", asdict(ScreenSettings()))),
            transfer=_transfer(s, c["budget"]),
        )._dual_checked()

    def _dual_checked(self) -> SearchSettings:
        """``budget.max_drop`` is answered by the integer program, the hill climber and the agent (their rewards and
        warm start turn around); a one-line refusal for the other methods."""
        answers = ("ilp", "local", "rl")
        if self.budget.max_drop is not None and self.method not in answers:
            raise HySquantError(
                f"budget.max_drop is answered by search.method={', '.join(answers)}, not {self.method}: choose one of"
                " them, or set budget.max_drop=null"
            )
        return self


def _references(value: Any) -> tuple[str, ...]:
    """``search.reference``: uniform policies the summary evaluates and writes beside the result (as ``W8A8``, ``FP32``
    labels), checked here, before the search, since the summary comes after it."""
    hint = "e.g. search.reference=[W8A8,W4A8] (W<w>A<a> with bits 2..8, or FP32), or search.reference=[] for none"
    if not isinstance(value, (list, tuple)):
        raise HySquantError(f"search.reference={value!r} must be a list of uniform policies: {hint}")
    out: list[str] = []
    for spec in value:
        try:
            pair = parse_uniform(spec) if isinstance(spec, str) else None
        except HySquantError as e:  # a malformed spec (W9A8)
            raise HySquantError(f"search.reference: {e}") from None
        if pair is None:
            raise HySquantError(f"search.reference: {spec!r} is not a uniform policy: {hint}")
        if label(*pair) in out:
            raise HySquantError(f"search.reference lists {label(*pair)} twice: give each once")
        out.append(label(*pair))
    return tuple(out)


def _transfer(s: Mapping[str, Any], budget: Mapping[str, Any]) -> TransferSettings:
    """``search.transfer``, checked; with ``search.method=rl-cond`` the run must set exactly one budget (the agent is
    conditioned on one budget kind)."""
    defaults = {**asdict(TransferSettings()), "train": [1.0]}
    transfer = TransferSettings.from_mapping(s.get("transfer", defaults))
    if s["method"] == TRANSFER_METHOD:
        kinds = [k.name for k in KINDS if any(budget.get(key) is not None for key in (k.key, k.ratio_key))]
        if len(kinds) != 1:
            raise HySquantError(
                f"search.method={TRANSFER_METHOD} answers one budget kind, the run sets {len(kinds)}"
                f" ({', '.join(kinds) or 'none'}): use budget=latency, budget=energy or budget=size"
            )
    return transfer
