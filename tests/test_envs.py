"""Goal environments through TorchRL: specs, success flags, evaluation metrics."""
import pytest
import torch

from utils import apply_env_transforms, env_maker, episode_metrics


@pytest.mark.parametrize(
    "env_name,obs_dim,goal_dim",
    [
        ("FetchReach-v4", 10, 3),
        ("FetchPush-v4", 25, 3),
        ("PointMaze_UMaze-v3", 4, 2),
        ("PointMaze_Medium-v3", 4, 2),
        ("PointMaze_Large-v3", 4, 2),
        ("AntMaze_UMaze-v5", 105, 2),
    ],
)
def test_goal_env_reads_success_flag(env_name, obs_dim, goal_dim):
    env = apply_env_transforms(env_maker(env_name, max_steps=5))
    env.set_seed(0)
    rollout = env.rollout(5)
    assert rollout["observation"].shape == (5, obs_dim)
    assert rollout["observation"].dtype == torch.float32
    assert rollout["desired_goal"].shape == (5, goal_dim)
    assert rollout["next", "success"].dtype == torch.bool
    assert rollout["next", "success"].shape == (5, 1)
    assert rollout["next", "truncated"][-1].item() and not rollout["next", "done"][:-1].any()
    env.close()


def test_success_is_true_when_the_goal_is_reached():
    env = apply_env_transforms(env_maker("PointMaze_UMaze-v3", max_steps=3))
    env.set_seed(0)
    td = env.reset()
    maze = env.base_env._env.unwrapped
    # Move the goal onto the ball: the env must report success on the next step.
    maze.goal = td["achieved_goal"].double().numpy()
    td["action"] = torch.zeros(2)
    step = env.step(td)
    assert step["next", "success"].item() is True
    env.close()


def test_episode_metrics_use_the_first_episode_of_each_env():
    done = torch.zeros(2, 4, 1, dtype=torch.bool)
    done[0, 1] = True  # env 0 ends at step 1, then starts a new episode
    done[1, 3] = True
    success = torch.tensor([[True, False, True, True], [False, False, True, False]]).unsqueeze(-1)
    rollout = {
        ("next", "done"): done,
        ("next", "success"): success,
        ("next", "achieved_goal"): torch.zeros(2, 4, 2),
        ("next", "desired_goal"): torch.tensor([3.0, 4.0]).expand(2, 4, 2),
        ("next", "episode_reward"): torch.arange(8.0).view(2, 4, 1),
    }
    from tensordict import TensorDict

    td = TensorDict(batch_size=[2, 4])
    for key, value in rollout.items():
        td.set(key, value)
    metrics = episode_metrics(td)
    assert metrics["success_final"] == 0.0  # env 0 fails at its step 1, env 1 at step 3
    assert metrics["success_any"] == 1.0
    assert metrics["final_goal_distance"] == pytest.approx(5.0)
    assert metrics["return"] == pytest.approx((1 + 7) / 2)
    assert metrics["episode_length"] == pytest.approx((2 + 4) / 2)
