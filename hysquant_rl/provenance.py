"""Where a result comes from: the model's weights (a hash a policy is bound to), the code's git commit and the
package version, recorded in every policy file."""

from __future__ import annotations

import hashlib
import re
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 (64 hex digits) of ``model``'s state dict: for each key in sorted order, the key name, dtype,
    shape and raw bytes of the tensor. Deterministic across runs and devices; a
    :class:`~hysquant_rl.quant.model.QuantModel` (a module with ``units`` wrapping ``model``) hashes like the model it
    wraps (its layers' class swap changes no key or value). Imports torch only when called: a policy file, which
    carries the hash, is JSON and needs no tensors."""
    import torch

    if hasattr(model, "units") and isinstance(getattr(model, "model", None), torch.nn.Module):
        model = model.model
    h = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        if isinstance(value, torch.Tensor):
            t = value.detach().to("cpu").contiguous()
            h.update(f"{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)
        else:  # a module's extra state: rare, and only simple values in practice
            h.update(f"{key}\0{type(value).__name__}\0{value!r}\0".encode())
    return h.hexdigest()


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """HEAD of the git checkout that holds this package, or None (installed from a wheel, no git, ...)."""
    package_dir = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--show-toplevel", "HEAD"],
            cwd=package_dir,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    # Only our own checkout counts, not some repository that merely contains a site-packages directory.
    if len(out) != 2 or (Path(out[0]).resolve() / package_dir.name) != package_dir:
        return None
    return out[1] if re.fullmatch(r"[0-9a-f]{40}", out[1]) else None


def package_version() -> str:
    from hysquant_rl import __version__

    return __version__
