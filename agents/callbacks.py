"""The search's SB3 callback: HAQ's reward copy (optionally standardised), TensorBoard, best-policy tracking,
checkpoints."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

log = logging.getLogger(__name__)
MAD_TO_STD = 1.4826  # a normal distribution's standard deviation per median absolute deviation
CLIP = 5.0  # standardised rewards are clipped to +-CLIP: one wrecked policy does not set the critic's scale


class EpisodeStore:
    """Writes ended episodes into the replay buffer: HAQ's reward copy, on the transitions of the policy evaluated.

    An episode's transitions are rewritten as if it had chosen the policy it evaluated (``trajectory``: that
    policy's observations and actions), since the budget projection and the novelty step may have changed what the
    actor and its noise chose; every transition gets the episode's terminal reward (HAQ).

    With ``normalize`` the buffer holds the rewards standardised over all episodes in it, robustly: minus their
    median, over 1.4826 x their median absolute deviation, clipped to +-5, recomputed after every rollout, so old and
    new episodes share one scale. Raw rewards of a warm-started search differ by thousandths of a nat around the
    warm start and by whole nats where a policy breaks the model; standardised, the critic resolves the first
    without being dominated by the second. ``raw`` keeps the terminal rewards (NaN where no episode is stored)."""

    def __init__(
        self, trajectory: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]], normalize: bool
    ) -> None:
        self.trajectory = trajectory
        self.normalize = normalize
        self.raw: np.ndarray | None = None  # (buffer_size, n_envs)
        self.episodes: dict[tuple[int, int], np.ndarray] = {}  # (first buffer position, column) -> policy (L, 2)

    def store(self, model: Any, episodes: list[tuple[np.ndarray, float]]) -> None:
        """The last L positions of ``model``'s replay buffer hold one episode per environment column: column i
        becomes ``episodes[i]`` = (the policy it evaluated (L, 2), its reward)."""
        buf = model.replay_buffer
        if self.raw is None or self.raw.shape != buf.rewards.shape:
            self.raw = np.full(buf.rewards.shape, np.nan)
        for i, (bits, reward) in enumerate(episodes):
            start = (buf.pos - len(bits)) % buf.buffer_size
            self.episodes = {
                k: v for k, v in self.episodes.items() if not self._overlaps(k, (start, i), len(bits), buf)
            }
            self.episodes[(start, i)] = np.asarray(bits)
            self._write(model, start, i, np.asarray(bits))
            self.raw[self._steps(start, len(bits), buf), i] = reward
        filled = ~np.isnan(self.raw)
        if not self.normalize:
            buf.rewards[filled] = self.raw[filled]
            return
        values = self.raw[filled]
        median = np.median(values)
        spread = MAD_TO_STD * np.median(np.abs(values - median))
        if spread <= 1e-12:  # most rewards equal so far: no robust scale yet
            spread = max(float(np.abs(values - median).max()), 1.0)
        buf.rewards[filled] = np.clip((values - median) / spread, -CLIP, CLIP)

    @staticmethod
    def _steps(start: int, n: int, buf: Any) -> np.ndarray:
        return (start + np.arange(n)) % buf.buffer_size

    def _overlaps(self, key: tuple[int, int], new: tuple[int, int], n: int, buf: Any) -> bool:
        """The stored episode ``key`` (start, column) is (partly) overwritten by a new one of ``n`` steps."""
        return key[1] == new[1] and bool(np.isin(self._steps(key[0], n, buf), self._steps(new[0], n, buf)).any())

    def _write(self, model: Any, start: int, column: int, bits: np.ndarray) -> None:
        obs, next_obs, actions = self.trajectory(bits)
        buf = model.replay_buffer
        idx = self._steps(start, len(bits), buf)
        buf.observations[idx, column] = obs
        buf.next_observations[idx, column] = next_obs
        buf.actions[idx, column] = model.policy.scale_action(actions)

    def relabel(self, model: Any) -> None:
        """Rewrite every stored episode's observations and actions (after the warm start moved: actions are
        offsets from it)."""
        for (start, column), bits in self.episodes.items():
            self._write(model, start, column, bits)


class SearchCallback(BaseCallback):
    """Runs at the end of every rollout: one episode per environment (one episode = one policy).

    Args:
        steps_per_episode: L, the number of layers.
        on_episode: called with the terminal ``info`` of the env (bits, metrics, totals, reward, ...); it logs,
            tracks the best policy and returns nothing.
        on_checkpoint: saves the agent, its replay buffer and the search state.
        checkpoint_every: episodes between checkpoints.
        store: writes the ended episodes into the replay buffer.
        on_rollout: called after each rollout's episodes are stored.
        stop: asked at every step but a terminal one: True stops training there, so the episodes that just ended
            are stored whole (their reward copied) and the ones just begun are dropped.
    """

    def __init__(
        self,
        steps_per_episode: int,
        on_episode: Callable[[dict[str, Any]], None],
        on_checkpoint: Callable[[], None],
        checkpoint_every: int,
        store: EpisodeStore,
        stop: Callable[[], Any] = lambda: False,
        on_rollout: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__()
        self.stop = stop
        self.steps_per_episode = steps_per_episode
        self.on_episode = on_episode
        self.on_checkpoint = on_checkpoint
        self.checkpoint_every = max(1, checkpoint_every)
        self.store = store
        self.on_rollout = on_rollout
        self._pending: list[tuple[np.ndarray, float]] = []
        self.episodes = 0

    def _on_step(self) -> bool:
        if self.locals["dones"].any():  # every episode has L steps: all environments end on this step
            for info in self.locals["infos"]:
                self._pending.append((info["bits"], float(info["reward"])))
                self.on_episode(info)
            return True
        return not self.stop()

    def _on_rollout_end(self) -> None:
        # a rollout is L steps of every environment: one whole episode each, now stored
        if not self._pending:
            return
        self.store.store(self.model, self._pending)
        self.on_rollout()
        before, self.episodes = self.episodes, self.episodes + len(self._pending)
        self._pending = []
        if self.episodes // self.checkpoint_every > before // self.checkpoint_every:
            self.on_checkpoint()
