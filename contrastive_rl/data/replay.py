"""Replay buffer whose sampler relabels each transition with a geometric future goal.

torchrl's HERReplayBuffer is close but cannot serve: its "future" strategy draws the offset uniformly
(Stable Contrastive RL needs P(d) proportional to gamma^(d-1)), includes the current step, and finds
episodes in a flat storage, where several envs collecting at once interleave their episodes.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.utils import NestedKey
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.data.replay_buffers import Sampler


def sample_truncated_geometric(horizon: torch.Tensor, gamma: float) -> torch.Tensor:
    """Draw d in {1, ..., horizon} with P(d) proportional to gamma^(d-1), one per entry of ``horizon``.

    Inverse-CDF sampling: F(d) = (1 - gamma^d) / (1 - gamma^horizon).
    """
    u = torch.rand(horizon.shape, dtype=torch.float64, device=horizon.device)
    mass = 1.0 - torch.pow(gamma, horizon.to(torch.float64))
    offset = torch.ceil(torch.log1p(-u * mass) / math.log(gamma))
    return offset.long().clamp(min=1).minimum(horizon)


def sample_clamped_geometric(horizon: torch.Tensor, gamma: float) -> torch.Tensor:
    """Draw d >= 1 with P(d) proportional to gamma^(d-1), then clamp it to ``horizon`` (OGBench's value
    goals: every offset past the episode's end lands on its last state)."""
    u = torch.rand(horizon.shape, dtype=torch.float64, device=horizon.device)
    offset = torch.ceil(torch.log1p(-u) / math.log(gamma))
    return offset.clamp(min=1).minimum(horizon.to(torch.float64)).long()


def sample_uniform_offset(horizon: torch.Tensor, rounded: bool = False) -> torch.Tensor:
    """Draw d uniformly in {1, ..., horizon}; ``rounded``: round(1 + u (horizon - 1)), whose two ends
    weigh half as much (OGBench's uniform future goals)."""
    u = torch.rand(horizon.shape, device=horizon.device)
    if rounded:
        return torch.round(1 + u * (horizon - 1)).long()
    return 1 + (u * horizon).long().minimum(horizon - 1)


GOAL_OFFSETS = ("truncated", "clamped")


class FutureGoalSampler(Sampler):
    """Uniform transitions from a ``[time, env]`` storage, each with the achieved goal of a future step
    of its own episode.

    Each env writes its own column of the storage, so an episode is a contiguous run of one column
    (modulo wrap-around) whatever the number of envs. For a transition at slot ``t`` the offset
    ``d >= 1`` follows a geometric law truncated at the episode's last stored step (its done step, or
    the newest write for an episode still running), and the goal is ``achieved_goal_key`` (the achieved
    goal of the NEXT state) at slot ``t + d - 1``, so ``d = 1`` is s_{t+1}. The goal and the offset go
    into the sample info, which TensorDictReplayBuffer writes into the batch as ``goal_key`` and
    ``"goal_offset"``.

    With ``actor_goal_key``, each transition also gets a second goal for the actor, drawn with a uniform
    offset over the same future (OGBench's CRL), written as ``actor_goal_key`` and ``"actor_goal_offset"``.

    ``goal_offsets="clamped"`` draws as OGBench's dataset does instead: an untruncated geometric offset
    clamped to the episode's last step, and uniform offsets whose two ends weigh half.
    """

    def __init__(
        self,
        gamma: float,
        goal_key: NestedKey = "desired_goal",
        achieved_goal_key: NestedKey = ("next", "achieved_goal"),
        done_key: NestedKey = ("next", "done"),
        actor_goal_key: NestedKey | None = None,
        goal_offsets: str = "truncated",
    ) -> None:
        if goal_offsets not in GOAL_OFFSETS:
            raise ValueError(f"unknown goal_offsets {goal_offsets!r}: use one of {', '.join(GOAL_OFFSETS)}")
        self.gamma = gamma
        self.goal_offsets = goal_offsets
        self.goal_key = goal_key
        self.actor_goal_key = actor_goal_key
        self.achieved_goal_key = achieved_goal_key
        self.done_key = done_key
        self.newest_time: int | None = None
        self._horizon: torch.Tensor | None = None

    def extend(self, index) -> None:
        self.newest_time = int(index[-1, 0])
        self._horizon = None

    def end_episodes(self, storage) -> None:
        """Mark the newest stored step of every env as an episode end (the envs are about to be reset
        outside their own episode ends), so no goal is drawn across the cut."""
        if self.newest_time is not None:
            storage[:][self.done_key][self.newest_time] = True
            self._horizon = None

    def sample(self, storage, batch_size: int):
        time_slots, num_envs = storage.shape
        time_index = torch.randint(time_slots, (batch_size,), device=storage.device)
        env_index = torch.randint(num_envs, (batch_size,), device=storage.device)
        horizon = self.horizon(storage)[time_index, env_index]
        clamped = self.goal_offsets == "clamped"
        offset = (sample_clamped_geometric if clamped else sample_truncated_geometric)(horizon, self.gamma)
        achieved_goals = storage[:].get(self.achieved_goal_key)
        info = {self.goal_key: self._future_goal(achieved_goals, time_index, env_index, offset),
                "goal_offset": offset}
        if self.actor_goal_key is not None:
            actor_offset = sample_uniform_offset(horizon, rounded=clamped)
            info[self.actor_goal_key] = self._future_goal(achieved_goals, time_index, env_index, actor_offset)
            info["actor_goal_offset"] = actor_offset
        return (time_index, env_index), info

    @staticmethod
    def _future_goal(achieved_goals, time_index, env_index, offset) -> torch.Tensor:
        """The achieved goal ``offset`` steps after each transition's state (offset 1: its next state)."""
        return achieved_goals[(time_index + offset - 1) % achieved_goals.shape[0], env_index]

    def horizon(self, storage) -> torch.Tensor:
        """``[time, env]``: how many future offsets (>= 1) each stored transition can draw from."""
        if self._horizon is None:
            self._horizon = self._compute_horizon(storage)
        return self._horizon

    def _compute_horizon(self, storage) -> torch.Tensor:
        done = storage[:][self.done_key]
        filled, num_envs = done.shape[:2]
        done = done.reshape(filled, num_envs)
        oldest = (self.newest_time + 1) % filled if filled == storage.max_size // num_envs else 0
        # Slots in write order, oldest first: episodes are contiguous runs in that order.
        chronological = (oldest + torch.arange(filled, device=done.device)) % filled
        ends = done[chronological].clone()
        ends[-1] = True  # the newest step bounds the episodes still running
        position = torch.arange(filled, device=done.device).unsqueeze(-1).expand_as(ends)
        next_end = torch.where(ends, position, filled).flip(0).cummin(0).values.flip(0)
        horizon = torch.empty_like(next_end)
        horizon[chronological] = next_end - position + 1
        return horizon

    def state_dict(self) -> dict:
        return {"newest_time": self.newest_time}

    def load_state_dict(self, state_dict: dict) -> None:
        self.newest_time = state_dict["newest_time"]
        self._horizon = None

    def dumps(self, path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "future_goals.json").write_text(json.dumps(self.state_dict()))

    def loads(self, path) -> None:
        self.load_state_dict(json.loads((Path(path) / "future_goals.json").read_text()))

    def _empty(self) -> None:
        self.newest_time = None
        self._horizon = None


class FutureGoalReplayBuffer(TensorDictReplayBuffer):
    """A replay buffer of transitions whose goal is the achieved goal of a future state of the same
    episode (``FutureGoalSampler``), in a ``[time, env]`` storage that ``num_envs`` envs fill side by side.

    Args:
        capacity: number of transitions kept; each env gets ``capacity // num_envs`` time slots.
        num_envs: number of envs writing side by side; every ``extend`` takes a ``[num_envs, T]`` batch.
        batch_size: transitions per sample.
        gamma: discount of the geometric goal offset.
        device: where the storage lives (sampling happens there).
        actor_goal_key: where to write a second, uniform future goal for the actor; None: none.
        goal_offsets: ``truncated`` (the paper's) or ``clamped`` (OGBench's), see ``FutureGoalSampler``.
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
        actor_goal_key: NestedKey | None = None,
        goal_offsets: str = "truncated",
    ) -> None:
        self.time_capacity = capacity // num_envs
        self.num_envs = num_envs
        super().__init__(
            storage=LazyTensorStorage(self.time_capacity * num_envs, ndim=2, device=device),
            sampler=FutureGoalSampler(gamma, goal_key, achieved_goal_key, done_key, actor_goal_key, goal_offsets),
            batch_size=batch_size,
        )

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
        return super().extend(tensordict, **kwargs)

    def sample(self, batch_size: int | None = None) -> TensorDict:
        """``batch_size`` transitions (default: the buffer's) with their future goals and offsets.

        The sampler's draw is gathered straight from the storage: TensorDictReplayBuffer's generic
        sampling adds locks, transforms and an index key that this buffer does not use, and costs more
        than the draw itself at small batch sizes.
        """
        index, info = self.sampler.sample(self.storage, batch_size or self._batch_size)
        batch = self.storage.get(index)
        batch.update(info)
        return batch

    def end_episodes(self) -> None:
        """Cut every env's episode at its newest stored step (see ``FutureGoalSampler.end_episodes``)."""
        self.sampler.end_episodes(self.storage)

    @property
    def write_count(self) -> int:
        """Time slots written since the buffer was made; each holds one transition per env."""
        return self.writer.state_dict()["_write_count"]

    def written_since(self, count: int) -> TensorDict:
        """``[num_envs, L]``: what was written after the first ``count`` time slots, oldest first; the
        last ``time_capacity`` slots at most, since older ones are overwritten."""
        written = self.write_count
        length = min(written - count, self.time_capacity)
        slots = torch.arange(written - length, written, device=self.storage.device) % self.time_capacity
        return self.storage[:][slots].transpose(0, 1)

    def write_from(self, count: int, rows: TensorDict) -> None:
        """Write ``rows`` (``[num_envs, L]``) as time slots ``count`` to ``count + L - 1``, exactly where
        and as ``extend`` wrote them then: replaying ``written_since`` pieces in order rebuilds the
        storage, its length, the write cursor and the sampler's state."""
        self.writer.load_state_dict({"_cursor": count % self.time_capacity, "_write_count": count})
        self.extend(rows)
