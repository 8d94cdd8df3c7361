"""The sensitivity lookup table (LUT, paper section 3.2, figures 3-4) and its pruning rules (section 4).

For every quantizable layer and every configuration ``(w_bits, a_bits)`` of ``lut.configs`` the layer is
quantized alone (every other layer FP32) and measured on search-val: top-1, top-5 (%), their drops from FP32
(points), logit KL to FP32 and cross-entropy (nats). Each row is priced by the cost model as that layer in a
uniform chain at that configuration (:meth:`CostModel.config_cost`): latency (ms) and energy (mJ) per
inference of ``batch_size`` images, size (bytes), BitOps per image, compute precision, deployability. One
FP32 row per layer (drops 0, priced at the float precision) completes the table.

Files (``LUT.write``): ``lut.csv`` (one row per layer x configuration, FP32 first), ``lut.json`` (the same
rows plus the key, FP32 metrics, pruning result and build facts; ``FORMAT``/``VERSION`` below),
``lut_heatmap.png``.

Cache: ``{lut.cache_dir}/<model>_<data>_<sha>.json``, the ``lut.json`` document; ``sha`` hashes the key
(:func:`cache_key`: everything that changes the numbers). Partial results are written atomically every
``lut.save_every`` jobs and when a build stops for any reason, so a restart runs only the missing jobs. A
corrupt or stale file is rebuilt with a warning, never used.

Pruning (:class:`PruneRules`): per layer, allowed weight and activation bit ranges within 2..8 (the search's
integer bit-widths), raised above every tested bit-width whose damage exceeds the thresholds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hysquant_rl.errors import HySquantError
from hysquant_rl.executor import Executor, Job, Result, make_executor
from hysquant_rl.io import atomic_write, records, save_json
from hysquant_rl.quant.quantizer import FP32_BITS, MAX_BITS, MIN_BITS

log = logging.getLogger(__name__)

FORMAT = "hysquant-lut"
VERSION = 1  # bump when rows or the key change meaning: older caches then read as stale
SPLIT = "search_val"  # what every LUT row is measured on (the search optimises the same split)
FP32_LABEL = "FP32"
METRICS = ("top1", "top5", "kl", "loss", "n")
COLUMNS = (
    "index", "layer", "kind", "family", "config", "w_bits", "a_bits",
    "top1", "top5", "top1_drop", "top5_drop", "kl", "loss", "n",
    "latency_ms", "energy_mj", "size_bytes", "bitops", "precision", "deployable", "batch_size",
)
N_BITS = MAX_BITS - MIN_BITS + 1  # integer bit-widths a search may pick per operand (7)
SPACE_CONVENTION = (
    "policies counted over integer bit-widths only: per layer (w_max - w_min + 1) x (a_max - a_min + 1) "
    f"pairs, {N_BITS} x {N_BITS} = {N_BITS ** 2} before pruning (bits {MIN_BITS}..{MAX_BITS}, FP32 not counted); "
    "log10 of the product over layers"
)
_KEY_EXCLUDED_DATA = ("workers", "batch_size", "download")  # loader settings: the images stay the same
_KEY_EXCLUDED_EVAL = ("prefix_cache_mb",)  # the replay is bit-identical to a full pass


def label(w_bits: int, a_bits: int) -> str:
    """``W4A8`` for (4, 8); ``FP32`` for (32, 32)."""
    return FP32_LABEL if (w_bits, a_bits) == (FP32_BITS, FP32_BITS) else f"W{w_bits}A{a_bits}"


# -- configuration -----------------------------------------------------------------------------------------


def parse_configs(value: Any) -> list[tuple[int, int]]:
    """``lut.configs`` -> list of (w_bits, a_bits), bits 2..8. Items are ``[w, a]`` pairs or ``"W4A8"``
    strings. Raises :class:`HySquantError` naming the first bad item, a duplicate, or an empty list."""
    from omegaconf import ListConfig, OmegaConf

    items = OmegaConf.to_container(value, resolve=True) if isinstance(value, ListConfig) else value
    hint = f"use [w_bits, a_bits] pairs with bits {MIN_BITS}..{MAX_BITS}, e.g. lut.configs=[[4,4],[8,8]] (FP32 rows are added anyway)"
    if not isinstance(items, (list, tuple)) or not items:
        raise HySquantError(f"lut.configs={items!r} is not a non-empty list: {hint}")
    out: list[tuple[int, int]] = []
    for item in items:
        pair = _pair(item)
        if pair is None:
            raise HySquantError(f"lut.configs: {item!r} is not a (w_bits, a_bits) pair with bits {MIN_BITS}..{MAX_BITS}: {hint}")
        if pair in out:
            raise HySquantError(f"lut.configs lists {label(*pair)} twice: {hint}")
        out.append(pair)
    return out


def _pair(item: Any) -> tuple[int, int] | None:
    if isinstance(item, str):
        from hysquant_rl.policy import parse_uniform

        try:
            pair = parse_uniform(item)
        except HySquantError:
            return None
    elif isinstance(item, (list, tuple)) and len(item) == 2:
        pair = tuple(item)
    else:
        return None
    if pair is None or not all(isinstance(b, int) and not isinstance(b, bool) and MIN_BITS <= b <= MAX_BITS for b in pair):
        return None
    return int(pair[0]), int(pair[1])


@dataclass(frozen=True)
class PruneRules:
    """When a tested bit-width is too damaging for one layer (config ``prune:``).

    A configuration fails when its top-1 drop exceeds ``max_drop`` (points) or its KL exceeds ``max_kl``
    (nats); ``None`` switches that test off. Top-1 on a few hundred images moves in steps of 1/N and is noisy;
    KL is smooth and sees damage before any label flips, so either one can prune.
    """

    max_drop: float | None = 1.0
    max_kl: float | None = 0.02

    @classmethod
    def from_cfg(cls, node: Any) -> PruneRules:
        def value(key: str) -> float | None:
            v = node.get(key)
            if v is None:
                return None
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise HySquantError(f"prune.{key}={v!r} must be a non-negative number, or null to switch it off")
            return float(v)

        return cls(max_drop=value("max_drop"), max_kl=value("max_kl"))

    def fails(self, drop: float, kl: float) -> bool:
        return (self.max_drop is not None and drop > self.max_drop) or (self.max_kl is not None and kl > self.max_kl)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Allowed:
    """One layer's allowed bit ranges after pruning, inclusive, within 2..8; ``reason`` says what raised a
    minimum (empty when nothing did)."""

    w: tuple[int, int]
    a: tuple[int, int]
    reason: str = ""

    @property
    def pairs(self) -> int:
        """(w, a) pairs inside the ranges."""
        return (self.w[1] - self.w[0] + 1) * (self.a[1] - self.a[0] + 1)


def prune(
    configs: Sequence[tuple[int, int]], drop: np.ndarray, kl: np.ndarray, rules: PruneRules
) -> list[Allowed]:
    """Allowed ranges per layer from ``drop`` and ``kl`` (L, C) measured at ``configs``.

    A bit-width ``b`` of one operand is tested by the configuration with ``b`` on that operand and the other
    operand at the most bits any configuration gives it (W8A4 tests A4, W8A8 tests A8 and W8, W4A8 tests
    W4), so that the damage is this operand's; bit-widths without such a configuration are not tested. If a
    test fails, bit-widths up to ``b`` are pruned (fewer bits never hurt less) and the minimum becomes the
    next tested bit-width above the highest failing one: bit-widths in between were not measured, so they
    are not trusted (the paper's rule: a layer whose A4 hurts keeps 8-bit activations). Failing even at the
    highest tested bit-width, or with none tested above, the layer keeps 8. Maxima stay 8: more bits never
    hurt accuracy, and the budget decides whether they are affordable.
    """
    out = []
    for l in range(len(drop)):
        lows, reasons = [], []
        for operand, name in ((0, "W"), (1, "A")):
            lo, why = _lowest(configs, drop[l], kl[l], rules, operand, name)
            lows.append(lo)
            reasons += [why] if why else []
        out.append(Allowed((lows[0], MAX_BITS), (lows[1], MAX_BITS), "; ".join(reasons)))
    return out


def _lowest(
    configs: Sequence[tuple[int, int]], drop: np.ndarray, kl: np.ndarray, rules: PruneRules, operand: int, name: str
) -> tuple[int, str]:
    other = 1 - operand
    best_other = max(c[other] for c in configs)
    # bit-width -> the configuration that tests it: the other operand at its most bits, so that a failure is
    # this operand's (W8A4 tests A4; W4A8 tests W4 and says nothing about A8)
    tested = {c[operand]: j for j, c in enumerate(configs) if c[other] == best_other}
    failing = [b for b in sorted(tested) if rules.fails(float(drop[tested[b]]), float(kl[tested[b]]))]
    if not failing:
        return MIN_BITS, ""
    b = failing[-1]
    j = tested[b]
    lowest = min((x for x in tested if x > b), default=MAX_BITS)
    return lowest, (
        f"{name}{b} fails at {label(*configs[j])} (top-1 drop {drop[j]:.2f}, KL {kl[j]:.3g}): {name.lower()} >= {lowest}"
    )


# -- the table ---------------------------------------------------------------------------------------------


@dataclass(eq=False)
class LUT:
    """The lookup table: ``frame`` (one row per layer x configuration, :data:`COLUMNS`, layers in forward
    order, FP32 first then ``configs`` in order), the quantized ``configs``, ``fp32`` metrics of the split,
    ``meta`` (key, model, device, build facts) and, once pruned, ``allowed`` per layer with its ``rules``."""

    frame: pd.DataFrame
    configs: list[tuple[int, int]]
    fp32: dict[str, float]
    meta: dict[str, Any] = field(default_factory=dict)
    allowed: list[Allowed] | None = None
    rules: PruneRules | None = None

    def __post_init__(self) -> None:
        self.configs = [(int(w), int(a)) for w, a in self.configs]
        self._matrices: dict[str, np.ndarray] = {}
        # quantized rows in (layer, configuration) order, so that any column reshapes to (L, C)
        position = {label(*c): j for j, c in enumerate(self.configs)}
        q = self.frame[self.frame["config"] != FP32_LABEL]
        q = q.assign(_pos=q["config"].map(position)).sort_values(["index", "_pos"], kind="stable")
        layers = int(self.frame["index"].nunique())
        if q["_pos"].isna().any() or len(q) != layers * len(self.configs) or \
                (q["_pos"].to_numpy().reshape(layers, -1) != np.arange(len(self.configs))).any():
            raise HySquantError(f"the LUT rows are not one per layer x configuration ({layers} x {', '.join(position)})")
        self._quantized = q.drop(columns="_pos")

    # -- shape -----------------------------------------------------------------------------------------
    @property
    def layer_names(self) -> list[str]:
        """Layer names in forward order."""
        return self.frame.drop_duplicates("index").sort_values("index")["layer"].tolist()

    @property
    def num_layers(self) -> int:
        return int(self.frame["index"].nunique())

    @property
    def labels(self) -> list[str]:
        """Configuration labels in column order (``W4A4``, ...)."""
        return [label(*c) for c in self.configs]

    def matrix(self, column: str) -> np.ndarray:
        """``column`` as an (L, C) float array: layers in forward order x :attr:`configs` (cached)."""
        if column not in self._matrices:
            if column not in self.frame.columns:
                raise HySquantError(f"the LUT has no column {column!r}: use one of {', '.join(self.frame.columns)}")
            values = self._quantized[column].to_numpy(dtype=np.float64).reshape(self.num_layers, len(self.configs))
            values.flags.writeable = False  # shared by every caller
            self._matrices[column] = values
        return self._matrices[column]

    def fp32_column(self, column: str) -> np.ndarray:
        """``column`` of the FP32 rows, (L,)."""
        rows = self.frame[self.frame["config"] == FP32_LABEL].sort_values("index")
        return rows[column].to_numpy(dtype=np.float64)

    # -- queries ---------------------------------------------------------------------------------------
    def most_sensitive(self, k: int = 5) -> pd.DataFrame:
        """The ``k`` layers whose worst configuration drops top-1 most (ties broken by KL), one row each:
        index, layer, kind, family, config (the worst), top1_drop, kl."""
        q = self._quantized.sort_values(["top1_drop", "kl"], ascending=False, kind="stable")
        worst = q.drop_duplicates("index")
        return worst.head(k)[["index", "layer", "kind", "family", "config", "top1_drop", "kl"]].reset_index(drop=True)

    def prune(self, rules: PruneRules) -> LUT:
        """A copy with :attr:`allowed` set by ``rules`` (see :func:`prune`)."""
        return replace(self, allowed=prune(self.configs, self.matrix("top1_drop"), self.matrix("kl"), rules), rules=rules)

    def _require_allowed(self) -> list[Allowed]:
        if self.allowed is None:
            raise HySquantError("the LUT is not pruned yet: call LUT.prune(rules) first")
        return self.allowed

    def ranges(self) -> tuple[np.ndarray, np.ndarray]:
        """Allowed ``(w_min, w_max)`` and ``(a_min, a_max)`` per layer: two (L, 2) int arrays."""
        allowed = self._require_allowed()
        return np.array([a.w for a in allowed]), np.array([a.a for a in allowed])

    def mask(self) -> np.ndarray:
        """(L, 7, 7) bool over w in 2..8 x a in 2..8: the pairs inside each layer's allowed ranges."""
        from hysquant_rl.allocation import box_mask

        w, a = self.ranges()
        return box_mask(w.tolist(), a.tolist())

    def search_space(self) -> tuple[float, float]:
        """log10 of the number of policies before and after pruning (:data:`SPACE_CONVENTION`)."""
        before = self.num_layers * math.log10(N_BITS**2)
        after = sum(math.log10(a.pairs) for a in self._require_allowed())
        return before, after

    # -- files -----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The ``lut.json`` document."""
        doc: dict[str, Any] = {
            "format": FORMAT, "version": VERSION, "complete": True, **self.meta,
            "configs": [list(c) for c in self.configs], "fp32": dict(self.fp32),
            "rows": records(self.frame),
        }
        if self.allowed is not None:
            before, after = self.search_space()
            names = self.layer_names
            doc["prune"] = {
                "rules": self.rules.to_dict() if self.rules else None,
                "log10_space_before": before, "log10_space_after": after, "convention": SPACE_CONVENTION,
                "allowed": [
                    {"index": i, "layer": names[i], "w_min": a.w[0], "w_max": a.w[1], "a_min": a.a[0],
                     "a_max": a.a[1], "reason": a.reason}
                    for i, a in enumerate(self.allowed)
                ],
            }
        return doc

    @classmethod
    def from_dict(cls, doc: Any, source: str = "LUT") -> LUT:
        """Inverse of :meth:`to_dict`; raises :class:`HySquantError` naming ``source`` for a bad document."""
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise HySquantError(f"{source} is not a {FORMAT} document")
        if doc.get("version") != VERSION or not doc.get("complete"):
            raise HySquantError(f"{source} is not a complete version-{VERSION} LUT (version {doc.get('version')!r},"
                                f" complete {doc.get('complete')!r}): build it again with hysquant-lut")
        try:
            frame = pd.DataFrame(doc["rows"], columns=list(COLUMNS))
            prune_doc = doc.get("prune")
            allowed = rules = None
            if prune_doc:
                allowed = [Allowed((r["w_min"], r["w_max"]), (r["a_min"], r["a_max"]), r.get("reason", ""))
                           for r in sorted(prune_doc["allowed"], key=lambda r: r["index"])]
                rules = PruneRules(**prune_doc["rules"]) if prune_doc.get("rules") else None
            meta = {k: v for k, v in doc.items() if k not in ("format", "version", "complete", "configs", "fp32", "rows", "prune")}
            return cls(frame, [tuple(c) for c in doc["configs"]], dict(doc["fp32"]), meta, allowed, rules)
        except (KeyError, TypeError, ValueError) as e:
            raise HySquantError(f"{source} is malformed ({type(e).__name__}: {e})") from None

    @classmethod
    def load(cls, path: str | Path) -> LUT:
        """Read ``lut.json`` (a file, or a run directory holding one)."""
        path = Path(path)
        if path.is_dir():
            path = path / "lut.json"
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise HySquantError(f"cannot read LUT {path}: {e}") from None
        return cls.from_dict(doc, str(path))

    def save(self, out: str | Path) -> dict[str, Path]:
        """Write ``lut.csv`` and ``lut.json`` into the directory ``out``."""
        out = Path(out)
        text = self.frame.to_csv(index=False).encode()
        return {
            "csv": atomic_write(out / "lut.csv", lambda f: f.write(text)),
            "json": save_json(self.to_dict(), out / "lut.json"),
        }

    def write(self, out: str | Path) -> dict[str, Path]:
        """:meth:`save` plus ``lut_heatmap.png`` (top-1 drop and KL per layer x configuration)."""
        from hysquant_rl.report import save_lut_heatmap

        paths = self.save(out)
        paths["heatmap"] = save_lut_heatmap(self, Path(out) / "lut_heatmap.png")
        return paths

    def log_to(self, writer: Any) -> None:
        """Put the LUT into TensorBoard: the most sensitive layers and the pruned ranges as text, the
        search-space sizes as scalars, the heatmap as a figure."""
        from hysquant_rl.report import lut_heatmap_figure

        top = self.most_sensitive(5)
        rows = "\n".join(f"| {r.layer} | {r.kind} | {r.config} | {r.top1_drop:.2f} | {r.kl:.3g} |" for r in top.itertuples())
        writer.add_text("lut/most_sensitive", f"| layer | kind | config | top-1 drop | KL |\n|---|---|---|---|---|\n{rows}")
        if self.allowed is not None:
            before, after = self.search_space()
            writer.add_scalar("lut/log10_space_before", before)
            writer.add_scalar("lut/log10_space_after", after)
            pruned = [f"| {n} | {a.w[0]}..{a.w[1]} | {a.a[0]}..{a.a[1]} | {a.reason} |"
                      for n, a in zip(self.layer_names, self.allowed) if a.reason]
            writer.add_text("lut/pruned", "| layer | w | a | why |\n|---|---|---|---|\n" + "\n".join(pruned or ["| - | | | |"]))
        writer.add_figure("lut/heatmap", lut_heatmap_figure(self))


# -- building ----------------------------------------------------------------------------------------------


def cache_key(cfg: Any, pipe: Any, configs: Sequence[tuple[int, int]]) -> dict[str, Any]:
    """Everything that changes a LUT's numbers: format version; model name, weights SHA-256 and layer
    names; the data config (split sizes, image size, seed; not loader settings); split and its size;
    quantizer settings; configurations; the full device profile with batch size and backend; the eval
    settings (batch size)."""
    from omegaconf import OmegaConf

    data = OmegaConf.to_container(cfg.data, resolve=True)
    evaluation = OmegaConf.to_container(cfg.eval, resolve=True)
    names = "\n".join(pipe.names)
    return {
        "version": VERSION,
        "model": {"name": pipe.spec.name, "weights_sha256": pipe.weights_sha256, "num_layers": len(pipe.names),
                  "layers_sha256": hashlib.sha256(names.encode()).hexdigest()},
        "data": {k: v for k, v in data.items() if k not in _KEY_EXCLUDED_DATA},
        "seed": int(cfg.seed),
        "split": SPLIT,
        "split_size": len(pipe.data.split(SPLIT)),
        "quant": OmegaConf.to_container(cfg.quant, resolve=True),
        "configs": [list(c) for c in configs],
        "hardware": {**pipe.cost.profile.to_dict(), "batch_size": pipe.cost.batch_size, "backend": pipe.cost.backend},
        "eval": {k: v for k, v in evaluation.items() if k not in _KEY_EXCLUDED_EVAL},
    }


def key_sha256(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def cache_path(cfg: Any, pipe: Any, key: dict[str, Any]) -> Path:
    """``{lut.cache_dir}/<model>_<data>_<first 16 hex of the key's SHA-256>.json``."""
    return Path(str(cfg.lut.cache_dir)).expanduser() / f"{pipe.spec.name}_{cfg.data.name}_{key_sha256(key)[:16]}.json"


def _row(pipe: Any, i: int, w: int, a: int, m: dict[str, float], fp32: dict[str, float]) -> dict[str, Any]:
    layer = pipe.layers[i]
    c = pipe.cost.config_cost(i, w, a)
    return {
        "index": i, "layer": layer.name, "kind": layer.kind, "family": layer.family, "config": label(w, a),
        "w_bits": w, "a_bits": a, "top1": m["top1"], "top5": m["top5"],
        "top1_drop": fp32["top1"] - m["top1"], "top5_drop": fp32["top5"] - m["top5"],
        "kl": m["kl"], "loss": m["loss"], "n": int(m["n"]),
        "latency_ms": c.latency_s * 1e3, "energy_mj": c.energy_j * 1e3, "size_bytes": c.size_bytes,
        "bitops": c.bitops, "precision": c.precision, "deployable": c.deployable, "batch_size": c.batch_size,
    }


class _Cache:
    """One LUT cache file: reads measured metrics back (rejecting corrupt or stale files with a warning)
    and writes partial or complete documents atomically."""

    def __init__(self, path: Path, key: dict[str, Any], pipe: Any, configs: list[tuple[int, int]]) -> None:
        self.path, self.key, self.pipe, self.configs = path, key, pipe, configs
        self.problem = ""  # why an existing file was not used ("corrupt ...", "stale ...")

    def read(self) -> tuple[dict[str, float] | None, dict[tuple[int, int, int], dict[str, float]]]:
        """FP32 metrics and measured metrics by (layer, w, a) from the file; nothing if absent or unusable."""
        if not self.path.exists():
            return None, {}
        try:
            doc = json.loads(self.path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as e:
            return self._reject(f"corrupt ({type(e).__name__}: {e})")
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
            return self._reject(f"stale (not a version-{VERSION} {FORMAT} document)")
        if doc.get("key") != self.key:
            changed = sorted(k for k in self.key if not isinstance(doc.get("key"), dict) or doc["key"].get(k) != self.key[k])
            return self._reject(f"stale (its key differs in: {', '.join(changed) or 'format'})")
        try:
            fp32 = {k: float(doc["fp32"][k]) for k in METRICS}
            wanted = {(i, w, a) for i in range(len(self.pipe.layers)) for w, a in self.configs}
            measured = {}
            for r in doc["rows"]:
                i, w, a = int(r["index"]), int(r["w_bits"]), int(r["a_bits"])
                if (w, a) == (FP32_BITS, FP32_BITS):
                    continue
                if (i, w, a) not in wanted or r["layer"] != self.pipe.layers[i].name:
                    raise ValueError(f"unexpected row {r.get('layer')!r} {label(w, a)}")
                m = {k: float(r[k]) for k in METRICS}
                if not all(math.isfinite(v) for v in m.values()):
                    raise ValueError(f"non-finite metrics in row {r['layer']} {label(w, a)}")
                measured[(i, w, a)] = m
        except (KeyError, TypeError, ValueError) as e:
            return self._reject(f"corrupt ({type(e).__name__}: {e})")
        return fp32, measured

    def _reject(self, problem: str) -> tuple[None, dict]:
        self.problem = problem
        log.warning("LUT cache %s is %s: rebuilding it", self.path, problem)
        return None, {}

    def write(self, doc: dict[str, Any]) -> None:
        save_json(doc, self.path)

    def partial(self, fp32: dict[str, float], measured: dict[tuple[int, int, int], dict[str, float]], meta: dict[str, Any]) -> dict[str, Any]:
        rows = [_row(self.pipe, i, w, a, m, fp32) for (i, w, a), m in sorted(measured.items())]
        return {"format": FORMAT, "version": VERSION, "complete": False, **meta,
                "configs": [list(c) for c in self.configs], "fp32": fp32, "rows": rows}


def assemble(pipe: Any, configs: list[tuple[int, int]], fp32: dict[str, float],
             measured: dict[tuple[int, int, int], dict[str, float]], meta: dict[str, Any]) -> LUT:
    """The full table from measured metrics: FP32 row then each configuration, per layer."""
    rows = []
    for i in range(len(pipe.layers)):
        rows.append(_row(pipe, i, FP32_BITS, FP32_BITS, fp32, fp32))
        rows += [_row(pipe, i, w, a, measured[(i, w, a)], fp32) for w, a in configs]
    return LUT(pd.DataFrame(rows, columns=list(COLUMNS)), configs, fp32, meta)


def _checked(s: Any) -> tuple[list[tuple[int, int]], PruneRules, int, int]:
    """The LUT settings of a run config, validated: configs, rules, workers, save_every."""
    configs = parse_configs(s.lut.configs)
    rules = PruneRules.from_cfg(s.prune)
    workers, save_every = s.lut.workers, s.lut.save_every
    for name, v in (("lut.workers", workers), ("lut.save_every", save_every)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise HySquantError(f"{name}={v!r} must be a positive integer")
    return configs, rules, workers, save_every


def build_lut(
    cfg: Any,
    pipe: Any,
    executor: Executor | None = None,
    on_result: Callable[[Result], None] | None = None,
) -> LUT:
    """The pruned LUT of ``pipe`` for ``cfg`` (defaults from ``conf/lut.yaml``), from the cache when it
    holds it, else by running the missing (layer, configuration) jobs on ``executor`` (default: the one
    ``lut.workers`` / ``ray.address`` ask for, closed afterwards) and caching the result.

    ``on_result`` is called after each job's result is recorded (progress hooks; an exception raised there
    stops the build after saving what is done). ``lut.meta["cache"]`` tells what happened: ``status`` (hit,
    miss, resumed, rebuilt, off), ``path``, ``reused`` and ``evaluated`` job counts.
    """
    from tqdm import tqdm

    s = cfg
    configs, rules, workers, save_every = _checked(s)
    key = cache_key(s, pipe, configs)
    cache = _Cache(cache_path(s, pipe, key), key, pipe, configs)
    fp32, measured = cache.read() if s.lut.cache else (None, {})
    jobs = [(i, w, a) for i in range(len(pipe.layers)) for w, a in configs if (i, w, a) not in measured]
    reused = len(measured)
    if not s.lut.cache:
        status = "off"
    elif not jobs:
        status = "hit"
    else:
        status = "resumed" if reused else "rebuilt" if cache.problem else "miss"
    meta: dict[str, Any] = {
        "key": key, "key_sha256": key_sha256(key),
        "model": {"name": pipe.spec.name, "weights_sha256": pipe.weights_sha256, "num_layers": len(pipe.layers)},
        "split": SPLIT, "device": {"name": pipe.cost.device, "backend": pipe.cost.backend, "batch_size": pipe.cost.batch_size},
    }
    start = time.perf_counter()
    evaluated = 0
    if jobs:
        log.info("LUT: %d of %d jobs to run (%d cached) on %d worker(s)", len(jobs), len(jobs) + reused, reused, workers)
        if fp32 is None:
            fp32 = pipe.evaluator.evaluate([(FP32_BITS, FP32_BITS)] * len(pipe.layers), SPLIT).to_dict()
        own = executor is None
        unsaved, finished = 0, False
        try:
            if own:
                executor = make_executor(s, workers, pipe)
            fp = [(FP32_BITS, FP32_BITS)] * len(pipe.layers)
            todo = (Job(fp[:i] + [(w, a)] + fp[i + 1:], SPLIT, (i, w, a)) for i, w, a in jobs)
            with tqdm(total=len(jobs), desc="LUT", unit="job", disable=None) as bar:
                for result in executor.map(todo):
                    measured[result.job.tag] = result.metrics.to_dict()
                    evaluated += 1
                    unsaved += 1
                    if unsaved >= save_every:
                        cache.write(cache.partial(fp32, measured, meta))
                        unsaved = 0
                    bar.update()
                    if on_result is not None:
                        on_result(result)
            finished = True
        finally:
            if not finished and unsaved:  # stopped early (error, Ctrl-C): keep what is done
                cache.write(cache.partial(fp32, measured, meta))
                log.warning("LUT build stopped after %d of %d jobs; %s keeps them for the next run",
                            len(measured), len(jobs) + reused, cache.path)
            if own and executor is not None:
                executor.close()
    meta["build"] = {"evaluated": evaluated, "reused": reused, "wall_s": time.perf_counter() - start,
                     "workers": executor.workers if executor is not None else workers}
    lut = assemble(pipe, configs, fp32, measured, meta).prune(rules)
    if jobs or not s.lut.cache:
        cache.write(lut.to_dict())
    lut.meta["cache"] = {"status": status, "path": str(cache.path), "reused": reused, "evaluated": evaluated,
                         "problem": cache.problem}
    return lut


# -- the app -----------------------------------------------------------------------------------------------


def log_summary(lut: LUT) -> None:
    """Log the cache outcome, the table's size, the five most sensitive layers and the search-space size."""
    c, b = lut.meta["cache"], lut.meta["build"]
    log.info("LUT cache %s: %s (%d jobs reused, %d evaluated in %.1f s on %d worker(s))",
             c["status"], c["path"], c["reused"], c["evaluated"], b["wall_s"], b["workers"])
    log.info("LUT: %d layers x %d configurations (%s) + FP32 = %d rows on %s (%d images, FP32 top-1 %.2f %%)",
             lut.num_layers, len(lut.configs), ", ".join(lut.labels), len(lut.frame), SPLIT, int(lut.fp32["n"]),
             lut.fp32["top1"])
    top = lut.most_sensitive(5)
    log.info("five most sensitive layers (worst configuration):\n%s", "\n".join(
        f"  {r.index:3d} {r.layer:<40s} {r.kind:<15s} {r.config:<5s} top-1 drop {r.top1_drop:6.2f}  KL {r.kl:.4g}"
        for r in top.itertuples()))
    before, after = lut.search_space()
    pruned = sum(bool(a.reason) for a in lut.allowed)
    log.info("search space: 10^%.1f policies before pruning, 10^%.1f after (%d of %d layers pruned; %s)",
             before, after, pruned, lut.num_layers, SPACE_CONVENTION)


def run_lut(cfg: Any, run_dir: Path) -> LUT:
    """``hysquant-lut``: build (or load) the LUT, prune it, write ``lut.csv``, ``lut.json`` and
    ``lut_heatmap.png`` into ``run_dir`` and log what matters."""
    from hysquant_rl.hardware import load_profile

    _checked(cfg)  # bad settings fail here, before minutes of model and data preparation
    load_profile(cfg.hardware)
    from hysquant_rl.pipeline import build

    pipe = build(cfg)
    lut = build_lut(cfg, pipe)
    log_summary(lut)
    paths = lut.write(run_dir)
    log.info("written: %s", ", ".join(str(p) for p in paths.values()))
    return lut
