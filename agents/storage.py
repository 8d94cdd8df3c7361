"""Saving and loading agents, as data only, in one place: the checkpoint sets of a running RL search and the trained
budget-conditioned agent a run leaves behind. Both are folders of parts read without any pickle: the networks and
optimisers as a dict of tensors (``torch.load(weights_only=True)``), the replay buffer and episode store as arrays
(``.npz``, ``allow_pickle=False``), the rest as strict JSON.

**Checkpoint sets** (``checkpoints/`` of an RL search), written as one consistent set, made of data only.

A checkpoint is a folder ``checkpoints/episode-NNNNNN/`` holding every part, each written atomically, and then
``checkpoints/latest.json`` (the manifest), written atomically last, naming that folder and its parts. A process
killed at any moment leaves the manifest naming a complete earlier set; a resume reads only what the manifest names.
Older sets and temporary files of interrupted writes are removed once a new set is in force.

The parts (:data:`CHECKPOINT_PARTS`) are data, never code: the agent's networks, optimiser states and SAC's entropy
coefficient as a plain dict of tensors (``agent.pt``, read with ``torch.load(weights_only=True)``), the replay buffer
and the episode store as arrays (``.npz``, read with ``allow_pickle=False``), the search state and the agent's
counters as JSON (``state.json``). No pickle is ever read from a run directory: the agent is rebuilt from the run's
settings (:func:`agents.factory.make_agent`) and filled with these. The manifest may name only a set folder inside
its own ``checkpoints/``; a damaged part is one line naming the file and what the user can do (start a new run
directory, or resume from an earlier whole set that is still there).

``HYSQUANT_TEST_KILL_AT=<episodes>:<part>`` (tests only) kills the process with SIGKILL right after that part of
that checkpoint is written (``manifest`` for the manifest), to check the above.

**A trained agent** (``agent/`` of an ``rl-cond`` run): the budget-conditioned agent (:mod:`agents.conditioned`) as a
folder of data files, and loading it back.

The folder (``agent/`` in a run directory) holds, as a checkpoint does, data only:

* ``agent.pt``: the networks' and optimisers' state dicts, a plain dict of tensors (``torch.load(weights_only=True)``);
* ``replay_buffer.npz``: the replay buffer's filled rows; ``episodes.npz``: the episode store (raw advantages, which
  episode each buffer slot holds), both read with ``allow_pickle=False``;
* ``agent.json``, written last: the format and version, the settings it was trained for (the agent's hyperparameters,
  the training budgets with their centres, baselines and best policies, the search settings it trained with), its
  training history, its SB3 counters, and its *identity*: what its numbers are about (the model's weights, the data
  and LUT, the device profile, the budget key, the units, the observation, the offset range, the reward).

It is written into a temporary folder that then replaces ``agent/`` by a rename, so a reader sees a whole artefact or
the previous one. Loading reads ``agent.json`` first and refuses, in one line naming what differs, an agent made for
another model, LUT, profile, budget key or observation than the run's; the agent is then rebuilt from its recorded
hyperparameters (:func:`agents.factory.make_agent`) and filled with the tensors and arrays. No pickle is read.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

import numpy as np

from agents.conditioned import ConditionedAgent, Target
from envs import HySquantEnv
from hysquant_rl.errors import HySquantError
from hysquant_rl.io import (
    UnsafeFile,
    atomic_write,
    finite_or_none,
    json_bytes,
    load_error,
    npz_bytes,
    open_regular,
    save_json,
    torch_bytes,
)
from hysquant_rl.io import read_json as read_json_file
from hysquant_rl.search.problem import SearchProblem
from hysquant_rl.settings import AgentSettings, SearchSettings

CHECKPOINT_MANIFEST = "latest.json"
CHECKPOINT_FORMAT = "hysquant-checkpoint"
CHECKPOINT_VERSION = 2  # 1: SB3's agent.zip and a pickled replay buffer (never read: a pickle can run code)
CHECKPOINT_PARTS = ("agent.pt", "replay_buffer.npz", "episodes.npz", "state.json")
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
    had_one = (folder / CHECKPOINT_MANIFEST).is_file()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if target.is_symlink():  # planted: removed as the link it is, never followed
            target.unlink()
        elif target.exists():  # a set of the same count that a crash left behind, never named by the manifest
            shutil.rmtree(target)
        for name, write in parts.items():  # the set folder is created, and every part written, without following links
            atomic_write(target / name, write, under=folder.parent)
            _test_kill(episodes, name)
        save_json(
            {
                "format": CHECKPOINT_FORMAT,
                "version": CHECKPOINT_VERSION,
                "episodes": episodes,
                "set": target.name,
                "parts": sorted(parts),
            },
            folder / CHECKPOINT_MANIFEST,
            under=folder.parent,
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
        if SET_NAME.fullmatch(p.name) and not p.is_symlink() and all((p / part).is_file() for part in CHECKPOINT_PARTS)
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
    """The one-line error for a ``kind`` file (a checkpoint's; an ``agent``'s, :mod:`agents.storage`) that cannot be
    used."""
    cause = " ".join(str(cause).split())[:300]
    return HySquantError(f"the {kind} file {path} is damaged ({cause}): {what_to_do}")


def read_checkpoint(folder: Path) -> tuple[Path, int]:
    """The folder of the checkpoint set the manifest names, and its episode count. Raises :class:`HySquantError`
    when there is none, when the manifest is damaged or names anything but a set folder inside ``folder`` (a path
    elsewhere is refused, not followed), or when a part is missing. A set folder the manifest names that is gone
    (deleted after a damaged part) is replaced by the newest earlier whole set, if there is one."""
    manifest = folder / CHECKPOINT_MANIFEST
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
    if doc.get("format") != CHECKPOINT_FORMAT:
        raise damaged(manifest, f"format={doc.get('format')!r}, expected {CHECKPOINT_FORMAT!r}", NEW_RUN)
    if doc.get("version") != CHECKPOINT_VERSION:
        raise HySquantError(
            f"the checkpoint in {folder} was written by an older hysquant-rl (parts {', '.join(map(str, parts))}):"
            f" its agent and replay buffer are pickles, which resume does not read (a pickle can run code); {NEW_RUN}"
        )
    if sorted(map(str, parts)) != sorted(CHECKPOINT_PARTS):
        raise damaged(
            manifest, f"it names parts {', '.join(map(str, parts))}; a set has {', '.join(CHECKPOINT_PARTS)}", NEW_RUN
        )
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
    missing = [p for p in CHECKPOINT_PARTS if not (target / p).is_file()]
    outside = [p for p in CHECKPOINT_PARTS if p not in missing and (target / p).resolve().parent != target.resolve()]
    if missing or outside:
        problem = f"missing {', '.join(missing)}" if missing else f"{', '.join(outside)} point outside it"
        raise HySquantError(f"the checkpoint {target} is incomplete ({problem}): {remedy(folder, target)}")
    return target, episodes


# -- reading parts: data only ------------------------------------------------------------------------------------


def read_json(path: Path, what_to_do: str, kind: str = "checkpoint", allow_nan: bool = False) -> dict[str, Any]:
    """A JSON object from ``path`` (:func:`hysquant_rl.io.read_json`: a regular file, never through a link, of at most
    the limit of a JSON document); anything else (a link, a FIFO, unreadable, invalid, nested beyond reason, a NaN or
    an infinity unless ``allow_nan``: a search state records evaluations that returned NaN) is :func:`damaged`."""
    try:
        doc = read_json_file(path, "json", allow_nan=allow_nan)
    except UnsafeFile as e:
        raise damaged(path, e.problem, what_to_do, kind) from None
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
        with open_regular(path, "arrays") as f, np.load(f, allow_pickle=False) as saved:
            missing = [n for n in names if n not in saved.files]
            if missing:
                raise damaged(path, f"no array {', '.join(missing)}", what_to_do, kind)
            return {n: saved[n] for n in names}
    except UnsafeFile as e:
        raise damaged(path, e.problem, what_to_do, kind) from None
    except HySquantError:
        raise
    except Exception as e:  # truncated zip, CRC error, object arrays (pickles), not an npz at all
        raise damaged(path, f"{type(e).__name__}: {e}", what_to_do, kind) from None


def read_tensors(path: Path, what_to_do: str, kind: str = "checkpoint") -> dict[str, Any]:
    """A dict of tensors (and plain numbers) saved by ``torch.save``, read with ``weights_only=True``: a pickle that
    names any other Python object is refused, never run."""
    import torch

    try:
        with open_regular(path, "tensors") as f:
            doc = torch.load(f, map_location="cpu", weights_only=True)
    except UnsafeFile as e:
        raise damaged(path, e.problem, what_to_do, kind) from None
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
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise TypeError(f"{k}={value!r} is not a finite number")
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
    read_json(target / "state.json", fix, allow_nan=True)
    read_tensors(target / "agent.pt", fix)
    read_arrays(target / "replay_buffer.npz", (*BUFFER_ARRAYS, "pos", "full"), fix)
    read_arrays(target / "episodes.npz", ("raw", "keys", "bits", "warm_start"), fix)
    return target


# -- a trained agent -----------------------------------------------------------------------------------------------
AGENT_FORMAT = "hysquant-conditioned-agent"
AGENT_VERSION = 1
AGENT_MANIFEST = "agent.json"
AGENT_PARTS = ("agent.pt", "replay_buffer.npz", "episodes.npz")
KIND = "agent"  # damaged files are "the agent file <path>"
RETRAIN = "train one for this run (search.transfer.agent=null) or pass the agent folder of a training like this run"


def identity(problem: SearchProblem, key: str) -> dict[str, Any]:
    """What an agent's numbers are about, for ``problem`` answering budgets of ``key``: a loaded agent must match the
    run's in every item."""
    return {
        "model weights": problem.identity.get("model weights"),
        "data and LUT": problem.identity.get("data and LUT"),
        "device profile": problem.profile,
        "budget key": key,
        "units": problem.num_units,
        "observation": int(HySquantEnv(problem, condition=True).observation_space.shape[0]),
        "offset range": problem.offset_range,
        "reward": {"metric": problem.reward_metric, "scale": problem.reward_scale},
    }


def save_agent(agent: ConditionedAgent, folder: Path) -> Path:
    """Write ``agent`` as the artefact ``folder`` (see the module docstring); returns ``folder``."""
    store = agent.store
    doc = {
        "format": AGENT_FORMAT,
        "version": AGENT_VERSION,
        "parts": list(AGENT_PARTS),
        "identity": identity(agent.problem, agent.key),
        "agent": asdict(agent.agent),
        "trained_with": {
            "seed": agent.search.seed,
            "candidates": agent.search.candidates,
            "warm_start_noise_bits": agent.search.warm_start_noise_bits,
            "swap_moves": agent.search.swap_moves,
            "episodes": len(agent.history),
            "evaluations": len(agent.problem.cache),
        },
        "targets": [t.to_dict() for t in agent.targets],
        "history": finite_or_none(agent.history),  # an evaluation that returned NaN is recorded as null
        "sb3": agent_counters(agent.model, agent.noises),
    }
    blobs = {
        "agent.pt": torch_bytes(agent_tensors(agent.model, agent.noises)),
        "replay_buffer.npz": npz_bytes(**buffer_arrays(agent.model.replay_buffer)),
        "episodes.npz": npz_bytes(
            raw=np.zeros((0, 0)) if store.raw is None else store.raw,
            keys=np.array(list(store.episodes), dtype=np.int64).reshape(-1, 2),
            bits=np.array(list(store.episodes.values()), dtype=np.int64).reshape(-1, agent.L, 2),
        ),
        AGENT_MANIFEST: json_bytes(
            doc, folder / AGENT_MANIFEST, indent=1
        ),  # NaN and Infinity refused: a reader refuses them
    }
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    old = folder.with_name(f".{folder.name}.{os.getpid()}.old")
    if tmp.is_symlink():
        tmp.unlink()
    shutil.rmtree(tmp, ignore_errors=True)
    for name, blob in blobs.items():  # agent.json last; never through a link planted beside the folder
        atomic_write(tmp / name, lambda f, blob=blob: f.write(blob), under=folder.parent)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def read_manifest(folder: Path) -> dict[str, Any]:
    """``agent.json`` of the artefact ``folder``, its format checked: what can be known before any model or LUT
    work. A folder without one, or of another format or version, is one line."""
    path = folder / AGENT_MANIFEST
    if not path.is_file():
        raise HySquantError(
            f"search.transfer.agent={folder} holds no trained agent ({AGENT_MANIFEST} is missing): {RETRAIN}"
        )
    doc = read_json(path, RETRAIN, KIND)
    if doc.get("format") != AGENT_FORMAT or doc.get("version") != AGENT_VERSION:
        raise damaged(
            path,
            f"format {doc.get('format')!r} version {doc.get('version')!r}, expected {AGENT_FORMAT!r} {AGENT_VERSION}",
            RETRAIN,
            KIND,
        )
    missing = [p for p in AGENT_PARTS if not (folder / p).is_file()]
    if missing:
        raise HySquantError(f"the agent in {folder} is incomplete (missing {', '.join(missing)}): {RETRAIN}")
    return doc


def load_agent(folder: Path, search: SearchSettings, problem: SearchProblem) -> ConditionedAgent:
    """The agent saved in ``folder``, rebuilt over ``problem`` (the run's, whose one budget it answers) with the
    run's ``search`` settings for answering; refused in one line when it was made for another model, LUT, profile,
    budget key or observation, or by another agent than ``agent.name``."""
    doc = read_manifest(folder)
    path = folder / AGENT_MANIFEST
    keys = sorted(problem.limits)
    key = keys[0] if len(keys) == 1 else ", ".join(keys) or "no budget"
    theirs, ours = doc.get("identity"), identity(problem, key)
    if not isinstance(theirs, dict):
        raise damaged(path, f"identity={theirs!r}", RETRAIN, KIND)
    changed = [k for k in ours if json.dumps(theirs.get(k), sort_keys=True) != json.dumps(ours[k], sort_keys=True)]
    if changed:
        raise HySquantError(
            f"the agent in {folder} was trained for another "
            + "; another ".join(f"{k} ({_short(theirs.get(k))}; this run: {_short(ours[k])})" for k in changed)
            + f": {RETRAIN}"
        )
    try:
        settings = AgentSettings.from_mapping(doc["agent"])
    except (KeyError, TypeError) as e:
        raise damaged(path, f"agent settings: {type(e).__name__}: {e}", RETRAIN, KIND) from None
    except HySquantError as e:
        raise damaged(path, f"agent settings: {e}", RETRAIN, KIND) from None
    if settings.name != search.agent.name:
        raise HySquantError(f"the agent in {folder} is a {settings.name} agent: answer with agent={settings.name}")
    agent = ConditionedAgent(search, problem, settings)
    agent.targets = _targets(doc, path, problem.num_units, agent.key)
    agent.history = doc.get("history") or []
    tensors = read_tensors(folder / "agent.pt", RETRAIN, KIND)
    restore_agent(agent.model, agent.noises, tensors, doc.get("sb3"), (folder / "agent.pt", path), RETRAIN, KIND)
    buffer = folder / "replay_buffer.npz"
    saved = read_arrays(buffer, (*BUFFER_ARRAYS, "pos", "full"), RETRAIN, KIND)
    restore_buffer(agent.model.replay_buffer, saved, buffer, RETRAIN, KIND)
    stored = folder / "episodes.npz"
    arrays = read_arrays(stored, ("raw", "keys", "bits"), RETRAIN, KIND)
    raw, ids, bits = arrays["raw"], arrays["keys"], arrays["bits"]
    shape = agent.model.replay_buffer.rewards.shape
    if (raw.size and raw.shape != shape) or ids.ndim != 2 or bits.shape != (len(ids), agent.L, 2):
        raise damaged(
            stored, f"raw {raw.shape}, keys {ids.shape}, bits {bits.shape} for a buffer {shape}", RETRAIN, KIND
        )
    agent.store.raw = raw if raw.size else None
    agent.store.episodes = {(int(a), int(b)): policy for (a, b), policy in zip(ids, bits)}
    return agent


def _targets(doc: dict[str, Any], path: Path, units: int, key: str) -> list[Target]:
    """The training budgets recorded in ``agent.json`` (``path``), checked."""
    try:
        out = []
        for t in doc["targets"]:
            centre = np.asarray(t["centre"], dtype=np.int64)
            if centre.shape != (units, 2) or sorted(t["limits"]) != [key]:
                raise ValueError(f"a budget of {sorted(t['limits'])} with a centre of shape {centre.shape}")
            best = t["best"]
            record = None if best is None else {"reward": _finite(best["reward"]), "bits": np.asarray(best["bits"])}
            limits = {key: _finite(t["limits"][key])}
            out.append(Target(limits, _finite(t["fraction"]), centre, _finite(t["baseline"]), record))
        if not out:
            raise ValueError("no training budget")
    except (KeyError, TypeError, ValueError) as e:
        raise damaged(path, f"targets: {type(e).__name__}: {e}", RETRAIN, KIND) from None
    return out


def _finite(value: Any) -> float:
    """A number of ``agent.json`` that the agent computes with: finite (a string such as ``"NaN"`` is refused too)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{value!r} is not a finite number")
    return float(value)


def _short(value: Any) -> str:
    """An identity item in a message: a digest's first 12 characters, a profile as ``rtx3080 batch 64 modelled``."""
    if isinstance(value, str):
        return value[:12] if len(value) == 64 else value
    if isinstance(value, dict) and {"device", "batch_size"} <= set(value):
        return f"{value['device']} batch {value['batch_size']} {value.get('backend', '')}".strip()
    return json.dumps(value, sort_keys=True)
