"""The search's SB3 callback: HAQ's reward copy, TensorBoard, best-policy tracking, checkpoints."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

log = logging.getLogger(__name__)


class SearchCallback(BaseCallback):
    """Runs at the end of every episode (one episode = one policy).

    Args:
        steps_per_episode: L, the number of layers.
        on_episode: called with the terminal ``info`` of the env (bits, metrics, totals, reward, ...); it logs,
            tracks the best policy and returns nothing.
        on_checkpoint: saves the agent, its replay buffer and the search state.
        checkpoint_every: episodes between checkpoints.
        stop: asked at every step but a terminal one: True stops training there, so the episode that just ended
            is stored whole (its reward copied) and the one just begun is dropped.
    """

    def __init__(
        self,
        steps_per_episode: int,
        on_episode: Callable[[dict[str, Any]], None],
        on_checkpoint: Callable[[], None],
        checkpoint_every: int,
        stop: Callable[[], Any] = lambda: False,
    ) -> None:
        super().__init__()
        self.stop = stop
        self.steps_per_episode = steps_per_episode
        self.on_episode = on_episode
        self.on_checkpoint = on_checkpoint
        self.checkpoint_every = max(1, checkpoint_every)
        self._pending: float | None = None
        self.episodes = 0

    def _on_step(self) -> bool:
        if self.locals["dones"][0]:
            info = self.locals["infos"][0]
            self._pending = float(info["reward"])
            self.on_episode(info)
            return True
        return not self.stop()

    def _on_rollout_end(self) -> None:
        # train_freq is one episode: the rollout that just ended is one whole episode, now stored
        if self._pending is None:
            return
        buf = self.model.replay_buffer
        idx = (buf.pos - 1 - np.arange(self.steps_per_episode)) % buf.buffer_size
        buf.rewards[idx, 0] = self._pending  # HAQ: the terminal reward on every transition of the episode
        self._pending = None
        self.episodes += 1
        if self.episodes % self.checkpoint_every == 0:
            self.on_checkpoint()
