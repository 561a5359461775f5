"""Replay buffer that relabels each sampled transition with a geometric future goal.

torchrl's HERReplayBuffer is close but cannot serve: its "future" strategy draws the offset uniformly
(Stable Contrastive RL needs P(d) proportional to gamma^(d-1)), includes the current step, and finds
episodes in a flat storage, where several envs collecting at once interleave their episodes.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey
from torchrl.data import LazyTensorStorage, RandomSampler, TensorDictReplayBuffer


def sample_truncated_geometric(horizon: torch.Tensor, gamma: float) -> torch.Tensor:
    """Draw d in {1, ..., horizon} with P(d) proportional to gamma^(d-1), one per entry of ``horizon``.

    Inverse-CDF sampling: F(d) = (1 - gamma^d) / (1 - gamma^horizon).
    """
    u = torch.rand(horizon.shape, dtype=torch.float64, device=horizon.device)
    mass = 1.0 - torch.pow(gamma, horizon.to(torch.float64))
    offset = torch.ceil(torch.log1p(-u * mass) / math.log(gamma))
    return offset.long().clamp(min=1).minimum(horizon)


class FutureGoalReplayBuffer(TensorDictReplayBuffer):
    """A replay buffer of transitions whose goal is the achieved goal of a future state of the same episode.

    The storage is two-dimensional, ``[time, env]``: each env writes its own column, so an episode is a
    contiguous run of one column (modulo wrap-around) whatever the number of envs. For a transition at
    slot ``t`` the offset ``d >= 1`` follows a geometric law truncated at the episode's last stored step
    (its done step, or the newest write for an episode still running), and the goal is
    ``achieved_goal_key`` (the achieved goal of the NEXT state) at slot ``t + d - 1``, so ``d = 1`` is
    s_{t+1}. The relabelled goal is written into ``goal_key``; the offset into ``"goal_offset"``.

    Args:
        capacity: number of transitions kept; each env gets ``capacity // num_envs`` time slots.
        num_envs: number of envs writing side by side; every ``extend`` takes a ``[num_envs, T]`` batch.
        batch_size: transitions per sample.
        gamma: discount of the geometric goal offset.
        device: where the storage lives (sampling happens there).
    """

    def __init__(
        self,
        *,
        capacity: int,
        num_envs: int,
        batch_size: int,
        gamma: float,
        device: torch.device | str = "cpu",
        goal_key: NestedKey = "desired_goal",
        achieved_goal_key: NestedKey = ("next", "achieved_goal"),
        done_key: NestedKey = ("next", "done"),
    ) -> None:
        self.time_capacity = capacity // num_envs
        super().__init__(
            storage=LazyTensorStorage(self.time_capacity * num_envs, ndim=2, device=device),
            sampler=RandomSampler(),
            batch_size=batch_size,
        )
        self.num_envs = num_envs
        self.gamma = gamma
        self.goal_key = goal_key
        self.achieved_goal_key = achieved_goal_key
        self.done_key = done_key
        self._newest_time: int | None = None
        self._horizon: torch.Tensor | None = None

    def extend(self, tensordict: TensorDictBase, **kwargs):
        """Append a ``[num_envs, T]`` batch: row ``e`` continues env ``e``'s column in time."""
        if tensordict.batch_dims != 2 or tensordict.shape[0] != self.num_envs:
            raise ValueError(
                f"expected a [num_envs={self.num_envs}, time] batch, got shape {tuple(tensordict.shape)}"
            )
        if tensordict.shape[1] > self.time_capacity:
            raise ValueError(
                f"a batch of {tensordict.shape[1]} steps per env exceeds the {self.time_capacity} "
                "time slots per env of the buffer"
            )
        index = super().extend(tensordict, **kwargs)
        self._newest_time = int(index[-1, 0])
        self._horizon = None
        return index

    def end_episodes(self) -> None:
        """Mark the newest stored step of every env as an episode end (the envs are about to be reset
        outside their own episode ends), so no goal is drawn across the cut."""
        if self._newest_time is not None:
            self._storage._storage.get(self.done_key)[self._newest_time] = True
            self._horizon = None

    def dumps(self, path) -> None:
        """TorchRL's dump (storage as memory-mapped files, sampler, writer), plus the newest write."""
        super().dumps(path)
        (Path(path) / "future_goals.json").write_text(json.dumps({"newest_time": self._newest_time}))

    def loads(self, path) -> None:
        super().loads(path)
        self._newest_time = json.loads((Path(path) / "future_goals.json").read_text())["newest_time"]
        self._horizon = None

    @property
    def num_time_slots(self) -> int:
        """Number of filled time slots per env."""
        return len(self._storage) // self.num_envs

    def horizon(self) -> torch.Tensor:
        """``[time, env]``: how many future offsets (>= 1) each stored transition can draw from."""
        if self._horizon is None:
            self._horizon = self._compute_horizon()
        return self._horizon

    def _compute_horizon(self) -> torch.Tensor:
        filled = self.num_time_slots
        done = self._storage._storage.get(self.done_key)[:filled].reshape(filled, self.num_envs)
        oldest = (self._newest_time + 1) % filled if filled == self.time_capacity else 0
        # Slots in write order, oldest first: episodes are contiguous runs in that order.
        chronological = (oldest + torch.arange(filled, device=done.device)) % filled
        ends = done[chronological].clone()
        ends[-1] = True  # the newest step bounds the episodes still running
        position = torch.arange(filled, device=done.device).unsqueeze(-1).expand_as(ends)
        next_end = torch.where(ends, position, filled).flip(0).cummin(0).values.flip(0)
        horizon = torch.empty_like(next_end)
        horizon[chronological] = next_end - position + 1
        return horizon

    def _sample(self, batch_size: int):
        data, info = super()._sample(batch_size)
        time_index, env_index = (i.to(self._storage.device) for i in info["index"])
        offset = sample_truncated_geometric(self.horizon()[time_index, env_index], self.gamma)
        goal_time = (time_index + offset - 1) % self.num_time_slots
        achieved_goals = self._storage._storage.get(self.achieved_goal_key)
        data.set(self.goal_key, achieved_goals[goal_time, env_index])
        data.set("goal_offset", offset)
        return data, info
