"""Hindsight future-goal relabelling: the offset law and episode boundaries."""
import numpy as np
import pytest
import torch
from scipy import stats
from tensordict import TensorDict

from contrastive_rl.data.replay import FutureGoalReplayBuffer, sample_truncated_geometric


def truncated_geometric_pmf(horizon, gamma):
    weights = gamma ** np.arange(horizon)
    return weights / weights.sum()


@pytest.mark.parametrize("horizon,gamma", [(50, 0.99), (10, 0.7), (1, 0.99), (300, 0.95)])
def test_offset_distribution_matches_truncated_geometric(horizon, gamma):
    torch.manual_seed(0)
    offsets = sample_truncated_geometric(torch.full((200_000,), horizon), gamma)
    assert offsets.min() >= 1 and offsets.max() <= horizon
    counts = torch.bincount(offsets - 1, minlength=horizon).numpy()
    expected = truncated_geometric_pmf(horizon, gamma) * offsets.numel()
    if horizon == 1:
        assert counts[0] == offsets.numel()
        return
    # Pool the sparse tail so every expected count is >= 5, as the chi-square test needs.
    keep = expected >= 5
    observed = np.append(counts[keep], counts[~keep].sum())
    expected = np.append(expected[keep], expected[~keep].sum())
    observed, expected = observed[expected > 0], expected[expected > 0]
    assert stats.chisquare(observed, expected).pvalue > 1e-3
    assert offsets.double().mean().item() == pytest.approx(
        (np.arange(1, horizon + 1) * truncated_geometric_pmf(horizon, gamma)).sum(), rel=0.01
    )


def test_offsets_differ_with_the_horizon_of_each_entry():
    torch.manual_seed(0)
    horizon = torch.tensor([1, 2, 5] * 10_000)
    offsets = sample_truncated_geometric(horizon, 0.5)
    assert (offsets <= horizon).all() and (offsets >= 1).all()
    # gamma = 0.5, horizon 2: P(1) = 2/3.
    assert (offsets[horizon == 2] == 1).float().mean().item() == pytest.approx(2 / 3, abs=0.02)


class EpisodeFeed:
    """Fake parallel envs: episodes of random lengths per env, each step labelled with
    (episode id, step within episode) in its achieved goal, so a relabelled goal tells where it came from."""

    def __init__(self, num_envs, seed=0, min_len=2, max_len=9):
        self.rng = np.random.default_rng(seed)
        self.num_envs = num_envs
        self.min_len, self.max_len = min_len, max_len
        self.next_episode = 0
        self.state = [self._new_episode() for _ in range(num_envs)]

    def _new_episode(self):
        self.next_episode += 1
        return [self.next_episode, 0, int(self.rng.integers(self.min_len, self.max_len + 1))]

    def batch(self, steps):
        episode = torch.zeros(self.num_envs, steps)
        step = torch.zeros(self.num_envs, steps)
        done = torch.zeros(self.num_envs, steps, 1, dtype=torch.bool)
        for e in range(self.num_envs):
            for t in range(steps):
                ep, k, length = self.state[e]
                episode[e, t], step[e, t] = ep, k
                if k + 1 == length:
                    done[e, t] = True
                    self.state[e] = self._new_episode()
                else:
                    self.state[e][1] += 1
        # The transition's own state is step k; its next state (whose achieved goal is stored) is k + 1.
        label = torch.stack([episode, step], -1)
        next_label = torch.stack([episode, step + 1], -1)
        return TensorDict(
            {
                "observation": label,
                "desired_goal": torch.full((self.num_envs, steps, 2), -1.0),
                "next": {"achieved_goal": next_label, "done": done},
            },
            batch_size=[self.num_envs, steps],
        )


@pytest.mark.parametrize("num_envs,steps_per_batch,capacity", [(1, 7, 40), (3, 5, 36), (4, 10, 40)])
def test_goals_come_from_the_future_of_the_same_episode(num_envs, steps_per_batch, capacity):
    torch.manual_seed(0)
    buffer = FutureGoalReplayBuffer(
        capacity=capacity, num_envs=num_envs, batch_size=512, gamma=0.8
    )
    feed = EpisodeFeed(num_envs)
    for round_ in range(12):  # 12 batches: the storage wraps several times
        buffer.extend(feed.batch(steps_per_batch))
        sample = buffer.sample()
        episode, step = sample["observation"].unbind(-1)
        goal_episode, goal_step = sample["desired_goal"].unbind(-1)
        assert (goal_episode == episode).all(), "a goal came from another episode"
        offset = goal_step - step
        assert (offset >= 1).all(), "a goal was not in the future"
        assert (offset == sample["goal_offset"]).all()
    assert len(buffer) == capacity // num_envs * num_envs


def test_goals_never_come_from_stale_slots_after_wrap():
    # One env, a 6-slot storage and 4-step batches: the write cursor lands mid-episode.
    buffer = FutureGoalReplayBuffer(capacity=6, num_envs=1, batch_size=4096, gamma=0.99)
    feed = EpisodeFeed(1, min_len=5, max_len=5)
    for _ in range(5):
        buffer.extend(feed.batch(4))
    sample = buffer.sample()
    episode, step = sample["observation"].unbind(-1)
    goal_episode, goal_step = sample["desired_goal"].unbind(-1)
    assert (goal_episode == episode).all()
    assert (goal_step > step).all()
    # Every stored step of the running episode can reach its newest stored step, not beyond it.
    newest = sample["next", "achieved_goal"][:, 1][episode == episode.max()].max()
    assert goal_step[goal_episode == episode.max()].max() <= newest


def test_horizon_counts_future_steps_up_to_episode_end():
    buffer = FutureGoalReplayBuffer(capacity=8, num_envs=1, batch_size=4, gamma=0.9)
    done = torch.tensor([False, False, True, False, False, False]).view(1, 6, 1)
    data = TensorDict(
        {
            "desired_goal": torch.zeros(1, 6, 1),
            "next": {"achieved_goal": torch.zeros(1, 6, 1), "done": done},
        },
        batch_size=[1, 6],
    )
    buffer.extend(data)
    assert buffer.sampler.horizon(buffer.storage)[:, 0].tolist() == [3, 2, 1, 3, 2, 1]


def test_extend_rejects_batches_of_the_wrong_shape():
    buffer = FutureGoalReplayBuffer(capacity=8, num_envs=2, batch_size=4, gamma=0.9)
    with pytest.raises(ValueError, match="num_envs=2"):
        buffer.extend(EpisodeFeed(3).batch(2))


def numbered_batch(start: int, steps: int, num_envs: int = 2) -> TensorDict:
    """Transitions numbered by write order (env e's value offset by 1000 e), a done every 7 steps."""
    time = torch.arange(start, start + steps, dtype=torch.float32)
    values = torch.stack([time + 1000 * env for env in range(num_envs)]).unsqueeze(-1)
    done = (torch.arange(start, start + steps) % 7 == 6).expand(num_envs, steps).unsqueeze(-1).clone()
    return TensorDict({"observation": values, "next": {"achieved_goal": values.clone(), "done": done}},
                      [num_envs, steps])


@pytest.mark.parametrize("pieces", [[30], [10, 12, 8], [25, 25, 25], [4, 60, 3]])
def test_pieces_written_since_checkpoints_rebuild_the_buffer_in_place(pieces):
    """What ``written_since`` hands each checkpoint, written back with ``write_from`` in order (oldest
    pieces dropped once overwritten), gives the same storage, cursor, length and sampler state."""
    original = FutureGoalReplayBuffer(capacity=40, num_envs=2, batch_size=8, gamma=0.9)
    saved, written = [], 0
    for steps in pieces:
        for start in range(written, written + steps, 5):
            original.extend(numbered_batch(start, min(5, written + steps - start)))
        original.end_episodes()
        rows = original.written_since(written)
        saved.append((original.write_count - rows.shape[1], original.write_count, rows.clone()))
        written = original.write_count
    assert all(rows.shape[1] <= original.time_capacity for _, _, rows in saved)
    live = [(start, rows) for start, end, rows in saved if end + original.time_capacity > written]

    restored = FutureGoalReplayBuffer(capacity=40, num_envs=2, batch_size=8, gamma=0.9)
    for start, rows in live:
        restored.write_from(start, rows)
    assert len(restored) == len(original) and restored.write_count == original.write_count
    assert restored.writer.state_dict() == original.writer.state_dict()
    assert restored.sampler.newest_time == original.sampler.newest_time
    assert (restored.storage[:] == original.storage[:]).all()
    torch.testing.assert_close(restored.sampler.horizon(restored.storage), original.sampler.horizon(original.storage))


def test_uniform_actor_goals_come_from_the_future_of_the_same_episode():
    torch.manual_seed(0)
    buffer = FutureGoalReplayBuffer(
        capacity=36, num_envs=3, batch_size=4096, gamma=0.8, actor_goal_key="actor_desired_goal"
    )
    feed = EpisodeFeed(3)
    for _ in range(8):
        buffer.extend(feed.batch(5))
        sample = buffer.sample()
        episode, step = sample["observation"].unbind(-1)
        goal_episode, goal_step = sample["actor_desired_goal"].unbind(-1)
        assert (goal_episode == episode).all(), "an actor goal came from another episode"
        assert (goal_step - step == sample["actor_goal_offset"]).all()
        horizon = buffer.sampler.horizon(buffer.storage)
        assert (sample["actor_goal_offset"] >= 1).all()
        assert sample["actor_goal_offset"].max() <= horizon.max()


@pytest.mark.parametrize("horizon", [1, 7, 100])
def test_uniform_actor_goal_offsets_are_uniform_over_the_future(horizon):
    """One episode of ``horizon + 9`` steps: the transition at step 9 can reach ``horizon`` future
    steps; its actor offsets are uniform over them while its critic offsets stay geometric."""
    length = horizon + 9
    done = torch.zeros(1, length, 1, dtype=torch.bool)
    done[0, -1] = True
    data = TensorDict(
        {
            "observation": torch.arange(length, dtype=torch.float32).view(1, length, 1),
            "desired_goal": torch.zeros(1, length, 1),
            "next": {
                "achieved_goal": torch.arange(1, length + 1, dtype=torch.float32).view(1, length, 1),
                "done": done,
            },
        },
        batch_size=[1, length],
    )
    buffer = FutureGoalReplayBuffer(
        capacity=length, num_envs=1, batch_size=200_000, gamma=0.9, actor_goal_key="actor_desired_goal"
    )
    buffer.extend(data)
    torch.manual_seed(0)
    sample = buffer.sample()
    at_step_9 = sample["observation"][:, 0] == 9
    offsets = sample["actor_goal_offset"][at_step_9]
    assert offsets.min() >= 1 and offsets.max() <= horizon
    counts = torch.bincount(offsets - 1, minlength=horizon).numpy()
    if horizon > 1:
        assert stats.chisquare(counts).pvalue > 1e-3
    assert offsets.double().mean().item() == pytest.approx((horizon + 1) / 2, rel=0.05)
    critic_offsets = sample["goal_offset"][at_step_9]
    expected_mean = (np.arange(1, horizon + 1) * truncated_geometric_pmf(horizon, 0.9)).sum()
    assert critic_offsets.double().mean().item() == pytest.approx(expected_mean, rel=0.05)


def test_actor_goals_leave_the_critic_goals_unchanged():
    """Adding uniform actor goals draws after the critic's: the same seed gives the same critic goals."""
    feed_data = EpisodeFeed(2).batch(30)
    samples = []
    for actor_goal_key in (None, "actor_desired_goal"):
        buffer = FutureGoalReplayBuffer(
            capacity=60, num_envs=2, batch_size=64, gamma=0.9, actor_goal_key=actor_goal_key
        )
        buffer.extend(feed_data)
        torch.manual_seed(3)
        samples.append(buffer.sample())
    assert torch.equal(samples[0]["desired_goal"], samples[1]["desired_goal"])
    assert torch.equal(samples[0]["goal_offset"], samples[1]["goal_offset"])
    assert "actor_desired_goal" not in samples[0].keys()
