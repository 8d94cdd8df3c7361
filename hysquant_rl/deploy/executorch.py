"""ExecuTorch with the XNNPACK backend as a runtime plug-in (``conf/runtime/executorch.yaml``;
``hardware.backend=executorch``): PyTorch's on-device runtime, what MobileViT ships to phones and edge boards with.

The layout (:class:`PT2ELayout`): the FP32 model exported once with ``torch.export`` (timm's attention unfused, so
that its matmuls are XNNPACK batch matmuls, not a decomposed SDPA left outside the delegate), then per policy PT2E
quantization with the runtime's own quantizer, ``XNNPACKQuantizer`` (int8 activations, symmetric per-channel int8
weights), annotating only the policy's int8 units: a filter on each node's innermost module path (``set_module_name``
silently leaves every convolution float once BatchNorm is folded into it), calibrated on the calibration split with
min-max observers (``quant.calibrator=minmax``), converted, and lowered to XNNPACK (``XnnpackPartitioner``) as a
``.pte`` program for the layout's batch size (one static file per batch size: a dynamic batch splits the graph into
twice the delegates). XNNPACK runs Conv2d (1x1 as a GEMM, kxk, depthwise) and Linear in int8; its batch matmul,
softmax, SiLU and bilinear resize run in fp32 and LayerNorm is not delegated: attention and LayerNorm units are
FP32-only here (the conf file).

Accuracy is measured on the converted PT2E module (:meth:`PT2ELayout.converted`): the runtime's reference numerics,
with the same quantization points and parameters as the ``.pte`` (XNNPACK computes in integers, the reference in
float on the dequantized values: the logits differ by a mean of 0.025 with every unit int8, the argmax on 1 image in
400); lowering a policy costs about 55 s of CPU, which a search of hundreds of evaluations cannot pay, so ``.pte``
files are built for what is timed and exported, and cached by policy.

Per-unit latency (:meth:`ExecuTorch.unit_latency`): each Conv2d/Linear unit alone, FP32 and int8, lowered and timed as
a program of its own (isolated kernels, as HAWQ-V3 timed layers), then scaled so that the table reproduces the
whole FP32 and all-int8 programs timed side by side (XNNPACK's own operator profile, ETDump, has 1 us resolution:
most operators of a 32 px model read 0). An int8 unit pays its own quantize and dequantize (the activations around it
stay float), so there are no pairwise boundary terms.

Threads: ExecuTorch's thread pool is one per process and can be sized only before the first program is loaded; the
first session sizes it (1 thread for timing), later ones share it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hysquant_rl.bits import FP32_BITS
from hysquant_rl.deploy.runtimes import INPUT, Runtime, logits
from hysquant_rl.errors import HySquantError
from hysquant_rl.io import atomic_write

if TYPE_CHECKING:
    from torch import nn

    from hysquant_rl.deploy.unit_latency import UnitLatency
    from hysquant_rl.hardware.profile import Timing
    from hysquant_rl.policy import QuantPolicy
    from hysquant_rl.units import UnitInfo

log = logging.getLogger(__name__)
PTE_FILE, PT2_FILE = "model.pte", "model.pt2"
LAYOUT_VERSION = 1
CACHED = 6  # converted modules and .pte programs kept in memory, by policy
_POOL: list[int] = []  # the thread count ExecuTorch's one thread pool was sized to


def _quantizer(units: set[str] | None, calibrator: str) -> Any:
    """``XNNPACKQuantizer`` for int8 on the units named (module paths; None: its own global default, every pattern it
    knows, with its own observers: the runtime's uniform int8)."""
    import dataclasses

    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    config = get_symmetric_quantization_config(is_per_channel=True)
    quantizer = XNNPACKQuantizer()
    if units is None:
        return quantizer.set_global(config)
    if calibrator != "minmax":
        raise HySquantError(
            f"quant.calibrator={calibrator} has no ExecuTorch counterpart here: use quant.calibrator=minmax with"
            " hardware.backend=executorch"
        )
    from torchao.quantization.pt2e.observer import MinMaxObserver

    minmax = MinMaxObserver.with_args(eps=2**-12)
    config = dataclasses.replace(
        config,
        input_activation=dataclasses.replace(config.input_activation, observer_or_fake_quant_ctr=minmax),
        output_activation=dataclasses.replace(config.output_activation, observer_or_fake_quant_ctr=minmax),
    )

    def chosen(node: Any) -> bool:  # weights and biases follow their op; an op goes by its innermost module
        if node.op != "call_function":
            return True
        stack = node.meta.get("nn_module_stack")
        return bool(stack) and list(stack.values())[-1][0] in units

    return quantizer.set_global(config).set_filter_function(chosen)


def _lower(module: nn.Module, example: torch.Tensor) -> bytes:
    """A module (FP32 or converted PT2E) as an XNNPACK-delegated ExecuTorch program for ``example``'s shape (about
    2 s per unit-sized program and 30-50 s for the whole 32 px model on this machine's 2 cores)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    program = torch.export.export(module, (example,))
    return to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch().buffer


def _unfused(model: nn.Module) -> nn.Module:
    """A float copy of ``model`` in eval mode with timm's attention unfused (explicit matmuls and softmax)."""
    from hysquant_rl.quant.model import float_copy

    model = copy.deepcopy(float_copy(model)).eval()
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
    return model


class PT2ELayout:
    """One model in ExecuTorch's layout (module docstring): any policy (L, 2) -> its converted PT2E module (the
    accuracy reference) and its ``.pte`` program at ``batch_size`` images.

    Args:
        model: the FP32 model; units: its units, forward order; input_shape: one image's (C, H, W);
        calib_images: (N, C, H, W) calibration images; calibrator: ``quant.calibrator``; batch_size: the programs'.
    """

    def __init__(
        self,
        model: nn.Module,
        units: Sequence[UnitInfo],
        input_shape: Sequence[int],
        calib_images: np.ndarray,
        calibrator: str = "minmax",
        batch_size: int = 1,
    ) -> None:
        start = time.perf_counter()
        self.units, self.input_shape = list(units), tuple(input_shape)
        self.calibrator, self.batch_size = calibrator, int(batch_size)
        self.model = _unfused(model)
        self.calib = torch.from_numpy(np.asarray(calib_images, dtype=np.float32))
        example = self.calib[:2] if len(self.calib) >= 2 else torch.zeros((2, *self.input_shape))
        batch = torch.export.Dim("batch", min=1, max=max(2, len(self.calib), 1024))
        self.program = torch.export.export(self.model, (example,), dynamic_shapes={"x": {0: batch}})
        digest = hashlib.sha256(f"executorch:{LAYOUT_VERSION}:{calibrator}:{self.input_shape}".encode())
        for name, tensor in sorted(self.model.state_dict().items()):
            digest.update(name.encode() + tensor.detach().cpu().numpy().tobytes())
        self.sha256 = digest.hexdigest()
        self._converted: OrderedDict[bytes, nn.Module] = OrderedDict()
        self._pte: OrderedDict[tuple[bytes, int], bytes] = OrderedDict()
        log.info("executorch layout: exported in %.1f s (attention unfused)", time.perf_counter() - start)

    def int8_units(self, bits: np.ndarray) -> set[str]:
        """The names of the units a policy runs int8 (activations quantized)."""
        bits = np.asarray(bits)
        if len(bits) != len(self.units):
            raise HySquantError(f"a policy of {len(bits)} units for a model of {len(self.units)}")
        return {u.name for u, b in zip(self.units, bits) if b[1] != FP32_BITS}

    def converted(self, bits: np.ndarray) -> nn.Module:
        """The policy's converted PT2E module (its int8 units annotated, calibrated, converted): the runtime's
        reference numerics; the FP32 model when no unit is int8."""
        names = self.int8_units(bits)
        key = np.asarray(bits).astype(np.int8).tobytes()
        if not names:
            return self.model
        if key not in self._converted:
            quantizer = _quantizer(names, self.calibrator)
            self._converted[key] = _pt2e(copy.deepcopy(self.program).module(), quantizer, self.calib)
            while len(self._converted) > CACHED:
                self._converted.popitem(last=False)
        return self._converted[key]

    def artefact(self, bits: np.ndarray, batch_size: int | None = None) -> bytes:
        """The policy's ``.pte`` program at ``batch_size`` images (default: the layout's), cached by policy."""
        batch = self.batch_size if batch_size is None else int(batch_size)
        key = (np.asarray(bits).astype(np.int8).tobytes(), batch)
        if key not in self._pte:
            start = time.perf_counter()
            self._pte[key] = _lower(self.converted(bits), torch.zeros((batch, *self.input_shape)))
            log.info("lowered a policy to XNNPACK at batch %d in %.0f s", batch, time.perf_counter() - start)
            while len(self._pte) > CACHED:
                self._pte.popitem(last=False)
        return self._pte[key]

    def save(self, bits: np.ndarray, policy: QuantPolicy, out_dir: str | os.PathLike) -> Path:
        """Write ``out_dir/model.pt2``: the policy's converted PT2E program (``torch.export.save``), the reference
        numerics and what ExecuTorch lowers; atomic."""
        import io

        program = torch.export.export(self.converted(bits), (torch.zeros((self.batch_size, *self.input_shape)),))
        buffer = io.BytesIO()
        torch.export.save(program, buffer, extra_files={"hysquant_policy.json": json.dumps(policy.to_dict())})
        return atomic_write(Path(out_dir) / PT2_FILE, lambda f: f.write(buffer.getvalue()))


class Session:
    """An ExecuTorch program (``.pte`` bytes or a file) with onnxruntime's session interface: ``run(None, {INPUT:
    images})`` -> [logits]; images of any count are run in chunks of the program's static batch (the last padded)."""

    def __init__(self, model: bytes | str | os.PathLike | Any, threads: int = 1, method: str = "forward") -> None:
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime as ETRuntime

        if not _POOL:  # sized once per process, before any program is loaded (resizing later corrupts memory)
            portable_lib._unsafe_reset_threadpool(int(threads))
            _POOL.append(int(threads))
        elif _POOL[0] != int(threads):
            log.warning("ExecuTorch's thread pool has %d thread(s) in this process, not %d", _POOL[0], threads)
        if isinstance(model, (bytes, str, os.PathLike)):  # else a loaded program (one of many methods)
            model = ETRuntime.get().load_program(model if isinstance(model, bytes) else Path(model).read_bytes())
        self.program = model
        self.method = self.program.load_method(method)
        meta = self.method.metadata
        self.batch = int(meta.input_tensor_meta(0).sizes()[0])

    def run(self, names: Any, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        images = torch.from_numpy(np.ascontiguousarray(feed[INPUT], dtype=np.float32))
        outs = []
        for i in range(0, len(images), self.batch):
            chunk = images[i : i + self.batch]
            short = self.batch - len(chunk)
            if short:
                chunk = torch.cat([chunk, chunk.new_zeros((short, *chunk.shape[1:]))])
            out = self.method.execute((chunk.contiguous(),))[0]
            outs.append(out[: len(out) - short].numpy() if short else out.numpy())
        return [np.concatenate(outs)]


class ModuleSession:
    """A converted PT2E module (the reference numerics) with the session interface, run by torch on ``threads``."""

    def __init__(self, module: nn.Module, threads: int) -> None:
        self.module, self.threads = module, threads

    def run(self, names: Any, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        torch.set_num_threads(self.threads)
        with torch.no_grad():
            return [self.module(torch.from_numpy(np.asarray(feed[INPUT], dtype=np.float32))).numpy()]


class ExecuTorch(Runtime):
    """ExecuTorch with XNNPACK (module docstring); ``export.executorch=true`` adds ``model.pte``."""

    name = "executorch"
    files = (PTE_FILE,)
    static_batch = True

    def layout(self, model, units, input_shape, calib_images, quant, batch_size: int = 1) -> PT2ELayout:
        return PT2ELayout(model, units, input_shape, calib_images, quant.calibrator, batch_size)

    def session(self, model, threads: int = 1) -> Session:
        return Session(model, threads)

    def evaluation_session(self, layout, bits, threads):
        return ModuleSession(layout.converted(bits), threads)

    def capabilities(self) -> dict[str, Any]:
        return {**super().capabilities(), "executorch": "XNNPACK: int8 Conv2d, depthwise and Linear; fp32 the rest"}

    def anchors(self, layout, calib_images, batch_size=None):
        """``XNNPACKQuantizer``'s own uniform int8 (its global default: every pattern it knows, per-channel weights,
        histogram observers), calibrated on the same images, lowered at ``batch_size`` (default: the layout's)."""
        batch = layout.batch_size if batch_size is None else int(batch_size)
        program = _lower(xnnpack_int8(layout, calib_images), torch.zeros((batch, *layout.input_shape)))
        return {"XNNPACKQuantizer int8": program}

    def export(self, layout, policy, out, files):
        paths = {"pt2": layout.save(policy.bits(), policy, out)}
        if files:
            pte = layout.artefact(np.asarray(policy.bits()))
            paths["executorch"] = atomic_write(Path(out) / PTE_FILE, lambda f: f.write(pte))
        return paths

    def unit_latency(self, layout: PT2ELayout, int8: np.ndarray, batch_size: int, timing: Timing) -> UnitLatency:
        """Isolated kernels, scaled to the whole programs (module docstring)."""
        from tqdm import tqdm

        from hysquant_rl.deploy.timing import interleaved, side_by_side
        from hysquant_rl.deploy.unit_latency import UnitLatency, layout_key

        start = time.perf_counter()
        n = len(layout.units)
        fp32_bits = np.full((n, 2), FP32_BITS)
        int8_bits = np.where(int8[:, None], 8, fp32_bits)
        whole = {k: layout.artefact(b, batch_size) for k, b in (("fp32", fp32_bits), ("int8", int8_bits))}
        feed = {INPUT: np.random.default_rng(0).standard_normal((batch_size, *layout.input_shape)).astype(np.float32)}
        sessions = {k: Session(v, timing.threads) for k, v in whole.items()}
        wall, spread = side_by_side(interleaved(sessions, feed, timing.warmup, timing.repeats, rounds=5))
        alone32, alone8 = np.zeros(n), np.zeros(n)
        modules = dict(layout.model.named_modules())
        timed = [u for u, unit in enumerate(layout.units) if unit.weighted and unit.name in modules]
        for u in tqdm(timed, desc="executorch: lowering and timing units alone", unit="unit", disable=None):
            module = _Alone(modules[layout.units[u].name]).eval()
            x = torch.randn((batch_size, *layout.units[u].input_shape))
            programs = {"fp32": _lower(module, x)}
            if int8[u]:
                programs["int8"] = _lower(_converted_alone(module, x), x)
            kernels = {k: Session(v, timing.threads) for k, v in programs.items()}
            times, _ = side_by_side(interleaved(kernels, {INPUT: x.numpy()}, 3, timing.repeats, rounds=3))
            alone32[u] = times["fp32"]
            alone8[u] = times.get("int8", times["fp32"])
        # the FP32 column and the fixed part reproduce the FP32 program; the int8 column the all-int8 one
        scale = wall["fp32"] / max(alone32.sum(), 1e-12) if alone32.sum() > wall["fp32"] else 1.0
        fp32_s = alone32 * scale
        fixed = max(wall["fp32"] - fp32_s.sum(), 0.0)  # not -1e-20 from rounding when the units take it all
        rest = wall["int8"] - fixed - fp32_s[~int8].sum()
        k = rest / max(alone8[int8].sum(), 1e-12)
        int8_s = np.where(int8, alone8 * (k if k > 0 else scale), fp32_s)
        table = UnitLatency(
            spread,
            fp32_s,
            int8_s,
            float(fixed),
            batch_size,
            timing.threads,
            {k: float(v) for k, v in wall.items()},
            self.machine(),
            layout_key(layout, int8),
            [],
            [0.0, 0.0],
            [0.0, 0.0],
        )
        log.info(
            "per-unit latency measured by ExecuTorch (isolated kernels scaled to the whole programs) at batch %d in"
            " %.0f s: FP32 %.4g ms, int8 %.4g ms",
            batch_size,
            time.perf_counter() - start,
            1e3 * wall["fp32"],
            1e3 * wall["int8"],
        )
        return table


class _Alone(torch.nn.Module):
    """One unit's module as a program of its own (its input named ``x``, as the whole model's)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = copy.deepcopy(module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def _pt2e(module: nn.Module, quantizer: Any, images: torch.Tensor) -> nn.Module:
    """PT2E quantization of an exported module: annotated by ``quantizer``, calibrated on ``images`` (N, ...) in
    batches of 64, converted."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    prepared = prepare_pt2e(module, quantizer)
    with torch.no_grad():
        for i in range(0, len(images), 64):
            prepared(images[i : i + 64])
    return convert_pt2e(prepared)


def xnnpack_int8(layout: PT2ELayout, calib_images: np.ndarray) -> nn.Module:
    """``XNNPACKQuantizer``'s own uniform int8 of the layout's FP32 model, calibrated on ``calib_images`` (N, C, H, W)
    and converted: what :meth:`ExecuTorch.anchors` lowers, and that program's reference numerics."""
    images = torch.from_numpy(np.asarray(calib_images, dtype=np.float32))
    return _pt2e(copy.deepcopy(layout.program).module(), _quantizer(None, "minmax"), images)


def _converted_alone(module: nn.Module, x: torch.Tensor) -> nn.Module:
    return _pt2e(torch.export.export(module, (x,)).module(), _quantizer(None, "minmax"), x)


__all__ = ["ExecuTorch", "ModuleSession", "PT2ELayout", "Session", "logits", "xnnpack_int8"]
RUNTIME = ExecuTorch
