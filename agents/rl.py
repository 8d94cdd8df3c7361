"""The RL search method: an SB3 agent on ``HySquant-v0``, warm-started from the LUT's integer program.

Warm start (on by default): the ILP policy over the LUT's ``search.proxy`` column (KL by default) is evaluated
first and its episode is put in the replay buffer, and actions become offsets of up to ``search.offset_range``
bits around it (action 0.5 = the ILP's choice); when a better policy is found the centre moves there and the
replay buffer is rewritten as offsets from it (:meth:`RLSearch._recenter`). The additive proxy already knows each
layer's own sensitivity; the agent spends its episodes on what a sum cannot see, the interactions between layers.
Once updates begin, the critic picks each episode's policy among ``search.candidates`` new ones near the actor's
choice (:class:`envs.ParallelEpisodes`), and ``search.workers`` episodes run at once.
``search.warm_start=false`` gives the plain HAQ-style agent (actions over each layer's full allowed range).
"""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from agents.callbacks import EpisodeStore, SearchCallback
from agents.critic import critic_scores
from agents.factory import exploration_noises, make_agent
from agents.storage import (
    BUFFER_ARRAYS,
    agent_counters,
    agent_tensors,
    buffer_arrays,
    damaged,
    read_arrays,
    read_checkpoint,
    read_json,
    read_tensors,
    remedy,
    restore_agent,
    restore_buffer,
    write_checkpoint,
)
from envs import HySquantEnv, ParallelEpisodes
from hysquant_rl.errors import HySquantError, NoPolicyError, SearchInterrupted
from hysquant_rl.io import npz_bytes, torch_bytes
from hysquant_rl.search.problem import SearchProblem
from hysquant_rl.search.ranking import clearly_ranks, kendall, prospective_pairs
from hysquant_rl.search.recorder import Recorder
from hysquant_rl.settings import SearchSettings

log = logging.getLogger(__name__)
CHECKPOINT_DIR = "checkpoints"


class RLSearch:
    """``run(limits)`` trains the agent for ``search.episodes`` more episodes and returns the best policy
    that meets ``limits`` (a policy is always projected onto them in ``project`` mode)."""

    def __init__(self, search: SearchSettings, problem: SearchProblem, recorder: Recorder, out: Path) -> None:
        self.search, self.recorder, self.out = search, recorder, out
        self.problem = problem
        self.L = problem.num_units
        self.warm = search.warm_start
        if self.warm:
            self.problem.warm_start = self._ilp(self.problem.limits)
        # search.workers episodes at a time; once the agent learns, its critic picks among search.candidates
        self.env = ParallelEpisodes(self.problem, search.workers, search.seed, search.candidates)
        self.single = HySquantEnv(self.problem)  # action <-> bits, the warm-start episode, evaluated trajectories
        self.store = EpisodeStore(self.single.trajectory, search.agent.normalize_reward)
        self.ckpt = out / CHECKPOINT_DIR
        self.state = {"episodes_done": 0, "seeded": False, "round": 0}
        self.bar: tqdm | None = None
        self.stop_requested: str | bool = False
        self.agent = self._load() if search.resume else self._new_agent()

    def _new_agent(self):
        """The agent the run's settings make (a resume fills it from the checkpoint)."""
        # with a warm start: exploration of search.warm_start_noise_bits around the agent's choice
        local_sigma = self.single.bits_to_action(self.search.warm_start_noise_bits) if self.warm else None
        return make_agent(self.search.agent, self.env, self.L, self.search.seed, local_sigma=local_sigma)

    # -- pieces ------------------------------------------------------------------------------------------
    def _ilp(self, limits: dict[str, float]) -> np.ndarray:
        p = self.problem
        bits = p.ilp(limits=limits)
        if bits is None:
            raise NoPolicyError("the LUT's integer program found no policy within the budgets: relax them")
        return p.canonical(bits)

    def _score(self, policies: list[np.ndarray]) -> np.ndarray:
        """The critic's predicted gain of each policy over the incumbent (the warm start, the best policy so far):
        its score (:func:`agents.critic.critic_scores`) minus the incumbent's, by the same critic. The pick is the
        same as by the scores themselves; the gain is what the episode records as its prediction
        (:mod:`hysquant_rl.search.ranking`)."""
        centre = [] if self.problem.warm_start is None else [self.problem.warm_start]
        scores = critic_scores(self.agent, self.single.trajectory, [*policies, *centre])
        return scores[: len(policies)] - (scores[-1] if centre else 0.0)

    def _screen(self) -> None:
        """How many candidates the critic screens from now on: ``search.screen.candidates`` once its prospective
        ranking of the episodes it scored is clearly above chance (:func:`hysquant_rl.search.ranking.clearly_ranks`),
        else ``search.candidates``."""
        screen = self.search.screen
        if screen.candidates <= self.search.candidates:
            return
        tau = kendall(*prospective_pairs(self.recorder.history))
        wanted = screen.candidates if clearly_ranks(tau, screen.min_pairs, screen.p_max) else self.search.candidates
        if wanted != self.env.candidates:
            log.info(
                "the critic screens %d candidates from episode %d (its tau %s over %d scored episodes, p %s)",
                wanted,
                len(self.recorder.history),
                tau["tau"],
                tau["pairs"],
                tau["p"],
            )
            self.env.candidates = wanted

    def _after_rollout(self) -> None:
        self._recenter()
        self._screen()

    def _recenter(self) -> None:
        """With a warm start, actions are offsets from the best policy found so far (elitism, as a local search's
        incumbent): when it improves, the warm start moves there and the replay buffer's actions are rewritten as
        offsets from it."""
        best = self.recorder.best_within(self.problem.limits) if self.warm else None
        if best is None:
            return
        bits = self.problem.canonical(best)
        if not np.array_equal(bits, self.problem.warm_start):
            self.problem.warm_start = bits
            self.store.relabel(self.agent)

    def _on_episode(self, info: dict[str, Any]) -> None:
        self.recorder.record(info)
        self.state["episodes_done"] += 1
        if self.bar is not None:
            best = self.recorder.best
            self.bar.set_postfix(reward=f"{info['reward']:.3f}", best_top1=f"{best['top1']:.2f}" if best else "-")
            self.bar.update(1)

    def _seed_episode(self) -> None:
        """Evaluate the warm-start policy as the first episode and store it (HAQ's reward copy) in every
        environment's column of the replay buffer."""
        agent, n = self.agent, self.env.num_envs
        info = self.problem.finish(self.problem.warm_start)
        obs, next_obs, actions = self.single.trajectory(info["bits"])
        for l in range(self.L):
            agent.replay_buffer.add(
                *(np.repeat(x[None], n, 0) for x in (obs[l], next_obs[l], agent.policy.scale_action(actions[l]))),
                np.zeros(n),
                np.full(n, l == self.L - 1),
                [{}] * n,
            )
        self.store.store(agent, [(info["bits"], info["reward"])] * n)
        self._on_episode(info)
        self.state["seeded"] = True

    # -- checkpoints -------------------------------------------------------------------------------------
    def checkpoint(self) -> None:
        """Agent, replay buffer and search state (history, best, evaluation cache, the problem's identity) as one
        consistent set of data files (:mod:`agents.storage`): no pickles."""
        noises = exploration_noises(self.agent)
        state = {
            **self.state,
            "agent": self.search.agent.name,
            "identity": self.problem.identity,
            "history": self.recorder.history,
            "best": self.recorder.best,
            "sb3": agent_counters(self.agent, noises),
            "cache": {k.hex(): v for k, v in self.problem.cache.items()},
        }
        # each part serialised in memory first: a full disk is then the OSError of a write, whatever the format
        blobs = {
            "agent.pt": torch_bytes(agent_tensors(self.agent, noises)),
            "replay_buffer.npz": npz_bytes(**buffer_arrays(self.agent.replay_buffer)),
            "episodes.npz": npz_bytes(
                raw=np.zeros((0, 0)) if self.store.raw is None else self.store.raw,  # None: nothing stored yet
                keys=np.array(list(self.store.episodes), dtype=np.int64).reshape(-1, 2),
                bits=np.array(list(self.store.episodes.values()), dtype=np.int64).reshape(-1, self.L, 2),
                warm_start=np.zeros((0, 2)) if self.problem.warm_start is None else self.problem.warm_start,
            ),
            "state.json": (json.dumps(state, indent=1) + "\n").encode(),
        }
        parts = {name: (lambda f, blob=blob: f.write(blob)) for name, blob in blobs.items()}
        write_checkpoint(self.ckpt, self.state["episodes_done"], parts)

    def _load(self):
        """The agent rebuilt from the run's settings and filled with the checkpoint's data; the search state
        restored. Every file is read as data (JSON, ``.npz`` without pickles, tensors with ``weights_only``); one
        that is damaged or does not fit this run is one line naming it."""
        folder, _ = read_checkpoint(self.ckpt)
        fix = remedy(self.ckpt, folder)
        path = folder / "state.json"
        state = read_json(path, fix, allow_nan=True)  # the history records evaluations that returned NaN
        name = state.get("agent")
        if name != self.search.agent.name:
            if not isinstance(name, str):
                raise damaged(path, f"agent={name!r}", fix)
            raise HySquantError(f"the checkpoint in {self.ckpt} is a {name} agent: resume with agent={name}")
        theirs, ours = state.get("identity"), self.problem.identity
        if not isinstance(theirs, dict):
            raise damaged(path, f"identity={theirs!r}", fix)
        changed = sorted(k for k in ours if theirs.get(k) != ours[k])
        if changed:
            raise HySquantError(
                f"the checkpoint in {self.ckpt} was made with other {' and '.join(changed)} than this run has: resume"
                " with the interrupted run's model, data and budgets, or start a new run directory"
            )
        try:
            history, best, cache = state["history"], state["best"], state["cache"]
            counts = {k: state[k] for k in ("episodes_done", "seeded", "round")}
            if not isinstance(history, list) or not all(isinstance(e, dict) for e in history):
                raise TypeError("history must be a list of episodes")
            if not (best is None or isinstance(best, dict)) or not isinstance(cache, dict):
                raise TypeError("best must be an episode or null, cache an object")
            cache = {bytes.fromhex(k): v for k, v in cache.items()}
            numbers = (counts["episodes_done"], counts["round"])
            if not isinstance(counts["seeded"], bool) or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in numbers
            ):
                raise ValueError(f"episodes_done, seeded, round = {', '.join(map(repr, counts.values()))}")
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise damaged(path, f"{type(e).__name__}: {e}", fix) from None
        agent = self._new_agent()
        noises = exploration_noises(agent)
        tensors = read_tensors(folder / "agent.pt", fix)
        restore_agent(agent, noises, tensors, state.get("sb3"), (folder / "agent.pt", path), fix)
        buffer = folder / "replay_buffer.npz"
        restore_buffer(agent.replay_buffer, read_arrays(buffer, (*BUFFER_ARRAYS, "pos", "full"), fix), buffer, fix)
        stored = folder / "episodes.npz"
        saved = read_arrays(stored, ("raw", "keys", "bits", "warm_start"), fix)
        raw, keys, bits, warm = saved["raw"], saved["keys"], saved["bits"], saved["warm_start"]
        shape = agent.replay_buffer.rewards.shape
        if raw.size and raw.shape != shape:
            raise damaged(stored, f"raw rewards of shape {raw.shape}, the buffer's are {shape}", fix)
        if keys.ndim != 2 or bits.shape != (len(keys), self.L, 2) or (len(warm) and warm.shape != (self.L, 2)):
            shapes = f"keys {keys.shape}, bits {bits.shape}, warm_start {warm.shape}"
            raise damaged(stored, f"{shapes} for {self.L} units", fix)
        self.store.raw = raw if raw.size else None
        self.store.episodes = {(int(a), int(b)): policy for (a, b), policy in zip(keys, bits)}
        if len(warm):
            self.problem.warm_start = warm.astype(np.int64)
        self.recorder.history = history
        self.recorder.best = best
        self.problem.cache.update(cache)
        self.state = counts
        log.info("resumed from %s after %d episodes", folder, counts["episodes_done"])
        return agent

    def _stop_on_signals(self) -> dict[int, Any]:
        """SIGINT and SIGTERM ask the search to stop after the episode in progress; returns the old handlers."""

        def ask(signum: int, frame: Any) -> None:
            if self.stop_requested:  # a second signal: stop now
                raise KeyboardInterrupt
            self.stop_requested = signal.Signals(signum).name
            log.warning("%s: stopping after the episode in progress (again to stop now)", self.stop_requested)

        return {s: signal.signal(s, ask) for s in (signal.SIGINT, signal.SIGTERM)}

    # -- the search --------------------------------------------------------------------------------------
    def run(self, limits: dict[str, float], round_index: int = 0) -> np.ndarray | None:
        p = self.problem
        p.limits = dict(limits)
        if self.warm and round_index > 0:
            p.warm_start = self._ilp(p.limits)
            self.store.relabel(self.agent)
        target = self.search.episodes * (round_index + 1)  # episodes per round, counted across a resume
        self.state["round"] = round_index
        self.bar = tqdm(
            total=target,
            initial=self.state["episodes_done"],
            desc=f"search round {round_index}",
            unit="episode",
            disable=None,
        )
        handlers = self._stop_on_signals()
        try:
            if self.warm and not self.state["seeded"]:
                self._seed_episode()
            remaining = target - self.state["episodes_done"]
            callback = SearchCallback(
                self.L,
                self._on_episode,
                self.checkpoint,
                self.search.checkpoint_every,
                self.store,
                lambda: self.stop_requested,
                self._after_rollout,
            )
            n = self.env.num_envs  # episodes per rollout: a phase of k episodes runs ceil(k / n) rollouts
            # local search: the warm-up explores with noise around the (centred) actor, without updates
            explore = 0
            if self.warm:
                explore = min(remaining, max(0, self.search.agent.warmup_episodes + 1 - self.state["episodes_done"]))
            if explore > 0:
                steps, self.agent.gradient_steps = self.agent.gradient_steps, 0
                try:
                    self.agent.learn(-(-explore // n) * n * self.L, callback=callback, reset_num_timesteps=False)
                finally:
                    self.agent.gradient_steps = steps
            remaining = target - self.state["episodes_done"]
            if remaining > 0:
                self.env.scorer = self._score  # the critic has started learning: it screens the candidates
                self.agent.learn(-(-remaining // n) * n * self.L, callback=callback, reset_num_timesteps=False)
        finally:
            self.env.scorer = None
            self.bar.close()
            self.bar = None
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
        self.checkpoint()
        if self.stop_requested:
            raise SearchInterrupted(
                f"{self.stop_requested} after {self.state['episodes_done']} episodes: the checkpoint in {self.ckpt}"
                f" holds them; resume with hysquant-search resume=true hydra.run.dir={self.out}"
            )
        return self.recorder.best_within(limits)
