"""Runtimes are plug-ins: one :class:`Runtime` object per runtime answers every question the search asks of it (as
NNCF keeps one backend object per framework), so that a runtime is one module in ``deploy/`` plus its
``conf/runtime/<name>.yaml``, and nothing above ``deploy/`` names one.

What a runtime answers:

* **install and machine**: :meth:`Runtime.version` (the install probe: one line naming the install command of its
  conf file when its package is missing), :meth:`Runtime.capabilities` (what this CPU executes: VNNI, bf16, and what
  the runtime itself reports) and :meth:`Runtime.machine` (the identity every cache of measurements is keyed by);
* **choices**: its executable (w, a) pairs per unit kind are data, the ``executable`` of its conf file, read by the
  device profile (:meth:`hysquant_rl.hardware.profile.DeviceProfile.executable`);
* **layout and export**: :meth:`Runtime.layout` builds the model once in the layout the runtime runs as integer
  kernels (a :class:`Layout`: any policy -> the deployable bytes), and :meth:`Runtime.export` writes a policy's
  deployable files (``export.<name>=true`` adds the runtime's own files where it has some);
* **running and measuring**: :meth:`Runtime.session` opens deployable bytes (``run(None, {INPUT: images})`` ->
  [logits]); :meth:`Runtime.evaluation_session` is what accuracy is measured on (the deployable file itself, or the
  runtime's reference numerics where building that file per policy is too slow); :meth:`Runtime.unit_latency`
  measures each unit's latency on the runtime (:mod:`hysquant_rl.deploy.unit_latency`); whole-graph timing
  (:mod:`hysquant_rl.deploy.timing`) and accuracy (:mod:`hysquant_rl.deploy.runtime_eval`) go through ``session``.

:class:`~hysquant_rl.deploy.graph_runtime.GraphRuntime` is the shared part of the runtimes that execute an ONNX
graph (onnxruntime in :mod:`~hysquant_rl.deploy.ort`, OpenVINO in :mod:`~hysquant_rl.deploy.openvino`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from hysquant_rl import machine
from hysquant_rl.errors import HySquantError
from hysquant_rl.hardware.profile import known_runtimes, runtime_conf, runtime_version
from hysquant_rl.registry import Registry

if TYPE_CHECKING:
    from torch import nn

    from hysquant_rl.deploy.unit_latency import UnitLatency
    from hysquant_rl.hardware.profile import Timing
    from hysquant_rl.policy import QuantPolicy
    from hysquant_rl.settings import QuantSettings
    from hysquant_rl.units import UnitInfo

INPUT, OUTPUT = "images", "logits"  # every deployable model's input (B, C, H, W) and output (B, classes)


class Session(Protocol):
    """An opened model: ``run(None, {INPUT: images})`` -> [logits (B, classes) float32] (onnxruntime's interface)."""

    def run(self, names: Any, feed: dict[str, np.ndarray]) -> list[np.ndarray]: ...


class Layout(Protocol):
    """One model in a runtime's layout, built once; any policy (L, 2) -> its deployable bytes in milliseconds to
    minutes. ``sha256`` identifies the layout (what caches of measurements on it are keyed by)."""

    sha256: str
    input_shape: tuple[int, ...]
    units: list[Any]  # per unit: what the layout holds of it (graph nodes, modules)

    def artefact(self, bits: np.ndarray) -> bytes: ...

    def save(self, bits: np.ndarray, policy: QuantPolicy, out_dir: str | os.PathLike) -> Path: ...


def logits(session: Session, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits (N, classes) float32 of ``images`` (N, C, H, W) from a session, in batches."""
    images = np.asarray(images, dtype=np.float32)
    out = [session.run(None, {INPUT: images[i : i + batch_size]})[0] for i in range(0, len(images), batch_size)]
    return np.concatenate(out)


class Runtime:
    """One runtime (see the module docstring). Subclasses set ``name``, register themselves in :data:`RUNTIMES` and
    implement :meth:`layout`, :meth:`session` and :meth:`unit_latency`; ``boundary_ops`` names the node types that are
    int8/float boundaries of their own in its profiles, ``files`` the extra files its export writes beside the
    policy's deployable file when ``export.<name>=true`` (empty: none); ``static_batch`` says that its programs fix
    their batch, so that its layout's ``artefact(bits, batch_size)`` builds one per batch size."""

    name: ClassVar[str]
    boundary_ops: ClassVar[tuple[str, ...]] = ()
    files: ClassVar[tuple[str, ...]] = ()
    static_batch: ClassVar[bool] = False  # its programs fix their batch: built per batch size (ExecuTorch)

    @property
    def conf(self) -> dict[str, Any]:
        """Its ``conf/runtime/<name>.yaml``."""
        return runtime_conf(self.name)

    # -- install and machine -------------------------------------------------------------------------------------
    def version(self) -> str:
        """``<name> <version> CPU``; a one-line error naming the install command when it is not installed."""
        return runtime_version(self.name)

    def capabilities(self) -> dict[str, Any]:
        """What this CPU executes (:func:`hysquant_rl.machine.capabilities`), plus what the runtime reports."""
        return machine.capabilities()

    def machine(self) -> dict[str, Any]:
        """What a measurement on this runtime depends on besides the model: CPU model, logical CPUs, VNNI and bf16,
        the runtime and its version."""
        caps = machine.capabilities()
        return {
            "cpu": machine.cpu_model(),
            "logical_cpus": os.cpu_count(),
            "vnni": caps["vnni"],
            "bf16": caps["bf16"],
            "runtime": self.version(),
        }

    def machine_key(self) -> str:
        """A short, file-name-safe key of :meth:`machine` (caches of measurements are kept per machine and runtime)."""
        m = self.machine()
        text = f"{m['cpu']}|{m['logical_cpus']}|{m['vnni']}|{m['bf16']}|{m['runtime']}"
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def describe(self) -> str:
        """``<runtime> <version> CPU on <cpu, flags>``: what every figure measured on it names."""
        return f"{self.version()} on {machine.describe()}"

    # -- layout, export ------------------------------------------------------------------------------------------
    def layout(
        self,
        model: nn.Module,
        units: Sequence[UnitInfo],
        input_shape: Sequence[int],
        calib_images: np.ndarray,
        quant: QuantSettings,
        batch_size: int = 1,
    ) -> Layout:
        """The model (FP32, eval) in this runtime's layout, calibrated on ``calib_images`` (N, C, H, W); programs that
        fix their batch are built for ``batch_size`` images."""
        raise NotImplementedError

    def anchors(self, layout: Layout, calib_images: np.ndarray, batch_size: int | None = None) -> dict[str, Any]:
        """The runtime's own quantizer's uniform int8 of the layout's FP32 model, as its documentation has a user run
        it, calibrated on ``calib_images`` (N, C, H, W): {name: a model :meth:`session` opens}, built for
        ``batch_size`` images where the runtime's programs fix their batch (default: the layout's). Every deployment
        figure stands beside these."""
        raise NotImplementedError

    def export(self, layout: Layout, policy: QuantPolicy, out: Path, files: bool) -> dict[str, Path]:
        """Write a policy's deployable file into the folder ``out`` (and with ``files`` the runtime's own files of
        it, :attr:`files`); returns the paths by kind. The folder is a fresh one: the caller moves its files into
        place as a set (:func:`hysquant_rl.deploy.export.export`)."""
        return {"onnx": layout.save(policy.bits(), policy, out)}

    # -- running, measuring --------------------------------------------------------------------------------------
    def session(self, model: bytes | str | os.PathLike, threads: int = 1) -> Session:
        """Open deployable bytes (or a file) on ``threads`` threads."""
        raise NotImplementedError

    def evaluation_session(self, layout: Layout, bits: np.ndarray, threads: int) -> Session:
        """What a policy's accuracy is measured on: by default the deployable file itself."""
        return self.session(layout.artefact(bits), threads)

    def unit_latency(self, layout: Layout, int8: np.ndarray, batch_size: int, timing: Timing) -> UnitLatency:
        """Each unit's latency on this runtime at FP32 and at int8 (``int8`` (L,) marks the units that can run int8),
        at ``batch_size`` images (:class:`~hysquant_rl.deploy.unit_latency.UnitLatency`)."""
        raise NotImplementedError


RUNTIMES: Registry[type[Runtime]] = Registry("runtime", "hardware.backend")
"""The runtime plug-ins by name: each ``conf/runtime/<name>.yaml`` names its module, imported on first use."""
for _name in known_runtimes():
    RUNTIMES.lazy(_name, f"{runtime_conf(_name)['module']}:RUNTIME")


@cache
def get(name: str) -> Runtime:
    """The runtime named ``name`` (``hardware.runtime``), installed: a one-line error naming the known ones, or the
    install command when it is known but not installed."""
    if name not in RUNTIMES:
        raise HySquantError(f"unknown runtime {name!r}: known runtimes are {', '.join(RUNTIMES.names())}")
    runtime_version(name)  # before importing its module
    runtime = RUNTIMES.get(name)()
    if runtime.name != name:
        raise HySquantError(f"conf/runtime/{name}.yaml names a module whose runtime is {runtime.name!r}")
    return runtime
