"""Checkpoints written as one consistent set.

A checkpoint is a folder ``checkpoints/episode-NNNNNN/`` holding every part (agent, replay buffer, search state),
each written atomically, and then ``checkpoints/latest.json`` (the manifest), written atomically last, naming that
folder and its parts. A process killed at any moment leaves the manifest naming a complete earlier set; a resume
reads only what the manifest names. Older sets and temporary files of interrupted writes are removed once a new
set is in force.

``HYSQUANT_TEST_KILL_AT=<episodes>:<part>`` (tests only) kills the process with SIGKILL right after that part of
that checkpoint is written (``manifest`` for the manifest), to check the above.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import IO

from hysquant_rl.errors import HySquantError
from hysquant_rl.io import atomic_write, save_json

MANIFEST = "latest.json"
FORMAT = "hysquant-checkpoint"


def _test_kill(episodes: int, part: str) -> None:
    if os.environ.get("HYSQUANT_TEST_KILL_AT") == f"{episodes}:{part}":
        os.kill(os.getpid(), signal.SIGKILL)


def write_checkpoint(folder: Path, episodes: int, parts: dict[str, Callable[[IO[bytes]], None]]) -> Path:
    """Write ``parts`` (file name -> writer) as the set of ``episodes``, then the manifest; returns the set's
    folder. Raises :class:`HySquantError` (one line) when the folder cannot be written."""
    target = folder / f"episode-{episodes:06d}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if target.exists():  # a set of the same count that a crash left behind, never named by the manifest
            shutil.rmtree(target)
        target.mkdir()
        for name, write in parts.items():
            atomic_write(target / name, write)
            _test_kill(episodes, name)
        save_json(
            {"format": FORMAT, "episodes": episodes, "set": target.name, "parts": sorted(parts)}, folder / MANIFEST
        )
        _test_kill(episodes, "manifest")
    except OSError as e:
        raise HySquantError(
            f"cannot write the checkpoint in {folder} ({e.strerror or e}): free disk space or make it writable;"
            f" the previous checkpoint is still in force"
        ) from None
    for old in folder.iterdir():  # what the new set replaced, and leftovers of interrupted writes
        if old.is_dir() and old != target:
            shutil.rmtree(old, ignore_errors=True)
        elif old.name.startswith(".") and old.name.endswith(".tmp"):
            old.unlink(missing_ok=True)
    return target


def read_checkpoint(folder: Path) -> tuple[Path, int]:
    """The folder of the checkpoint set the manifest names, and its episode count. Raises :class:`HySquantError`
    when there is none, or when a part it names is missing."""
    manifest = folder / MANIFEST
    if not manifest.exists():
        raise HySquantError(
            f"resume=true but {folder} holds no checkpoint: pass hydra.run.dir=<the interrupted run's directory>"
        )
    try:
        doc = json.loads(manifest.read_text())
        target = folder / doc["set"]
        missing = [p for p in doc["parts"] if not (target / p).is_file()]
        episodes = int(doc["episodes"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise HySquantError(f"the checkpoint manifest {manifest} is unreadable ({e}): start a new run") from None
    if doc.get("format") != FORMAT or missing:
        raise HySquantError(f"the checkpoint {target} is incomplete (missing {', '.join(missing)}): start a new run")
    return target, episodes
