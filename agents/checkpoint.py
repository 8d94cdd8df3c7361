"""Checkpoints written as one consistent set, made of data only.

A checkpoint is a folder ``checkpoints/episode-NNNNNN/`` holding every part, each written atomically, and then
``checkpoints/latest.json`` (the manifest), written atomically last, naming that folder and its parts. A process
killed at any moment leaves the manifest naming a complete earlier set; a resume reads only what the manifest names.
Older sets and temporary files of interrupted writes are removed once a new set is in force.

The parts (:data:`PARTS`) are data, never code: the agent's networks, optimiser states and SAC's entropy
coefficient as a plain dict of tensors (``agent.pt``, read with ``torch.load(weights_only=True)``), the replay buffer
and the episode store as arrays (``.npz``, read with ``allow_pickle=False``), the search state and the agent's
counters as JSON (``state.json``). No pickle is ever read from a run directory: the agent is rebuilt from the run's
settings (:func:`agents.factory.make_agent`) and filled with these. The manifest may name only a set folder inside
its own ``checkpoints/``; a damaged part is one line naming the file and what the user can do (start a new run
directory, or resume from an earlier whole set that is still there).

``HYSQUANT_TEST_KILL_AT=<episodes>:<part>`` (tests only) kills the process with SIGKILL right after that part of
that checkpoint is written (``manifest`` for the manifest), to check the above.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

from hysquant_rl.errors import HySquantError
from hysquant_rl.io import atomic_write, load_error, save_json

MANIFEST = "latest.json"
FORMAT = "hysquant-checkpoint"
VERSION = 2  # 1: SB3's agent.zip and a pickled replay buffer (never read: a pickle can run code)
PARTS = ("agent.pt", "replay_buffer.npz", "episodes.npz", "state.json")
SET_NAME = re.compile(r"episode-\d{6,}")  # a set's folder: one plain name inside checkpoints/
BUFFER_ARRAYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")
NEW_RUN = "start a new run directory (another hydra.run.dir, without resume=true)"


def _test_kill(episodes: int, part: str) -> None:
    if os.environ.get("HYSQUANT_TEST_KILL_AT") == f"{episodes}:{part}":
        os.kill(os.getpid(), signal.SIGKILL)


def write_checkpoint(folder: Path, episodes: int, parts: dict[str, Callable[[IO[bytes]], None]]) -> Path:
    """Write ``parts`` (file name -> writer) as the set of ``episodes``, then the manifest; returns the set's
    folder. Raises :class:`HySquantError` (one line) when the folder cannot be written."""
    target = folder / f"episode-{episodes:06d}"
    had_one = (folder / MANIFEST).is_file()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if target.exists():  # a set of the same count that a crash left behind, never named by the manifest
            shutil.rmtree(target)
        target.mkdir()
        for name, write in parts.items():
            atomic_write(target / name, write)
            _test_kill(episodes, name)
        save_json(
            {"format": FORMAT, "version": VERSION, "episodes": episodes, "set": target.name, "parts": sorted(parts)},
            folder / MANIFEST,
        )
        _test_kill(episodes, "manifest")
    except OSError as e:
        kept = "the previous checkpoint is still in force" if had_one else "no checkpoint was written yet"
        raise HySquantError(
            f"cannot write the checkpoint in {folder} ({e.strerror or e}): free disk space or make it writable; {kept}"
        ) from None
    for old in folder.iterdir():  # what the new set replaced, and leftovers of interrupted writes
        if old.is_dir() and old != target:
            shutil.rmtree(old, ignore_errors=True)
        elif old.name.startswith(".") and old.name.endswith(".tmp"):
            old.unlink(missing_ok=True)
    return target


def _episodes_of(name: str) -> int:
    return int(name.split("-", 1)[1])


def whole_sets(folder: Path, below: int | None = None) -> list[Path]:
    """Set folders in ``folder`` holding every part (newest first), of fewer than ``below`` episodes if given."""
    if not folder.is_dir():
        return []
    found = [
        p
        for p in folder.iterdir()
        if SET_NAME.fullmatch(p.name) and not p.is_symlink() and all((p / part).is_file() for part in PARTS)
    ]
    found = [p for p in found if below is None or _episodes_of(p.name) < below]
    return sorted(found, key=lambda p: _episodes_of(p.name), reverse=True)


def remedy(folder: Path, target: Path) -> str:
    """What the user can do when the set ``target`` is damaged: resume from the newest earlier whole set if one is
    still there (after deleting the damaged one), else start over."""
    earlier = whole_sets(folder, below=_episodes_of(target.name)) if SET_NAME.fullmatch(target.name) else []
    if earlier:
        return (
            f"delete {target} and resume again to continue from the earlier whole set {earlier[0].name}"
            f" ({_episodes_of(earlier[0].name)} episodes), or {NEW_RUN}"
        )
    return NEW_RUN


def damaged(path: Path, cause: str, what_to_do: str, kind: str = "checkpoint") -> HySquantError:
    """The one-line error for a ``kind`` file (a checkpoint's; an ``agent``'s, :mod:`agents.artefact`) that cannot be
    used."""
    cause = " ".join(str(cause).split())[:300]
    return HySquantError(f"the {kind} file {path} is damaged ({cause}): {what_to_do}")


def read_checkpoint(folder: Path) -> tuple[Path, int]:
    """The folder of the checkpoint set the manifest names, and its episode count. Raises :class:`HySquantError`
    when there is none, when the manifest is damaged or names anything but a set folder inside ``folder`` (a path
    elsewhere is refused, not followed), or when a part is missing. A set folder the manifest names that is gone
    (deleted after a damaged part) is replaced by the newest earlier whole set, if there is one."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise HySquantError(
            f"resume=true but {folder} holds no checkpoint: pass hydra.run.dir=<the interrupted run's directory>"
        )
    doc = read_json(manifest, NEW_RUN)
    try:
        name, parts, episodes = doc["set"], doc["parts"], int(doc["episodes"])
        if not isinstance(name, str) or not isinstance(parts, list):
            raise TypeError("'set' must be a string and 'parts' a list")
    except (KeyError, TypeError, ValueError) as e:
        raise damaged(manifest, f"{type(e).__name__}: {e}", NEW_RUN) from None
    if doc.get("format") != FORMAT:
        raise damaged(manifest, f"format={doc.get('format')!r}, expected {FORMAT!r}", NEW_RUN)
    if doc.get("version") != VERSION:
        raise HySquantError(
            f"the checkpoint in {folder} was written by an older hysquant-rl (parts {', '.join(map(str, parts))}):"
            f" its agent and replay buffer are pickles, which resume does not read (a pickle can run code); {NEW_RUN}"
        )
    if sorted(map(str, parts)) != sorted(PARTS):
        raise damaged(manifest, f"it names parts {', '.join(map(str, parts))}; a set has {', '.join(PARTS)}", NEW_RUN)
    target = folder / name
    root = folder.resolve()
    if not SET_NAME.fullmatch(name) or target.resolve().parent != root:
        raise HySquantError(
            f"the checkpoint manifest {manifest} names {name!r}, which is not a set folder inside {folder}: refused"
            f" (a manifest names only its own checkpoints); {NEW_RUN}"
        )
    if not target.exists():
        earlier = whole_sets(folder, below=episodes)
        if not earlier:
            raise HySquantError(f"the checkpoint set {target} that {manifest} names is gone: {NEW_RUN}")
        target, episodes = earlier[0], _episodes_of(earlier[0].name)
    missing = [p for p in PARTS if not (target / p).is_file()]
    outside = [p for p in PARTS if p not in missing and (target / p).resolve().parent != target.resolve()]
    if missing or outside:
        problem = f"missing {', '.join(missing)}" if missing else f"{', '.join(outside)} point outside it"
        raise HySquantError(f"the checkpoint {target} is incomplete ({problem}): {remedy(folder, target)}")
    return target, episodes


# -- reading parts: data only ------------------------------------------------------------------------------------


def read_json(path: Path, what_to_do: str, kind: str = "checkpoint") -> dict[str, Any]:
    """A JSON object from ``path``; anything else (unreadable, invalid, nested beyond reason) is :func:`damaged`."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise damaged(path, "JSON nested too deeply", what_to_do, kind) from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise damaged(path, f"{type(e).__name__}: {e}", what_to_do, kind) from None
    if not isinstance(doc, dict):
        raise damaged(path, f"expected a JSON object, got {type(doc).__name__}", what_to_do, kind)
    return doc


def read_arrays(path: Path, names: tuple[str, ...], what_to_do: str, kind: str = "checkpoint") -> dict[str, np.ndarray]:
    """The arrays ``names`` of the ``.npz`` file ``path``, read without pickles (an object array is refused)."""
    try:
        with np.load(path, allow_pickle=False) as saved:
            missing = [n for n in names if n not in saved.files]
            if missing:
                raise damaged(path, f"no array {', '.join(missing)}", what_to_do, kind)
            return {n: saved[n] for n in names}
    except HySquantError:
        raise
    except Exception as e:  # truncated zip, CRC error, object arrays (pickles), not an npz at all
        raise damaged(path, f"{type(e).__name__}: {e}", what_to_do, kind) from None


def read_tensors(path: Path, what_to_do: str, kind: str = "checkpoint") -> dict[str, Any]:
    """A dict of tensors (and plain numbers) saved by ``torch.save``, read with ``weights_only=True``: a pickle that
    names any other Python object is refused, never run."""
    import torch

    try:
        doc = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # random bytes, a truncated file, a pickle of objects
        raise damaged(path, load_error(e), what_to_do, kind) from None
    if not isinstance(doc, dict):
        raise damaged(path, f"expected a dict of tensors, got {type(doc).__name__}", what_to_do, kind)
    return doc


# -- an SB3 agent as data ----------------------------------------------------------------------------------------

# the agent's counters kept in state.json: what SB3's schedules, logging and the actor's rate read
COUNTERS = ("num_timesteps", "_n_updates", "_episode_num", "_current_progress_remaining", "actor_lr_ratio")


def _attr(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def agent_tensors(agent: Any, noises: list[Any]) -> dict[str, Any]:
    """The agent's learned state as a dict of tensors: the state dict of every module and optimiser SB3 saves (the
    policy with actor, critic and their targets; the actor's and the critic's optimisers; SAC's entropy optimiser),
    its torch variables (SAC's entropy coefficient), and each exploration noise's pending draws."""
    import torch

    names, variables = agent._get_torch_save_params()
    return {
        "state_dicts": {n: _attr(agent, n).state_dict() for n in names},
        "variables": {n: _attr(agent, n).detach().clone() for n in variables},
        "noise_draws": [
            torch.from_numpy(np.array(noise._unit, dtype=np.float64).reshape(len(noise._unit), noise.size))
            for noise in noises
        ],
    }


def agent_counters(agent: Any, noises: list[Any]) -> dict[str, Any]:
    """The agent's counters and its exploration noises' states (episodes, generator state), as JSON."""
    return {
        **{k: getattr(agent, k) for k in COUNTERS},
        "noises": [{"episodes": n.episodes, "rng": n._rng.bit_generator.state} for n in noises],
    }


def restore_agent(
    agent: Any,
    noises: list[Any],
    tensors: dict[str, Any],
    counters: Any,
    files: tuple[Path, Path],
    what_to_do: str,
    kind: str = "checkpoint",
) -> None:
    """Fill the freshly built ``agent`` (and its ``noises``) with ``tensors`` (from ``files[0]``, agent.pt) and
    ``counters`` (from ``files[1]``, state.json). Anything that does not fit this run's agent is :func:`damaged`."""
    import torch

    names, variables = agent._get_torch_save_params()
    try:
        dicts, values, draws = tensors["state_dicts"], tensors["variables"], tensors["noise_draws"]
        if sorted(dicts) != sorted(names) or sorted(values) != sorted(variables) or len(draws) != len(noises):
            mine = f"this run's {agent.__class__.__name__} has {', '.join(names)}"
            raise ValueError(f"holds {', '.join(sorted(dicts))}; {mine}")
        for n in names:
            _attr(agent, n).load_state_dict(dicts[n])
        for n in variables:
            with torch.no_grad():
                _attr(agent, n).copy_(values[n])
        units = [np.asarray(d, dtype=np.float64) for d in draws]
        if any(u.ndim != 2 or u.shape[1] != noise.size for u, noise in zip(units, noises)):
            raise ValueError("noise draws of another action size")
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise damaged(files[0], f"{type(e).__name__}: {e}", what_to_do, kind) from None
    try:
        if not isinstance(counters, dict) or len(counters["noises"]) != len(noises):
            raise ValueError("no counters for this agent")
        for k in COUNTERS:
            value = counters[k]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{k}={value!r} is not a number")
            setattr(agent, k, type(getattr(agent, k))(value))
        for noise, saved, unit in zip(noises, counters["noises"], units, strict=True):
            noise.episodes = int(saved["episodes"])
            noise.sigma = noise.sigma0 * noise.decay**noise.episodes
            noise._rng.bit_generator.state = saved["rng"]
            noise._unit = list(unit)
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise damaged(files[1], f"agent counters: {type(e).__name__}: {e}", what_to_do, kind) from None


def buffer_arrays(buffer: Any) -> dict[str, np.ndarray]:
    """The replay buffer's filled rows (all of them once it is full) as arrays, with ``pos`` and ``full``."""
    rows = buffer.buffer_size if buffer.full else buffer.pos
    out = {name: getattr(buffer, name)[:rows] for name in BUFFER_ARRAYS}
    return {**out, "pos": np.array(buffer.pos, dtype=np.int64), "full": np.array(buffer.full)}


def restore_buffer(
    buffer: Any, saved: dict[str, np.ndarray], path: Path, what_to_do: str, kind: str = "checkpoint"
) -> None:
    """Fill the fresh replay ``buffer`` with ``saved`` (:func:`buffer_arrays`' layout, read from ``path``); arrays of
    another shape or type than this run's buffer are :func:`damaged`."""
    try:
        pos, full = int(saved["pos"]), bool(saved["full"])
        if not 0 <= pos < buffer.buffer_size:
            raise ValueError(f"pos={pos} outside a buffer of {buffer.buffer_size}")
        rows = buffer.buffer_size if full else pos
        for name in BUFFER_ARRAYS:
            own, theirs = getattr(buffer, name), saved[name]
            if theirs.shape != (rows, *own.shape[1:]) or theirs.dtype != own.dtype:
                raise ValueError(f"{name} is {theirs.dtype}{theirs.shape}, this run's buffer {own.dtype}{own.shape}")
    except (KeyError, TypeError, ValueError) as e:
        raise damaged(path, f"{type(e).__name__}: {e}", what_to_do, kind) from None
    for name in BUFFER_ARRAYS:
        getattr(buffer, name)[:rows] = saved[name]
    buffer.pos, buffer.full = pos, full


def check_resumable(folder: Path) -> Path:
    """The set a resume will read, each part read once as data (JSON, arrays, tensors): a missing, damaged or foreign
    checkpoint is one line before any model, data or LUT work (whether it fits the run is checked when the agent is
    rebuilt)."""
    target, _ = read_checkpoint(folder)
    fix = remedy(folder, target)
    read_json(target / "state.json", fix)
    read_tensors(target / "agent.pt", fix)
    read_arrays(target / "replay_buffer.npz", (*BUFFER_ARRAYS, "pos", "full"), fix)
    read_arrays(target / "episodes.npz", ("raw", "keys", "bits", "warm_start"), fix)
    return target
