"""Write a quantized model to disk, and load it back bit-identically.

:func:`export_quantized` writes two ``torch.save`` files (dicts of tensors and JSON types only, so both load
with ``torch.load(..., weights_only=True)``) into one directory, each atomically:

``model_fakequant.pt`` (format ``"hysquant-fakequant"``, version 2) — for any PyTorch user::

    {"format", "version",
     "spec":       the model build spec, e.g. {"name": "mobilevit_xxs", "num_classes": 10, "in_chans": 1},
     "policy":     QuantPolicy.to_dict(),
     "weight_granularity": "tensor" | "channel",
     "act_granularity": "tensor" | "channel",  (layernorm-in units)
     "softmax":    "uniform" | "log2",  (levels of the attention probabilities)
     "state_dict": the model's state dict, each quantized layer's weight replaced by its dequantized value
                   (eq. 6): ``model.load_state_dict(ckpt["state_dict"])`` gives the weight-only fake-quant model,
     "act_qparams": {layer: {"bits", "scale": Delta (float32, 0-d), "zero_point": Z (int32, 0-d)}} for every
                   layer with quantized input activations; a plain state dict cannot express those, so to
                   reproduce them quantize each layer's input with eq. 2-6 (or use load_quantized on the int file);
                   an activation-only unit's entry is {"bits", "operands": {operand: {"levels", "scale",
                   "zero_point"}}} (operands: "q", "k" / "p", "v" / "input"; scale and zero point None for
                   log2 levels, whose codes are round(-log2 x))}

``model_int.pt`` (format ``"hysquant-int"``, version 2) — the integer model::

    {"format", "version", "spec", "policy", "weight_granularity", "act_granularity", "softmax",
     "state_dict": every state-dict tensor except the weights stored as integer codes below (as they were),
     "layers": {layer name (every policy layer, forward order): {
         "w_bits", "a_bits":   int, 2..8 or 32 (FP32),
         "w_int":              uint8 codes q in [0, 2^w_bits - 1], the weight's shape (one code per byte,
                               not bit-packed) | None when w_bits == 32 (the weight is then in state_dict),
         "w_scale":            Delta, float32, 0-d (per tensor) or (C_out, 1, ...) (per channel) | None,
         "w_zero_point":       Z, int32, same shape as w_scale | None,
         "a_scale", "a_zero_point": Delta (float32, 0-d), Z (int32, 0-d) of the input activation | None
                               when a_bits == 32,
         "a_min", "a_max":     calibrated input range (float32, 0-d) | None when never calibrated}
         activation-only unit (``attention-qk``, ``attention-pv``, ``layernorm-in``): {
         "w_bits": None, "a_bits",
         "operands": {operand: {"levels": "uniform" | "log2",
                                "a_scale", "a_zero_point": as above (per channel (C,) for a per-channel
                                                           layernorm-in) | None at FP32 or with log2 levels,
                                "a_min", "a_max": the calibrated range | None}}}}}

Dequantized weight = (w_int - w_zero_point) * w_scale (eq. 6); a layer's input is fake-quantized with
(a_scale, a_zero_point) at a_bits before the layer runs, and so is each operand of an activation-only unit.
Version-1 files (no activation-only units) still load.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hysquant_rl.bits import FP32_BITS
from hysquant_rl.errors import HySquantError
from hysquant_rl.io import save_torch
from hysquant_rl.policy import QuantPolicy, to_json_types
from hysquant_rl.quant.model import ActivationQuant, QuantMixin, QuantModel, Unit
from hysquant_rl.quant.quantizer import dequantize

FAKEQUANT_FILE = "model_fakequant.pt"
INT_FILE = "model_int.pt"
FAKEQUANT_FORMAT = "hysquant-fakequant"
INT_FORMAT = "hysquant-int"
VERSION = 2
READS = (1, 2)


def _granularity(qmodel: QuantModel) -> str:
    flags = {unit.per_channel for unit in qmodel.units if isinstance(unit, QuantMixin)}
    if len(flags) > 1:  # a layer wrapped earlier by another QuantModel keeps its own setting
        raise HySquantError(
            "the model mixes per-tensor and per-channel weight quantization: wrap it once, with one weight_granularity"
        )
    return "channel" if flags == {True} else "tensor"


def _int32(zero: torch.Tensor) -> torch.Tensor:
    """Z as int32; exact, since qparams makes Z integer-valued (checked, as |Z| could exceed int32)."""
    z = zero.to(torch.int32)
    if not torch.equal(z.to(zero.dtype), zero):
        raise HySquantError(
            "a zero point does not fit int32 (a range far from 0 and very narrow): use more bits or FP32 for that layer"
        )
    return z


def check_ready(qmodel: QuantModel, policy: QuantPolicy) -> None:
    """Raise a one-line error unless ``qmodel`` has ``policy``'s units, bits applied and calibrated ranges."""
    if policy.names != qmodel.names:
        raise HySquantError(
            "the policy's layers are not the quantized model's layers: "
            "build the QuantModel from the policy's layer names"
        )
    if policy.bits() != qmodel.bits():
        raise HySquantError(
            "the model's applied bit-widths differ from the policy: "
            "call qmodel.apply_bits(policy.bits()) before exporting"
        )
    if any(a != FP32_BITS for _, a in policy.bits()) and not qmodel.calibrated:
        raise HySquantError(
            "the model's activation ranges are not calibrated: call qmodel.calibrate(batches) before exporting"
        )


def _hybrid_settings(qmodel: QuantModel) -> dict[str, str]:
    """The quantizer options an activation-only unit is rebuilt with: softmax levels and LayerNorm-input ranges."""
    levels = {t.levels for t in qmodel.quantizers() if t.levels != "uniform"}
    channel = any(t.act_per_channel for t in qmodel.quantizers())
    return {"softmax": "log2" if levels else "uniform", "act_granularity": "channel" if channel else "tensor"}


def _operand_record(t: ActivationQuant, bits: int) -> dict[str, Any]:
    uniform = t.levels == "uniform" and bits != FP32_BITS
    delta, zero = t.act_qparams(bits) if uniform else (None, None)
    return {
        "levels": t.levels,
        "a_scale": None if delta is None else delta.detach().clone(),
        "a_zero_point": None if zero is None else _int32(zero),
        "a_min": None if t.act_min is None else t.act_min.detach().clone(),
        "a_max": None if t.act_max is None else t.act_max.detach().clone(),
    }


def _unit_record(unit: Unit) -> dict[str, Any]:
    """The int-file entry of one unit (see the module docstring)."""
    if not isinstance(unit, QuantMixin):
        operands = unit.quantizers()
        return {
            "w_bits": None,
            "a_bits": unit.a_bits,
            "operands": {name: _operand_record(t, unit.a_bits) for name, t in operands.items()},
        }
    record: dict[str, Any] = {
        "w_bits": unit.w_bits,
        "a_bits": unit.a_bits,
        "w_int": None,
        "w_scale": None,
        "w_zero_point": None,
        "a_scale": None,
        "a_zero_point": None,
        "a_min": None if unit.act_min is None else unit.act_min.detach().clone(),
        "a_max": None if unit.act_max is None else unit.act_max.detach().clone(),
    }
    if unit.w_bits != FP32_BITS:
        q, delta, zero = unit.weight_qparams(unit.w_bits)
        record.update(w_int=q, w_scale=delta, w_zero_point=_int32(zero))
    if unit.a_bits != FP32_BITS:
        delta, zero = unit.act_qparams(unit.a_bits)
        record.update(a_scale=delta.detach().clone(), a_zero_point=_int32(zero))
    return record


def export_quantized(
    qmodel: QuantModel, policy: QuantPolicy, spec: Mapping[str, Any], out_dir: str | os.PathLike
) -> dict[str, Path]:
    """Write ``model_fakequant.pt`` and ``model_int.pt`` (formats in the module docstring) into ``out_dir``.

    Args:
        qmodel: calibrated, with ``policy`` applied (``qmodel.bits() == policy.bits()``).
        policy: the policy applied; stored in both files.
        spec: how to rebuild the FP32 model (JSON types), handed back to ``build_model`` by
            :func:`load_quantized`, e.g. ``{"name": "mobilevit_xxs", "num_classes": 10, "in_chans": 1}``.
        out_dir: created if missing; existing files of the same names are replaced atomically.

    Returns:
        ``{"fakequant": path, "int": path}``.
    """
    check_ready(qmodel, policy)
    header = {
        "version": VERSION,
        "spec": to_json_types(dict(spec), "model spec"),
        "policy": policy.to_dict(),
        "weight_granularity": _granularity(qmodel),
        **_hybrid_settings(qmodel),
    }
    state = qmodel.model.state_dict()
    records = {name: _unit_record(unit) for name, unit in zip(qmodel.names, qmodel.units)}
    coded = {f"{name}.weight" for name, r in records.items() if r.get("w_int") is not None}

    fake_state = dict(state)
    for name, unit in zip(qmodel.names, qmodel.units):
        if isinstance(unit, QuantMixin) and unit.w_bits != FP32_BITS:
            fake_state[f"{name}.weight"] = unit.quantized_weight(unit.w_bits).detach()

    def act_entry(r: dict[str, Any]) -> dict[str, Any]:
        if "operands" not in r:
            return {"bits": r["a_bits"], "scale": r["a_scale"], "zero_point": r["a_zero_point"]}
        operands = {
            k: {"levels": o["levels"], "scale": o["a_scale"], "zero_point": o["a_zero_point"]}
            for k, o in r["operands"].items()
        }
        return {"bits": r["a_bits"], "operands": operands}

    fakequant = {
        "format": FAKEQUANT_FORMAT,
        **header,
        "state_dict": fake_state,
        "act_qparams": {name: act_entry(r) for name, r in records.items() if r["a_bits"] != FP32_BITS},
    }
    integer = {
        "format": INT_FORMAT,
        **header,
        "state_dict": {k: v for k, v in state.items() if k not in coded},
        "layers": records,
    }
    out = Path(out_dir)
    return {
        "fakequant": save_torch(fakequant, out / FAKEQUANT_FILE),
        "int": save_torch(integer, out / INT_FILE),
    }


def _read(path: Path, fmt: str, device: torch.device) -> dict[str, Any]:
    if not path.is_file():
        raise HySquantError(f"quantized model {path} does not exist: pass the {INT_FILE} written by an export")
    try:
        doc = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # torch raises several types (pickle, zip, RuntimeError) for a foreign file
        reason = (str(e).splitlines() or [""])[0]
        raise HySquantError(
            f"cannot read {path} as a torch file ({type(e).__name__}: {reason}): "
            f"pass the {INT_FILE} written by an export"
        ) from None
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise HySquantError(
            f"{path} is not a {fmt!r} file (format={found!r}): pass the {INT_FILE} written by an export"
        )
    if doc.get("version") not in READS:
        raise HySquantError(
            f"{path} has {fmt!r} version {doc.get('version')!r}, this hysquant-rl reads versions"
            f" {', '.join(map(str, READS))}: re-export the model with this version"
        )
    return doc


def _install(unit: Unit, record: Mapping[str, Any]) -> None:
    """Make ``layer`` fake-quantize exactly with the stored parameters (its weight is already the
    dequantized one; activation ranges are restored too, so other bit-widths still work)."""
    if "operands" in record:
        for name, t in unit.quantizers().items():
            o = record["operands"][name]
            act_range = None if o["a_min"] is None else (o["a_min"], o["a_max"])
            acts = {} if o["a_scale"] is None else {record["a_bits"]: (o["a_scale"], o["a_zero_point"].float())}
            t.install_activation(act_range, acts)
        return
    act_range = None if record["a_min"] is None else (record["a_min"], record["a_max"])
    weights, codes = {}, {}
    if record["w_int"] is not None:
        weights[record["w_bits"]] = unit.weight.detach().clone()
        codes[record["w_bits"]] = (record["w_int"], record["w_scale"], record["w_zero_point"].float())
    acts = {}
    if record["a_scale"] is not None:
        acts[record["a_bits"]] = (record["a_scale"], record["a_zero_point"].float())
    unit.install(act_range, weights, acts, codes)


def load_quantized(
    path: str | os.PathLike, build_model: Callable[[dict[str, Any]], nn.Module], device: str | torch.device = "cpu"
) -> QuantModel:
    """Rebuild the quantized model from a ``model_int.pt``.

    Args:
        path: the int file written by :func:`export_quantized`.
        build_model: builds the FP32 architecture from the stored spec dict (its weights are all overwritten).
        device: where to load the tensors and the model.

    Returns:
        A QuantModel in eval mode with the stored policy applied; its weights are the dequantized integer
        weights (eq. 6) and its activations are fake-quantized with the stored (Delta, Z), so its logits
        equal those of the exported in-memory model. Applying other bit-widths re-quantizes the
        dequantized weights (the FP32 weights are not in the file).
    """
    path, device = Path(path), torch.device(device)
    doc = _read(path, INT_FORMAT, device)
    policy = QuantPolicy.from_dict(doc["policy"], source=f"the policy in {path}")
    model = build_model(dict(doc["spec"])).to(device).eval()

    modules = dict(model.named_modules())
    weighted = [n for n in policy.names if "operands" not in doc["layers"][n]]
    absent = [n for n in weighted if not isinstance(modules.get(n), (nn.Conv2d, nn.Linear))]
    if absent:
        raise HySquantError(
            f"{path} does not fit the model built from its spec {doc['spec']}: no Conv2d/Linear named "
            f"{', '.join(absent[:5])}{' ...' if len(absent) > 5 else ''}: "
            "build the architecture the file was exported from"
        )
    state = dict(doc["state_dict"])
    for name, record in doc["layers"].items():
        if record.get("w_int") is not None:
            zero = record["w_zero_point"].to(record["w_scale"].dtype)
            state[f"{name}.weight"] = dequantize(record["w_int"].to(record["w_scale"].dtype), record["w_scale"], zero)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise HySquantError(
            f"{path} does not fit the model built from its spec {doc['spec']} ({str(e).splitlines()[0]}): "
            "build the architecture the file was exported from"
        ) from None

    try:
        qmodel = QuantModel(
            model,
            policy.names,
            doc["weight_granularity"],
            softmax=doc.get("softmax", "uniform"),
            act_granularity=doc.get("act_granularity", "tensor"),
        )
    except TypeError as e:
        raise HySquantError(
            f"{path} does not fit the model built from its spec {doc['spec']} ({e}): "
            "build the architecture the file was exported from"
        ) from None
    for name, unit in zip(policy.names, qmodel.units):
        _install(unit, doc["layers"][name])
    qmodel.apply_bits(policy.bits())
    return qmodel.eval()
