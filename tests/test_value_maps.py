"""Value maps over OGBench's pointmazes: the grid follows the maze, the values are the critic's at the
policy's action, a run draws one PNG per task, and envs without maze positions are refused."""
import subprocess

import gymnasium as gym
import numpy as np
import ogbench  # noqa: F401  (registers the envs)
import pytest
import torch
from PIL import Image

from conftest import TINY_OVERRIDES, build_agent, build_loss_module, check_config, script
from contrastive_rl.errors import ConfigError
from contrastive_rl.data.locomaze import write_locomaze_dataset
from contrastive_rl.trainers.value_maps import first_episode_path, maze_grid, value_map

NAME = "pointmaze-medium-navigate-v0"


def test_grid_points_lie_in_the_cells_the_mask_says_they_do():
    maze = gym.make("pointmaze-medium-v0").unwrapped
    xy, free, extent = maze_grid(maze, points_per_cell=4)
    assert xy.shape == (4 * 8, 4 * 8, 2) and free.shape == (32, 32)
    for row in range(0, 32, 3):
        for column in range(0, 32, 5):
            i, j = maze.xy_to_ij(xy[row, column])
            assert free[row, column] == (maze.maze_map[i, j] == 0)
    assert extent[0] < xy[..., 0].min() and extent[1] > xy[..., 0].max()
    assert free.mean() == pytest.approx((maze.maze_map == 0).mean())


def test_value_map_is_the_critics_min_at_the_policys_mode(make_cfg):
    cfg = make_cfg(f"env.env_name={NAME}", "model.hidden_dim=16", "model.num_layers=2", "model.embed_dim=8",
                   "model.cold_init=false", "model.twin_critics=true")
    eval_env = gym.make("pointmaze-medium-v0")

    class Specs:  # pointmaze: 2-d positions as observations and goals
        from torchrl.data import Bounded, Composite, Unbounded

        observation_spec = Composite(observation=Unbounded(2), desired_goal=Unbounded(2), achieved_goal=Unbounded(2))
        full_action_spec_unbatched = Composite(action=Bounded(-1.0, 1.0, shape=(2,)))

    actor, critic = build_agent(cfg, Specs())
    loss_module = build_loss_module(cfg, actor, critic)
    xy, _, _ = maze_grid(eval_env.unwrapped, points_per_cell=2)
    goal = np.array([20.0, 20.0], dtype=np.float32)
    values = value_map(loss_module, actor, xy, goal)
    assert values.shape == xy.shape[:2]
    state = torch.as_tensor(xy[3, 5], dtype=torch.float32)[None]
    from tensordict import TensorDict
    from torchrl.envs.utils import ExplorationType, set_exploration_type

    with set_exploration_type(ExplorationType.DETERMINISTIC):
        action = actor(TensorDict(observation=state, desired_goal=torch.tensor(goal)[None], batch_size=[1]))["action"]
    with loss_module.critic_network_params.to_module(critic):
        expected = (critic.encode_state_action(state, action) * critic.encode_goal(torch.tensor(goal)[None])).sum(-1)
    assert values[3, 5] == pytest.approx(expected.min().item(), rel=1e-5)


def test_first_episode_path_stops_at_its_end():
    from tensordict import TensorDict

    observation = torch.arange(2 * 6 * 2, dtype=torch.float32).reshape(2, 6, 2)
    done = torch.zeros(2, 6, 1, dtype=torch.bool)
    done[0, 3] = True
    rollout = TensorDict(observation=observation, next={"observation": observation + 100, "done": done},
                         batch_size=[2, 6])
    path = first_episode_path(rollout)
    assert path.shape == (5, 2)
    np.testing.assert_array_equal(path[0], observation[0, 0].numpy())
    np.testing.assert_array_equal(path[-1], observation[0, 3].numpy() + 100)


@pytest.mark.slow
def test_a_run_draws_one_value_map_per_task(tmp_path):
    write_locomaze_dataset(NAME, tmp_path / "data", episodes=4, steps=51)
    run = [*TINY_OVERRIDES, f"env.env_name={NAME}", f"offline.dataset=ogbench:{NAME}",
           f"offline.root={tmp_path / 'data'}", "offline.gradient_steps=20", "offline.eval_interval=20",
           "env.max_steps=30", "logger.value_maps=true", "logger.backend=csv", f"hydra.run.dir={tmp_path / 'run'}"]
    result = subprocess.run(script(*run), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    images = sorted((tmp_path / "run" / "value_maps").glob("*.png"))
    assert [image.name for image in images] == [f"value_map_step20_task{k}.png" for k in range(1, 6)]
    pixels = np.asarray(Image.open(images[0]))
    assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.std() > 10


@pytest.mark.parametrize("env_name", ["FetchReach-v4", "antmaze-medium-navigate-v0"])
def test_value_maps_need_a_pointmaze(make_cfg, env_name):
    cfg = make_cfg(f"env.env_name={env_name}", "logger.value_maps=true")
    with pytest.raises(ConfigError, match="logger.value_maps=true is not allowed with env.env_name"):
        check_config(cfg)
