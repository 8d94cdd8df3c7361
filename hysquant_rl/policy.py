"""QuantPolicy: the versioned JSON file that says which (w_bits, a_bits) every quantizable layer gets.

On disk (UTF-8 JSON, written atomically)::

    {
      "format": "hysquant-policy",
      "version": 2,
      "model": {"name": "mobilevit_xxs", "weights_sha256": "<64 hex>", "num_layers": 111},
      "layers": [{"name": "stem.conv", "kind": "conv", "w_bits": 8, "a_bits": 8}, ...,     # forward order: every unit
                 {"name": "stages.2.1.transformer.0.attn.qk", "kind": "attention-qk", "w_bits": null, "a_bits": 6}],
      "metrics": {...},      # free-form, e.g. {"search_val": {"top1": 87.1}, "test": {...}, "latency_ms": 1.2}
      "budgets": {...},      # free-form, e.g. {"latency_ms": 1.5}
      "provenance": {"method": "ddpg", "seed": 0, "episodes": 300, "wall_time_s": 383.0,
                     "git_commit": "<40 hex>" | null, "created": "<ISO 8601 UTC>", "hysquant_rl": "0.1.0"}
    }

Bits are integers 2..8, or 32 for FP32 (that unit is not quantized). Activation-only units
(:data:`hysquant_rl.units.ACTIVATION_KINDS`) have ``"w_bits": null``. A policy is bound to one model's weights
through ``weights_sha256``; :func:`validate` checks a policy against a model before it is applied.

Version 1 (before activation-only units existed) still loads: :func:`complete` adds the model's activation-only
units at FP32, which is what a version-1 policy meant.
"""

from __future__ import annotations

import json
import operator
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hysquant_rl.bits import FP32_BITS, RANGE_TEXT, check_bits
from hysquant_rl.errors import HySquantError
from hysquant_rl.io import UnsafeFile, loads_json, read_regular, save_json
from hysquant_rl.provenance import git_commit, package_version
from hysquant_rl.units import ACTIVATION_KINDS

FORMAT = "hysquant-policy"
VERSION = 2
READS = (1, 2)  # format versions this code reads
_LAYER_KEYS = ("name", "kind", "w_bits", "a_bits")
_MODEL_KEYS = ("name", "weights_sha256", "num_layers")
_MAX_LISTED = 8  # names listed per problem in a validation message; the rest are counted
_MAX_DEPTH = 64  # JSON nesting a policy file may have (a policy nests about 5 levels)


# -- file helpers --------------------------------------------------------------------------------------
def _jsonable(obj: Any) -> Any:
    """``json.dumps`` fallback: numpy/torch scalars and arrays become numbers and lists, paths strings."""
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON-serializable")


def to_json_types(obj: Any, what: str) -> Any:
    """A copy of ``obj`` made only of JSON types (dict, list, str, int, float, bool, None); numpy/torch
    values become numbers or lists. Raises HySquantError naming ``what`` if that is impossible."""
    try:
        return json.loads(json.dumps(obj, default=_jsonable))
    except (TypeError, ValueError) as e:
        raise HySquantError(f"{what} cannot be written as JSON ({e}): pass numbers, strings, lists and dicts") from None


def _to_bits(value: Any, what: str) -> int:
    """An exact integer bit-width (numpy ints accepted, floats and bools not) that passes check_bits."""
    if isinstance(value, bool):
        return check_bits(value, what)  # raises: True is not a bit-width
    try:
        return check_bits(operator.index(value), what)
    except TypeError:
        return check_bits(value, what)  # raises with the offending value in the message


# -- the policy ----------------------------------------------------------------------------------------
@dataclass
class QuantPolicy:
    """A per-layer bit-width policy for one model's weights. See the module docstring for the file format.

    Attributes:
        model: ``{"name": timm name, "weights_sha256": 64 hex, "num_layers": int}``.
        layers: ``[{"name", "kind", "w_bits", "a_bits"}, ...]`` in forward order; bits 2..8, 32 = FP32; ``w_bits``
            None for activation-only units.
        metrics: free-form results (accuracies in %, latency in ms, ...), JSON types only.
        budgets: free-form budgets the policy was searched under.
        provenance: ``{"method", "seed", "episodes", "wall_time_s", "git_commit", "created", "hysquant_rl"}``
            plus any extra keys the caller gave.
    """

    model: dict[str, Any]
    units: list[dict[str, Any]]
    metrics: dict[str, Any] = field(default_factory=dict)
    budgets: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    version: int = VERSION  # the format version it was read from

    # -- constructors ----------------------------------------------------------------------------------
    @classmethod
    def from_bits(
        cls,
        units: Sequence[Any],
        bits: Sequence[tuple[int, int]],
        model_name: str,
        weights_sha256: str,
        *,
        metrics: dict[str, Any] | None = None,
        budgets: dict[str, Any] | None = None,
        method: str | None = None,
        seed: int | None = None,
        episodes: int | None = None,
        wall_time_s: float | None = None,
        **provenance: Any,
    ) -> QuantPolicy:
        """Policy giving ``bits[i] = (w_bits, a_bits)`` to ``layers[i]`` (UnitInfo-like: ``.name``, ``.kind``,
        forward order; an activation-only unit's ``w_bits`` is written as null). Extra keyword arguments are
        stored in ``provenance``. Raises HySquantError on a length mismatch or a bit-width outside 2..8 or 32."""
        if len(bits) != len(units):
            raise HySquantError(
                f"policy has {len(bits)} (w_bits, a_bits) pairs for {len(units)} layers: give one per layer"
            )
        entries = [
            {
                "name": unit.name,
                "kind": unit.kind,
                "w_bits": None if unit.kind in ACTIVATION_KINDS else _to_bits(w, f"layer {unit.name} weight bit-width"),
                "a_bits": _to_bits(a, f"layer {unit.name} activation bit-width"),
            }
            for unit, (w, a) in zip(units, bits)
        ]
        prov = {
            "method": method,
            "seed": seed,
            "episodes": episodes,
            "wall_time_s": wall_time_s,
            "git_commit": git_commit(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "hysquant_rl": package_version(),
            **provenance,
        }
        return cls(
            model={"name": model_name, "weights_sha256": weights_sha256, "num_layers": len(entries)},
            units=entries,
            metrics=to_json_types(metrics or {}, "policy metrics"),
            budgets=to_json_types(budgets or {}, "policy budgets"),
            provenance=to_json_types(prov, "policy provenance"),
        )

    @classmethod
    def uniform(
        cls, units: Sequence[Any], w_bits: int, a_bits: int, model_name: str, weights_sha256: str, **meta: Any
    ) -> QuantPolicy:
        """The same (w_bits, a_bits) on every layer; ``meta`` as in :meth:`from_bits` (method defaults to
        ``"uniform"``)."""
        meta.setdefault("method", "uniform")
        return cls.from_bits(units, [(w_bits, a_bits)] * len(units), model_name, weights_sha256, **meta)

    # -- accessors -------------------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        return self.model["name"]

    @property
    def names(self) -> list[str]:
        """Layer names in the policy's (forward) order."""
        return [entry["name"] for entry in self.units]

    def bits(self) -> list[tuple[int, int]]:
        """(w_bits, a_bits) per unit, in the policy's order; feed to ``QuantModel.apply_bits`` after
        :func:`validate` has confirmed that order is the model's forward order. An activation-only unit's null
        ``w_bits`` reads as its ``a_bits`` (the search's canonical form: see ``SearchProblem.canonical``)."""
        return [(e["a_bits"] if e["w_bits"] is None else e["w_bits"], e["a_bits"]) for e in self.units]

    # -- (de)serialization -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The JSON document (JSON types only), top-level keys in file order."""
        return to_json_types(
            {
                "format": FORMAT,
                "version": VERSION,
                "model": self.model,
                "layers": self.units,
                "metrics": self.metrics,
                "budgets": self.budgets,
                "provenance": self.provenance,
            },
            "policy",
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Write the policy as indented JSON, atomically; returns the path."""
        return save_json(self.to_dict(), path)

    @classmethod
    def from_dict(cls, doc: Any, source: str = "policy") -> QuantPolicy:
        """Check the document's structure (format, version, required keys and types) and build the policy.
        Bit ranges and the fit to a model are :func:`validate`'s job. ``source`` names it in errors."""

        def bad(problem: str) -> HySquantError:
            return HySquantError(
                f"{source} is not a valid HySquant policy: {problem}: fix the file or re-run the search that wrote it"
            )

        if not isinstance(doc, dict):
            raise bad(f"expected a JSON object, got {type(doc).__name__}")
        if doc.get("format") != FORMAT:
            raise HySquantError(
                f"{source} is not a HySquant policy (format={doc.get('format')!r}, expected {FORMAT!r}): "
                "pass a best_policy.json written by hysquant, or a uniform spec such as policy=W8A8"
            )
        if doc.get("version") not in READS:
            raise HySquantError(
                f"{source} has policy format version {doc.get('version')!r}, this hysquant-rl {package_version()}"
                f" reads versions {', '.join(map(str, READS))}: use the hysquant-rl version that wrote it, or re-run"
                " the search"
            )
        model = doc.get("model")
        if not isinstance(model, dict) or any(k not in model for k in _MODEL_KEYS):
            raise bad(f"'model' must be an object with keys {', '.join(_MODEL_KEYS)}")
        units = doc.get("layers")
        if not isinstance(units, list):
            raise bad("'layers' must be a list")
        for i, entry in enumerate(units):
            if not isinstance(entry, dict) or any(k not in entry for k in _LAYER_KEYS):
                raise bad(f"layers[{i}] must be an object with keys {', '.join(_LAYER_KEYS)}")
            if not isinstance(entry["name"], str):
                raise bad(f"layers[{i}].name must be a string")
        extras = {}
        for key in ("metrics", "budgets", "provenance"):
            value = doc.get(key, {})
            if not isinstance(value, dict):
                raise bad(f"'{key}' must be an object")
            extras[key] = value
        return cls(model=dict(model), units=[dict(e) for e in units], **extras, version=doc["version"])

    @classmethod
    def load(cls, path: str | os.PathLike) -> QuantPolicy:
        """Read a policy file. Raises HySquantError naming the file for: missing/unreadable file, invalid
        JSON, another format, another format version, missing keys."""
        path = Path(path)
        try:  # a link the user made is followed; a FIFO, a device or a file beyond any policy's size is refused
            text = read_regular(path, "settings", follow=True).decode("utf-8")
        except FileNotFoundError:
            raise HySquantError(
                f"policy file {path} does not exist: pass the best_policy.json of a search run, "
                "or a uniform spec such as policy=W8A8"
            ) from None
        except UnsafeFile as e:
            raise HySquantError(
                f"policy file {path} is {e.problem}: pass the best_policy.json of a search run (a regular JSON file)"
            ) from None
        except (OSError, UnicodeDecodeError) as e:
            raise HySquantError(f"cannot read policy file {path} ({e}): pass a readable UTF-8 JSON file") from None
        too_deep = HySquantError(
            f"policy file {path} nests JSON more than {_MAX_DEPTH} levels deep, which no policy does: fix the file or"
            " re-run the search that wrote it"
        )
        try:
            doc = loads_json(text)
        except json.JSONDecodeError as e:
            raise HySquantError(
                f"policy file {path} is not valid JSON (line {e.lineno} column {e.colno}: {e.msg}): "
                "fix the file or re-run the search that wrote it"
            ) from None
        except ValueError as e:  # NaN, Infinity
            raise HySquantError(
                f"policy file {path} is not valid JSON ({e}): fix the file or re-run the search that wrote it"
            ) from None
        except RecursionError:
            raise too_deep from None
        stack = [(doc, 1)]  # iteratively: later code that walks the document recursively must not meet a deep one
        while stack:
            value, depth = stack.pop()
            if depth > _MAX_DEPTH:
                raise too_deep
            children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
            stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
        return cls.from_dict(doc, source=f"policy file {path}")


# -- validation ----------------------------------------------------------------------------------------
def complete(policy: QuantPolicy, units: Sequence[Any]) -> QuantPolicy:
    """``policy`` as a current-version policy for the model's units ``layers`` (UnitInfo-like: ``.name``,
    ``.kind``; forward order): a version-1 policy gets the activation-only units it does not list, at FP32, in
    forward order (what it meant: before those units existed, they ran in float). Other policies unchanged."""
    if policy.version != 1:
        return policy
    listed = {e["name"]: e for e in policy.units}
    entries, added = [], 0
    for unit in units:
        if unit.name in listed:
            entries.append(listed.pop(unit.name))
        elif unit.kind in ACTIVATION_KINDS:
            entries.append({"name": unit.name, "kind": unit.kind, "w_bits": None, "a_bits": FP32_BITS})
            added += 1
    entries += listed.values()  # names the model does not have: validate reports them
    if not added:
        return policy
    model = {**policy.model, "num_layers": policy.model.get("num_layers", 0) + added}
    return QuantPolicy(model, entries, policy.metrics, policy.budgets, policy.provenance, VERSION)


def _listed(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f", ... {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else "")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def validate(policy: QuantPolicy, units: Sequence[Any], model_name: str, weights_sha256: str) -> None:
    """Check that ``policy`` fits the model whose quantizable ``layers`` (UnitInfo-like: ``.name``,
    ``.kind``; forward order), timm name and weights hash are given.

    Raises one HySquantError listing every problem on one line, separated by '; ': other model name,
    other weights, layer count, unknown / missing / duplicated layers, layers out of forward order, bits
    outside 2..8 or 32 (or not integers), a layer of another kind than the model's.
    """
    problems: list[str] = []
    declared = policy.model.get("name")
    if declared != model_name:
        problems.append(
            f"made for model {declared} (this is {model_name}): "
            f"pass model={declared} or a policy searched for {model_name}"
        )
    theirs = str(policy.model.get("weights_sha256"))
    if theirs != weights_sha256:
        problems.append(
            f"made for other weights (sha256 {theirs[:12]}... != {weights_sha256[:12]}...): "
            "re-run the search for these weights or pass the checkpoint it was made for"
        )

    names = policy.names
    model_names = [unit.name for unit in units]
    if len(names) != len(model_names):
        problems.append(f"{len(names)} layers in the policy, {len(model_names)} in the model")
    if policy.model.get("num_layers") != len(names):
        problems.append(f"header says num_layers={policy.model.get('num_layers')!r} but {len(names)} layers are listed")
    known = set(model_names)
    listed = set(names)
    unknown = [n for n in names if n not in known]
    missing = [n for n in model_names if n not in listed]
    duplicated = [n for n, count in Counter(names).items() if count > 1]
    if unknown:
        problems.append(f"{_plural(len(unknown), 'unknown layer')} ({_listed(unknown)})")
    if missing:
        problems.append(f"{_plural(len(missing), 'missing layer')} ({_listed(missing)})")
    if duplicated:
        problems.append(f"{_plural(len(duplicated), 'duplicated layer')} ({_listed(duplicated)})")
    if not (unknown or missing or duplicated) and names != model_names:
        # bits() is positional, so an order that differs from the model's would misapply every pair.
        i = next(i for i, (a, b) in enumerate(zip(names, model_names)) if a != b)
        problems.append(
            f"layers out of forward order (position {i} is {names[i]}, the model runs {model_names[i]} there)"
        )

    for entry in policy.units:
        for key in ("w_bits", "a_bits"):
            if key == "w_bits" and entry[key] is None and entry["kind"] in ACTIVATION_KINDS:
                continue
            try:
                _to_bits(entry[key], key)
            except HySquantError:
                problems.append(f"layer {entry['name']} {key}={entry[key]!r} out of range ({RANGE_TEXT})")

    kinds = {unit.name: unit.kind for unit in units}
    changed = [
        f"{e['name']} ({e['kind']} -> {kinds[e['name']]})"
        for e in policy.units
        if e["name"] in kinds and e["kind"] != kinds[e["name"]]
    ]
    if changed:  # the same name on another kind of layer: the policy was made for another architecture
        problems.append(f"{_plural(len(changed), 'layer')} of another kind ({_listed(changed)})")

    if problems:
        raise HySquantError(f"policy does not fit model {model_name}: " + "; ".join(problems))
