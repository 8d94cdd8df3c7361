"""The files a user takes away from a run (``hysquant-search``, ``hysquant-apply``), written as a set.

In the executable space the runtime writes them (:meth:`hysquant_rl.deploy.runtimes.Runtime.export`): the policy's
deployable file in its layout (``model.onnx``, ``model.pte``) and, with ``export.<runtime>=true``, its own files
(OpenVINO's ``model.xml``/``model.bin``); in the simulated space, the PyTorch files of the paper's simulation
(:mod:`~hysquant_rl.deploy.checkpoints`) and, with ``export.onnx=true``, its QDQ graph
(:mod:`~hysquant_rl.deploy.simulated_onnx`).

As a set (:func:`write_set`): every file is written into a fresh staging folder inside the run directory; then the
manifest of the previous export (``export.json``) is removed, the files are moved into place one by one (each move is
atomic), files of an earlier export that this one does not write are removed, and the new manifest is written last,
naming each file with its SHA-256 and the policy it holds. A reader who finds ``export.json`` finds exactly the files
it names, from one export; a process killed midway leaves no manifest (and the next export removes the strays). A
write that fails (a full disk, a folder that cannot be written) removes the staging folder and leaves the previous
export, manifest included, as it was.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hysquant_rl.io import save_json

if TYPE_CHECKING:
    from hysquant_rl.deploy.runtimes import Layout, Runtime
    from hysquant_rl.policy import QuantPolicy
    from hysquant_rl.quant import QuantModel

log = logging.getLogger(__name__)
MANIFEST = "export.json"
FORMAT = "hysquant-export"
KNOWN_FILES = ("model.onnx", "model.xml", "model.bin", "model.pte", "model.pt2", "model_fakequant.pt", "model_int.pt")
"""Every file an export of any kind writes: one of these left by an earlier export (of another kind, or before
manifests existed) and not written now is stale, and removed."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _previous(out: Path) -> list[str]:
    try:
        files = json.loads((out / MANIFEST).read_text()).get("files", {})
        return [name for name in files if isinstance(name, str) and "/" not in name and name not in ("", ".", "..")]
    except (OSError, ValueError, AttributeError):
        return []


def write_set(
    out: str | os.PathLike, write: Callable[[Path], dict[str, Path]], about: dict[str, Any]
) -> dict[str, Path]:
    """Run ``write(folder)`` (it writes its files into ``folder`` and returns their paths by kind) in a staging folder
    of ``out``, then move the files into ``out`` as one set (module docstring); ``about`` goes into the manifest.
    Returns the final paths by kind."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    staging = out / f".export-{os.getpid()}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        written = write(staging)
        names = sorted(p.name for p in staging.iterdir() if p.is_file())
        digests = {name: _sha256(staging / name) for name in names}
        stale = sorted((set(_previous(out)) | {n for n in KNOWN_FILES if (out / n).exists()}) - set(names))
        (out / MANIFEST).unlink(missing_ok=True)
        for name in names:
            os.replace(staging / name, out / name)
        for name in stale:
            (out / name).unlink(missing_ok=True)
            log.info("removed %s, left by an earlier export", out / name)
        save_json({"format": FORMAT, "version": 1, **about, "files": digests}, out / MANIFEST)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {kind: out / Path(path).name for kind, path in written.items()}


def export(
    policy: QuantPolicy,
    out: str | os.PathLike,
    *,
    runtime: Runtime | None = None,
    layout: Layout | None = None,
    runtime_files: bool = False,
    qmodel: QuantModel | None = None,
    spec: dict[str, Any] | None = None,
    input_shape: Sequence[int] | None = None,
    simulated_onnx: bool = False,
) -> dict[str, Path]:
    """Write the quantized model of ``policy`` into ``out`` as a set: with a ``runtime`` and its ``layout`` (the
    executable space), the runtime's deployable file and with ``runtime_files`` its own files; else (the simulated
    space) the PyTorch files of ``qmodel`` and with ``simulated_onnx`` the paper's QDQ graph. Returns the paths by
    kind."""

    def write(folder: Path) -> dict[str, Path]:
        if runtime is not None and layout is not None:
            return runtime.export(layout, policy, folder, runtime_files)
        from hysquant_rl.deploy.checkpoints import export_quantized
        from hysquant_rl.deploy.simulated_onnx import export_simulated

        qmodel.apply_bits(policy.bits())
        paths = export_quantized(qmodel, policy, spec, folder)
        if simulated_onnx:
            paths["onnx"] = export_simulated(qmodel, policy, input_shape, folder)
        return paths

    bits_sha = hashlib.sha256(json.dumps(policy.to_dict()["layers"], sort_keys=True).encode()).hexdigest()
    about = {"runtime": runtime.name if runtime is not None else None, "policy_sha256": bits_sha}
    return write_set(out, write, about)
