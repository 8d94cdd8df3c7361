"""A trained budget-conditioned agent (:mod:`agents.conditioned`) as a folder of data files, and loading it back.

The folder (``agent/`` in a run directory) holds, as a checkpoint does (:mod:`agents.checkpoint`), data only:

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
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from agents.checkpoint import (
    BUFFER_ARRAYS,
    agent_counters,
    agent_tensors,
    buffer_arrays,
    damaged,
    read_arrays,
    read_json,
    read_tensors,
    restore_agent,
    restore_buffer,
)
from agents.conditioned import ConditionedAgent, Target
from envs import HySquantEnv
from hysquant_rl.errors import HySquantError
from hysquant_rl.io import atomic_write, npz_bytes, torch_bytes
from hysquant_rl.search.problem import SearchProblem
from hysquant_rl.settings import AgentSettings, SearchSettings

FORMAT = "hysquant-conditioned-agent"
VERSION = 1
MANIFEST = "agent.json"
PARTS = ("agent.pt", "replay_buffer.npz", "episodes.npz")
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
        "units": problem.num_layers,
        "observation": int(HySquantEnv(problem, condition=True).observation_space.shape[0]),
        "offset range": problem.offset_range,
        "reward": {"metric": problem.reward_metric, "scale": problem.reward_scale},
    }


def save_agent(agent: ConditionedAgent, folder: Path) -> Path:
    """Write ``agent`` as the artefact ``folder`` (see the module docstring); returns ``folder``."""
    store = agent.store
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "parts": list(PARTS),
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
        "history": agent.history,
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
        MANIFEST: (json.dumps(doc, indent=1) + "\n").encode(),
    }
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    old = folder.with_name(f".{folder.name}.{os.getpid()}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    for name, blob in blobs.items():  # agent.json last
        atomic_write(tmp / name, lambda f, blob=blob: f.write(blob))
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def read_manifest(folder: Path) -> dict[str, Any]:
    """``agent.json`` of the artefact ``folder``, its format checked: what can be known before any model or LUT
    work. A folder without one, or of another format or version, is one line."""
    path = folder / MANIFEST
    if not path.is_file():
        raise HySquantError(f"search.transfer.agent={folder} holds no trained agent ({MANIFEST} is missing): {RETRAIN}")
    doc = read_json(path, RETRAIN, KIND)
    if doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise damaged(
            path,
            f"format {doc.get('format')!r} version {doc.get('version')!r}, expected {FORMAT!r} {VERSION}",
            RETRAIN,
            KIND,
        )
    missing = [p for p in PARTS if not (folder / p).is_file()]
    if missing:
        raise HySquantError(f"the agent in {folder} is incomplete (missing {', '.join(missing)}): {RETRAIN}")
    return doc


def load_agent(folder: Path, search: SearchSettings, problem: SearchProblem) -> ConditionedAgent:
    """The agent saved in ``folder``, rebuilt over ``problem`` (the run's, whose one budget it answers) with the
    run's ``search`` settings for answering; refused in one line when it was made for another model, LUT, profile,
    budget key or observation, or by another agent than ``agent.name``."""
    doc = read_manifest(folder)
    path = folder / MANIFEST
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
    agent.targets = _targets(doc, path, problem.num_layers, agent.key)
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
            record = None if best is None else {"reward": float(best["reward"]), "bits": np.asarray(best["bits"])}
            limits = {key: float(t["limits"][key])}
            out.append(Target(limits, float(t["fraction"]), centre, float(t["baseline"]), record))
        if not out:
            raise ValueError("no training budget")
    except (KeyError, TypeError, ValueError) as e:
        raise damaged(path, f"targets: {type(e).__name__}: {e}", RETRAIN, KIND) from None
    return out


def _short(value: Any) -> str:
    """An identity item in a message: a digest's first 12 characters, a profile as ``rtx3080 batch 64 modelled``."""
    if isinstance(value, str):
        return value[:12] if len(value) == 64 else value
    if isinstance(value, dict) and {"device", "batch_size"} <= set(value):
        return f"{value['device']} batch {value['batch_size']} {value.get('backend', '')}".strip()
    return json.dumps(value, sort_keys=True)
