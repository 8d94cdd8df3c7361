"""Atomic writes: readers see the old file or the new one, never a partial one."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Write ``path`` atomically: ``write`` fills a temporary file in the same directory, which is fsynced
    and then renamed over ``path``. Readers see the old file or the new one, never a partial one; on any
    error the temporary file is removed and ``path`` is untouched. Creates missing parent directories."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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
        if isinstance(e, OSError) and e.errno is not None and e.filename is None:  # write() names no file
            raise type(e)(e.errno, e.strerror, str(path)) from e
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
    """``torch.save`` ``obj`` to ``path`` atomically."""
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))


def records(frame: Any) -> list[dict[str, Any]]:
    """A pandas DataFrame's rows as JSON-ready dicts: numpy scalars -> Python numbers, NaN -> None."""
    out = []
    for row in frame.to_dict("records"):
        row = {k: v.item() if isinstance(v, np.generic) else v for k, v in row.items()}
        out.append({k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()})
    return out


def save_json(obj: Any, path: str | os.PathLike) -> Path:
    """Indented JSON (serialised first: a bad value leaves no file), written atomically."""
    text = (json.dumps(obj, indent=2) + "\n").encode()
    return atomic_write(path, lambda f: f.write(text))
