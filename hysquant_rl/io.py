"""Atomic writes: readers see the old file or the new one, never a partial one. A write that fails raises
:class:`WriteError` (an ``OSError`` naming the file), so that the apps can tell a file that cannot be written from
one that cannot be read."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

from hysquant_rl.errors import HySquantError


class WriteError(OSError):
    """A file that could not be written (its ``filename``, ``errno`` and ``strerror`` are the failed call's)."""


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Write ``path`` atomically: ``write`` fills a temporary file in the same directory, which is fsynced
    and then renamed over ``path``. Readers see the old file or the new one, never a partial one; on any
    error the temporary file is removed and ``path`` is untouched. Creates missing parent directories."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise WriteError(e.errno, e.strerror or str(e), str(e.filename or path)) from e
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError) and not isinstance(e, WriteError):  # a write() names no file: name ours
            raise WriteError(e.errno, e.strerror or str(e), str(e.filename or path)) from e
        raise
    try:  # make the rename itself durable; not every platform can open a directory
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return path
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
    return path


def save_torch(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` ``obj`` to ``path`` atomically. Serialised in memory first: torch's zip writer turns a write
    that fails (a full disk) into a ``RuntimeError``; written from memory it is the ``OSError`` it is."""
    return atomic_write(path, lambda f: f.write(torch_bytes(obj)))


def torch_bytes(obj: Any) -> bytes:
    """``obj`` as ``torch.save`` writes it."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def npz_bytes(**arrays: Any) -> bytes:
    """``arrays`` as ``numpy.savez`` writes them (no pickles: object arrays are refused)."""
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **{k: np.asarray(v) for k, v in arrays.items()}, allow_pickle=False)
    return buffer.getvalue()


def records(frame: Any) -> list[dict[str, Any]]:
    """A pandas DataFrame's rows as JSON-ready dicts: numpy scalars -> Python numbers, NaN -> None."""
    out = []
    for row in frame.to_dict("records"):
        row = {k: v.item() if isinstance(v, np.generic) else v for k, v in row.items()}
        out.append({k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()})
    return out


def save_json(obj: Any, path: str | os.PathLike) -> Path:
    """Indented JSON (serialised first: a bad value leaves no file), written atomically. NaN and Infinity are not
    JSON: a document holding one is a :class:`HySquantError` naming where it is, and no file is written."""
    try:
        text = (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode()
    except ValueError:
        where = non_finite(obj)
        if where is None:
            raise
        raise HySquantError(
            f"cannot write {path}: {where[0] or 'the value'} is {where[1]}, which JSON cannot hold: a budget, metric"
            " or setting is not a finite number; check the settings that produced it"
        ) from None
    return atomic_write(path, lambda f: f.write(text))


def non_finite(obj: Any, where: str = "") -> tuple[str, float] | None:
    """The first NaN or infinite float in a JSON-like tree ``obj``, as (its key path, the value); None if none.
    Iterative: a tree of any depth."""
    stack: list[tuple[str, Any]] = [(where, obj)]
    while stack:
        key, value = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            return key, value
        if isinstance(value, dict):
            stack.extend((f"{key}.{k}" if key else str(k), v) for k, v in reversed(list(value.items())))
        elif isinstance(value, (list, tuple)):
            stack.extend((f"{key}[{i}]", v) for i, v in reversed(list(enumerate(value))))
    return None


def load_error(e: BaseException) -> str:
    """Why ``torch.load(..., weights_only=True)`` refused a file, in a few words on one line: the reason, without
    torch's advice to load it with ``weights_only=False`` (which runs whatever the file holds)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if type(e).__name__ == "UnpicklingError":
        found = (line[line.find(k) :] for line in lines for k in ("Trying to load", "Unsupported") if k in line)
        reason = next(found, "")  # after torch's "WeightsUnpickler error: " where it writes one
        if "GLOBAL" in reason or "global" in reason:
            return f"it holds Python objects, not only tensors ({reason.rstrip('.')}); they are never loaded"
        return f"not a file of tensors ({reason.rstrip('.') or 'unreadable pickle'})"
    first = lines[0].split(". ")[0] if lines else ""
    return f"{type(e).__name__}: {first[:200]}" if first else type(e).__name__


def check_writable(folder: str | os.PathLike, what: str, fix: str) -> None:
    """A one-line :class:`HySquantError` ("cannot write ``what`` ``folder`` (cause): ``fix``") when ``folder`` cannot
    be created or a file cannot be made in it: checked by doing so (permission bits do not bind root, and
    ``os.access`` does not see a read-only mount), before work whose result would be lost."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise HySquantError(f"cannot write {what} {folder} ({e.strerror or e}): {fix}") from None
