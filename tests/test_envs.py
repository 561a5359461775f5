"""Goal environments through TorchRL: specs, success flags, evaluation metrics."""
import gc

import numpy as np
import pytest
import torch

from conftest import needs_rendering
from contrastive_rl.envs.goal_envs import apply_env_transforms, env_maker, vector_env_maker
from contrastive_rl.trainers.evaluation import episode_metrics


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


@pytest.mark.parametrize(
    "env_name,image_size",
    [("FetchReach-v4", None), ("PointMaze_UMaze-v3", None), pytest.param("PointMaze_UMaze-v3", 48, marks=needs_rendering)],
    ids=["FetchReach", "PointMaze", "PointMaze-pixels"],
)
def test_vector_env_steps_each_env_as_a_single_env_would(env_name, image_size):
    """Through several episodes (TorchRL resetting the finished envs of the vector env), env i of a
    vector env seeded s sees what a single env seeded s + i sees under the same actions; with images,
    each env renders its own scene while the others render theirs."""
    # A closed image env that the garbage collector frees later frees its MuJoCo GL context then, which
    # breaks the rendering of the envs alive at that moment (see test_videos): free them at known points.
    gc.collect()
    steps, max_steps, num_envs = 13, 5, 2
    pixels = {"from_pixels": image_size is not None, "image_size": image_size or 64}
    action_dim = 4 if env_name.startswith("Fetch") else 2
    actions = torch.rand(num_envs, steps, action_dim, generator=torch.Generator().manual_seed(0)) * 2 - 1
    vector_env = apply_env_transforms(vector_env_maker(env_name, max_steps, num_envs, **pixels))
    vector_env.set_seed(7)
    vector_rollout = replay(vector_env, actions)
    keys = ["observation", "desired_goal", ("next", "observation"), ("next", "done"), ("next", "success"),
            ("next", "episode_reward")]
    if image_size:
        keys += ["pixels", "goal_pixels", ("next", "pixels")]
        frames = vector_rollout["next", "pixels"]
        assert (frames[:, 1:] != frames[:, :-1]).flatten(2).any(-1).all(), "every step must draw a new frame"
    for index in range(num_envs):
        single_env = apply_env_transforms(env_maker(env_name, max_steps, **pixels))
        single_env.set_seed(7 + index)
        single_rollout = replay(single_env, actions[index])
        for key in keys:
            torch.testing.assert_close(vector_rollout[index][key], single_rollout[key], msg=f"env {index}, {key}")
        single_env.close()
        del single_env
        gc.collect()
    assert vector_rollout["next", "done"].squeeze(-1).sum(-1).tolist() == [2, 2]
    vector_env.close()


def replay(env, actions):
    """Step ``env`` through ``actions`` (time on the second-to-last dimension)."""
    steps = actions.shape[-2]
    iterator = iter(actions.unbind(-2))
    return env.rollout(steps, policy=lambda td: td.set("action", next(iterator)), break_when_any_done=False)


@pytest.mark.parametrize(
    "batch_size,info,expected",
    [
        ((), {"is_success": 1.0}, [True]),
        ((), {"success": False}, [False]),
        ((2,), {"is_success": np.array([0.0, 1.0]), "_is_success": np.array([True, True])}, [[False], [True]]),
        ((3,), {"success": np.array([True, False, True])}, [[True], [False], [True]]),
        ((2,), {}, [[False], [False]]),
    ],
)
def test_success_reader_gives_one_flag_per_env(batch_size, info, expected):
    from tensordict import TensorDict

    from contrastive_rl.envs.goal_envs import SuccessInfoReader

    reader = SuccessInfoReader(batch_size)
    flags = reader(info, TensorDict(batch_size=batch_size))["success"]
    assert flags.dtype == torch.bool and flags.tolist() == expected
    assert reader.info_spec["success"].shape == flags.shape


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


def test_training_and_evaluation_seed_streams_never_meet():
    """With ``seed + frames`` and ``seed + 10000 + step`` the training envs restarted at frame 12000
    drew the goals of the evaluation at step 2000; the two streams of seeds share none, even counting
    the consecutive seeds a vector env gives its envs."""
    from contrastive_rl.envs.goal_envs import EVAL_SEED_STREAM, TRAIN_SEED_STREAM
    from contrastive_rl.envs.goal_envs import stream_seed

    steps = range(0, 200_000, 1000)
    train = {stream_seed(0, TRAIN_SEED_STREAM, step) + env for step in steps for env in range(4)}
    evaluation = {stream_seed(0, EVAL_SEED_STREAM, step) + env for step in steps for env in range(10)}
    assert len(train) == 4 * len(steps) and len(evaluation) == 10 * len(steps)
    assert not train & evaluation
    assert stream_seed(0, TRAIN_SEED_STREAM, 1000) == stream_seed(0, TRAIN_SEED_STREAM, 1000)
    assert stream_seed(1, TRAIN_SEED_STREAM, 1000) != stream_seed(0, TRAIN_SEED_STREAM, 1000)
    assert all(0 <= seed < 2**32 for seed in train | evaluation)
