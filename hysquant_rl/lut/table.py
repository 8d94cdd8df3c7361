"""The sensitivity lookup table (LUT, paper section 3.2, figures 3-4): its rows, queries and its one document.

For every quantizable unit and every configuration ``(w_bits, a_bits)`` of ``lut.configs`` the unit is
quantized alone (every other unit FP32) and measured on search-val: top-1, top-5 (%), their drops from FP32
(points), logit KL to FP32 and cross-entropy (nats). Each row is priced by the cost model as that layer in a
uniform chain at that configuration (:meth:`CostModel.config_cost`): latency (ms) and energy (mJ) per
inference of ``batch_size`` images, size (bytes), BitOps per image, compute precision, deployability. One
FP32 row per layer (drops 0, priced at the float precision) completes the table. An activation-only unit
(``attention-qk``, ``attention-pv``, ``layernorm-in``) is measured once per distinct activation width of the
configurations, and that measurement fills each configuration with that width (W4A8 and W8A8 hold the same A8
numbers: the unit has no weight).

The ``lut.json`` document (``FORMAT``/``VERSION`` below) is written by :func:`document` and read by
:func:`read_document` only: the run directory's copy, the cache file and a partial build's cache file are the
same document (``complete`` false for a partial one). ``lut.csv`` holds the rows alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hysquant_rl.bits import FP32_LABEL, MAX_BITS, MIN_BITS, label
from hysquant_rl.errors import HySquantError
from hysquant_rl.io import UnsafeFile, atomic_write, read_json, records, save_json
from hysquant_rl.prune import SPACE_CONVENTION, Allowed, PruneRules, box_mask, prune
from hysquant_rl.units import ACTIVATION_KINDS

FORMAT = "hysquant-lut"
VERSION = 2  # bump when rows or the key change meaning: older caches then read as stale
SPLIT = "search_val"  # what every LUT row is measured on (the search optimises the same split)
METRICS = ("top1", "top5", "kl", "loss", "n")
COLUMNS = (
    "index",
    "unit",
    "kind",
    "family",
    "config",
    "w_bits",
    "a_bits",
    "top1",
    "top5",
    "top1_drop",
    "top5_drop",
    "kl",
    "loss",
    "n",
    "latency_ms",
    "energy_mj",
    "size_bytes",
    "bitops",
    "precision",
    "deployable",
    "batch_size",
)
_DOC_KEYS = ("format", "version", "complete", "configs", "fp32", "rows", "prune")


def document(
    configs: Sequence[tuple[int, int]],
    fp32: dict[str, float],
    rows: list[dict[str, Any]],
    meta: dict[str, Any],
    complete: bool = True,
    prune_doc: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``lut.json`` document: format header, ``meta`` (key, model, device, build facts), the configurations,
    FP32 metrics, the rows and, once pruned, the pruning result."""
    doc: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "complete": complete,
        **meta,
        "configs": [list(c) for c in configs],
        "fp32": dict(fp32),
        "rows": rows,
    }
    if prune_doc is not None:
        doc["prune"] = prune_doc
    return doc


def read_document(path: Path) -> dict[str, Any]:
    """A ``lut.json`` document from ``path``, checked for this format and version (complete or partial).
    Raises :class:`HySquantError` saying whether the file is unreadable (``corrupt``: a link, a FIFO or a device, a
    document over the size of any LUT, invalid JSON, NaN or Infinity; :func:`hysquant_rl.io.read_json`) or another
    format or version (``stale``)."""
    try:
        doc = read_json(path, "json")
    except UnsafeFile as e:
        raise HySquantError(f"corrupt ({e.problem})") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise HySquantError(f"corrupt ({type(e).__name__}: {e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise HySquantError(f"stale (not a version-{VERSION} {FORMAT} document)")
    return doc


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
    space: np.ndarray | None = None  # (L, GRID, GRID) cells of the search space it was built for; None: simulated

    def __post_init__(self) -> None:
        self.configs = [(int(w), int(a)) for w, a in self.configs]
        self._matrices: dict[str, np.ndarray] = {}
        # quantized rows in (layer, configuration) order, so that any column reshapes to (L, C)
        position = {label(*c): j for j, c in enumerate(self.configs)}
        q = self.frame[self.frame["config"] != FP32_LABEL]
        q = q.assign(_pos=q["config"].map(position)).sort_values(["index", "_pos"], kind="stable")
        units = int(self.frame["index"].nunique())
        if (
            q["_pos"].isna().any()
            or len(q) != units * len(self.configs)
            or (q["_pos"].to_numpy().reshape(units, -1) != np.arange(len(self.configs))).any()
        ):
            raise HySquantError(f"the LUT rows are not one per layer x configuration ({units} x {', '.join(position)})")
        self._quantized = q.drop(columns="_pos")

    # -- shape -----------------------------------------------------------------------------------------
    @property
    def unit_names(self) -> list[str]:
        """Layer names in forward order."""
        return self.frame.drop_duplicates("index").sort_values("index")["unit"].tolist()

    @property
    def num_units(self) -> int:
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
            values = self._quantized[column].to_numpy(dtype=np.float64).reshape(self.num_units, len(self.configs))
            values.flags.writeable = False  # shared by every caller
            self._matrices[column] = values
        return self._matrices[column]

    # -- queries ---------------------------------------------------------------------------------------
    def most_sensitive(self, k: int = 5) -> pd.DataFrame:
        """The ``k`` layers whose worst configuration drops top-1 most (ties broken by KL), one row each:
        index, layer, kind, family, config (the worst), top1_drop, kl."""
        q = self._quantized.sort_values(["top1_drop", "kl"], ascending=False, kind="stable")
        worst = q.drop_duplicates("index")
        return worst.head(k)[["index", "unit", "kind", "family", "config", "top1_drop", "kl"]].reset_index(drop=True)

    def prune(self, rules: PruneRules) -> LUT:
        """A copy with :attr:`allowed` set by ``rules`` (see :func:`prune`)."""
        kinds = self.frame.drop_duplicates("index").sort_values("index")["kind"]
        weighted = [kind not in ACTIVATION_KINDS for kind in kinds]
        allowed = prune(self.configs, self.matrix("top1_drop"), self.matrix("kl"), rules, weighted)
        return replace(self, allowed=allowed, rules=rules)

    def _require_allowed(self) -> list[Allowed]:
        if self.allowed is None:
            raise HySquantError("the LUT is not pruned yet: call LUT.prune(rules) first")
        return self.allowed

    def ranges(self) -> tuple[np.ndarray, np.ndarray]:
        """Allowed ``(w_min, w_max)`` and ``(a_min, a_max)`` per layer: two (L, 2) int arrays."""
        allowed = self._require_allowed()
        return np.array([a.w for a in allowed]), np.array([a.a for a in allowed])

    def mask(self) -> np.ndarray:
        """(L, GRID, GRID) bool over the grid (bits 2..8 and FP32 per operand): the cells of each unit's allowed integer
        ranges, FP32 on either operand, inside the search space :attr:`space` when set (an executable space)."""
        w, a = self.ranges()
        mask = box_mask(w.tolist(), a.tolist(), [x.weighted for x in self._require_allowed()])
        return mask if self.space is None else mask & self.space

    def search_space(self) -> tuple[float, float]:
        """log10 of the number of policies before and after pruning (:data:`SPACE_CONVENTION`)."""
        allowed = self._require_allowed()
        whole = [(MIN_BITS, MAX_BITS)] * len(allowed)  # every integer bit-width, FP32 added by box_mask
        before = box_mask(whole, whole, [x.weighted for x in allowed])
        if self.space is not None:
            before &= self.space
        counts = (before.sum(axis=(1, 2)), self.mask().sum(axis=(1, 2)))
        return tuple(float(np.log10(np.maximum(c, 1)).sum()) for c in counts)

    # -- the document ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The ``lut.json`` document (:func:`document`)."""
        prune_doc = None
        if self.allowed is not None:
            before, after = self.search_space()
            names = self.unit_names
            prune_doc = {
                "rules": self.rules.to_dict() if self.rules else None,
                "log10_space_before": before,
                "log10_space_after": after,
                "convention": SPACE_CONVENTION,
                "allowed": [
                    {
                        "index": i,
                        "unit": names[i],
                        "w_min": a.w[0],
                        "w_max": a.w[1],
                        "a_min": a.a[0],
                        "a_max": a.a[1],
                        "reason": a.reason,
                        "weighted": a.weighted,
                    }
                    for i, a in enumerate(self.allowed)
                ],
            }
        return document(self.configs, self.fp32, records(self.frame), self.meta, prune_doc=prune_doc)

    @classmethod
    def from_dict(cls, doc: dict[str, Any], source: str = "LUT") -> LUT:
        """Inverse of :meth:`to_dict` for a document :func:`read_document` accepted; raises
        :class:`HySquantError` naming ``source`` for a partial or malformed one."""
        if not doc.get("complete"):
            raise HySquantError(f"{source} is a partial LUT (an interrupted build): build it again with hysquant-lut")
        try:
            frame = pd.DataFrame(doc["rows"], columns=list(COLUMNS))
            prune_doc = doc.get("prune")
            allowed = rules = None
            if prune_doc:
                allowed = [
                    Allowed(
                        (r["w_min"], r["w_max"]), (r["a_min"], r["a_max"]), r.get("reason", ""), r.get("weighted", True)
                    )
                    for r in sorted(prune_doc["allowed"], key=lambda r: r["index"])
                ]
                rules = PruneRules(**prune_doc["rules"]) if prune_doc.get("rules") else None
            meta = {k: v for k, v in doc.items() if k not in _DOC_KEYS}
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
            doc = read_document(path)
        except HySquantError as e:
            raise HySquantError(f"cannot read LUT {path}: it is {e}: build it again with hysquant-lut") from None
        return cls.from_dict(doc, str(path))

    def save(self, out: str | Path) -> dict[str, Path]:
        """Write ``lut.csv`` and ``lut.json`` into the directory ``out``."""
        out = Path(out)
        text = self.frame.to_csv(index=False).encode()
        return {
            "csv": atomic_write(out / "lut.csv", lambda f: f.write(text)),
            "json": save_json(self.to_dict(), out / "lut.json"),
        }
