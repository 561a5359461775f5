"""OGBench's mazes: the navigate datasets regenerated here (recipe, layout, oracle), the goal env, the
loader, the 5-task evaluation protocol, and a run on a regenerated dataset."""
import math
import re
import subprocess

import gymnasium as gym
import numpy as np
import ogbench
import pytest

from conftest import TINY_OVERRIDES, check_config, read_scalar, script
from contrastive_rl.errors import ConfigError
from contrastive_rl.data.locomaze import (
    REGENERABLE_DATASETS,
    STITCH_GOAL_CELLS,
    cells_at_path_length,
    check_regenerable,
    generate_locomaze,
    load_ogbench_transitions,
    maze_cells,
    oracle_direction,
    write_locomaze_dataset,
)
from contrastive_rl.envs.ogbench import env_id, make_ogbench_env
from contrastive_rl.data.offline import load_offline_data
from utils import make_eval_environments

NAME = "pointmaze-medium-navigate-v0"


@pytest.fixture(scope="module")
def episodes():
    return generate_locomaze(NAME, episodes=6, steps=201, seed=0)


def test_episodes_have_the_recipe_length_and_one_terminal_each(episodes):
    assert episodes["observations"].shape == (6 * 201, 2) and episodes["actions"].shape == (6 * 201, 2)
    assert episodes["terminals"].nonzero()[0].tolist() == [201 * k - 1 for k in range(1, 7)]
    assert episodes["qpos"].shape == (6 * 201, 2)
    np.testing.assert_allclose(episodes["qpos"], episodes["observations"], atol=1e-5)  # a point's state is its xy
    np.testing.assert_allclose(np.linalg.norm(episodes["oracle_directions"], axis=-1), 1.0, atol=1e-4)


def test_action_noise_has_the_recipe_spread_around_the_oracle_direction(episodes):
    """The clipped residual a - d has the spread of clip(d + N(0, 0.5), -1, 1) - d, not of 0.3 or 0.7."""
    actions, directions = episodes["actions"], episodes["oracle_directions"]
    assert np.abs(actions).max() <= 1.0
    found = (actions - directions).std(0)
    rng = np.random.default_rng(1)

    def spread(sigma):
        draws = np.clip(directions[None] + rng.normal(0, sigma, (50, *directions.shape)), -1, 1)
        return (draws - directions[None]).reshape(-1, 2).std(0)

    np.testing.assert_allclose(found, spread(0.5), rtol=0.1)
    assert (np.abs(found - spread(0.3)) > 0.05).all() and (np.abs(found - spread(0.7)) > 0.05).all()


def test_goals_are_vertex_cells_and_a_reached_goal_moves_on():
    env = gym.make(env_id(NAME))
    free, vertices = maze_cells(env.unwrapped.maze_map)
    assert set(vertices) < set(free) and len(vertices) < len(free)
    maze_map = env.unwrapped.maze_map
    for i, j in vertices:  # no straight hallway cell among the goal cells
        assert not (maze_map[i - 1, j] == 0 and maze_map[i + 1, j] == 0 and maze_map[i, j - 1] == 1
                    and maze_map[i, j + 1] == 1)


def test_noiseless_oracle_reaches_the_goals_of_the_five_evaluation_tasks():
    env = gym.make(env_id(NAME))
    successes = []
    for task in range(1, 6):
        for episode in range(2):
            env.reset(seed=10 * task + episode, options=dict(task_id=task))
            info, done = {}, False
            while not done:
                _, _, terminated, truncated, info = env.step(oracle_direction(env.unwrapped))
                done = terminated or truncated
            successes.append(info["success"])
    assert np.mean(successes) >= 0.8


STITCH = "pointmaze-medium-stitch-v0"


@pytest.fixture(scope="module")
def stitch_episodes():
    return generate_locomaze(STITCH, episodes=8, steps=201, seed=0)


def test_stitch_recipe_is_ogbench_commands(stitch_episodes):
    for size in ("medium", "large", "giant", "teleport"):
        assert REGENERABLE_DATASETS[f"pointmaze-{size}-stitch-v0"] == (5000, 201)
    assert stitch_episodes["observations"].shape == (8 * 201, 2)
    assert stitch_episodes["terminals"].nonzero()[0].tolist() == [201 * k - 1 for k in range(1, 9)]


def test_cells_at_path_length_follow_the_maze_not_the_grid():
    maze_map = np.array([
        [1, 1, 1, 1, 1],
        [1, 0, 1, 0, 1],
        [1, 0, 1, 0, 1],
        [1, 0, 0, 0, 1],
        [1, 1, 1, 1, 1],
    ])
    # (1, 3) is 2 cells away on the grid but 6 by the path round the wall.
    assert cells_at_path_length(maze_map, (1, 1), 4) == [(3, 3)]
    assert cells_at_path_length(maze_map, (1, 1), 6) == [(1, 3)]
    assert cells_at_path_length(maze_map, (1, 1), 7) == []


def test_stitch_episodes_reach_a_goal_four_cells_away_and_stay(stitch_episodes):
    """Each episode starts in one cell and ends, 200 steps on, in a cell 4 path-cells from it: the
    oracle reached its goal and stayed (no new goal is drawn, unlike navigate)."""
    maze = gym.make(env_id(STITCH)).unwrapped
    ends = []
    for episode in np.split(stitch_episodes["observations"], 8):
        start, end = (tuple(int(v) for v in maze.xy_to_ij(xy)) for xy in (episode[0], episode[-1]))
        assert end in cells_at_path_length(maze.maze_map, start, STITCH_GOAL_CELLS) or end == start
        ends.append(end != start)
        last_moves = np.linalg.norm(np.diff(episode[-50:], axis=0), axis=-1)
        assert np.linalg.norm(episode[-50:] - episode[-1], axis=-1).max() < 1.5 * maze._maze_unit, last_moves
    assert np.mean(ends) >= 0.75


def test_files_load_with_ogbench_own_loader(tmp_path):
    paths = write_locomaze_dataset(NAME, tmp_path, episodes=10, steps=51, seed=3)
    assert paths == {"train": tmp_path / f"{NAME}.npz", "val": tmp_path / f"{NAME}-val.npz"}
    train = ogbench.utils.load_dataset(str(paths["train"]))
    validation = ogbench.utils.load_dataset(str(paths["val"]))
    # OGBench's loader drops each episode's last step, which has no next observation.
    assert train["observations"].shape == (10 * 50, 2) and validation["observations"].shape == (1 * 50, 2)
    np.testing.assert_array_equal(train["next_observations"][:49], train["observations"][1:50])
    assert set(np.load(paths["train"]).files) == {"observations", "actions", "terminals", "qpos", "qvel"}


@pytest.mark.parametrize("name,pattern", [
    ("antmaze-medium-navigate-v0", "SAC expert that OGBench only distributes as a download"),
    ("humanoidmaze-large-navigate-v0", "SAC expert"),
    ("pointmaze-medium-explore-v0", "is not a dataset this script regenerates"),
])
def test_datasets_that_cannot_be_regenerated_say_so(name, pattern):
    with pytest.raises(ConfigError, match=pattern):
        check_regenerable(name)


def test_goal_env_entries_are_full_observations_and_the_reset_goal():
    env = make_ogbench_env(NAME, max_steps=100, task_id=3)
    observation, info = env.reset(seed=0)
    np.testing.assert_array_equal(observation["desired_goal"], info["goal"])
    np.testing.assert_array_equal(observation["achieved_goal"], observation["observation"])
    next_observation, *_ = env.step(env.action_space.sample())
    np.testing.assert_array_equal(next_observation["desired_goal"], info["goal"])
    assert env.observation_space["desired_goal"].shape == env.observation_space["observation"].shape


def test_protocol_evaluates_the_five_tasks_each_on_its_own_goal(make_cfg):
    from contrastive_rl.trainers.evaluation import evaluate_and_record
    from contrastive_rl.trainers.progress import RunProgress
    from conftest import build_agent

    cfg = make_cfg(f"env.env_name={NAME}", "env.max_steps=20", "logger.num_eval_episodes=2",
                   "model.hidden_dim=32", "model.num_layers=2", "model.embed_dim=8")
    eval_envs = make_eval_environments(cfg, check_config(cfg))
    assert list(eval_envs) == [1, 2, 3, 4, 5]
    maze = gym.make(env_id(NAME)).unwrapped
    for task, env in eval_envs.items():
        goals = env.reset()["desired_goal"]
        expected = maze.ij_to_xy(maze.task_infos[task - 1]["goal_ij"])
        assert np.linalg.norm(goals.numpy() - expected, axis=-1).max() < 1.0, task  # within its cell
    actor, _ = build_agent(cfg, eval_envs[1])
    progress = RunProgress.start(cfg)
    metrics = evaluate_and_record(cfg, eval_envs, None, actor, step=0, progress=progress)
    tasks = [metrics[f"eval/task{task}_success"] for task in range(1, 6)]
    assert metrics["eval/overall_success"] == pytest.approx(sum(tasks) / 5)
    assert metrics["eval/success_final"] == metrics["eval/overall_success"]
    assert progress.evaluations == 1


def write_npz(path, observation_dim, action_dim, episodes=3, steps=20, drop=None):
    rng = np.random.default_rng(0)
    terminals = np.zeros(episodes * steps, dtype=bool)
    terminals[steps - 1::steps] = True
    data = dict(observations=rng.normal(size=(episodes * steps, observation_dim)).astype(np.float32),
                actions=rng.uniform(-1, 1, (episodes * steps, action_dim)).astype(np.float32), terminals=terminals)
    data.pop(drop, None)
    np.savez(path, **data)
    return data


def test_loader_reads_an_antmaze_layout_with_episodes_from_terminals(tmp_path):
    name = "antmaze-medium-navigate-v0"
    data = write_npz(tmp_path / f"{name}.npz", observation_dim=29, action_dim=8)
    transitions = load_ogbench_transitions(name, tmp_path, observation_shape=(29,), action_dim=8)
    assert transitions.shape == (3 * 19,)  # each episode's last step has no next observation
    done = transitions["next", "done"].squeeze(-1)
    assert done.nonzero().squeeze(-1).tolist() == [18, 37, 56]
    np.testing.assert_array_equal(transitions["observation"][:19].numpy(), data["observations"][:19])
    np.testing.assert_array_equal(transitions["next", "observation"][:19].numpy(), data["observations"][1:20])
    np.testing.assert_array_equal(transitions["next", "achieved_goal"].numpy(), transitions["next", "observation"].numpy())
    np.testing.assert_array_equal(transitions["action"][19:38].numpy(), data["actions"][20:39])


def test_bad_ogbench_input_is_named_in_one_line(tmp_path, make_cfg, monkeypatch):
    with pytest.raises(ConfigError, match=r"^env.env_name='pointmaze-huge-navigate-v0' is not allowed: OGBench has no env"):
        check_config(make_cfg("env.env_name=pointmaze-huge-navigate-v0"))

    def no_network(names, directory):
        raise OSError("no network in this test")

    monkeypatch.setattr(ogbench, "download_datasets", no_network)
    with pytest.raises(ConfigError, match=rf"^offline.dataset='ogbench:{NAME}' not found: no {tmp_path}/{NAME}.npz, "
                                          rf"and downloading it failed \(OSError\); regenerate it with"):
        load_ogbench_transitions(NAME, tmp_path, observation_shape=(2,), action_dim=2)
    write_npz(tmp_path / f"{NAME}.npz", observation_dim=2, action_dim=2, drop="actions")
    with pytest.raises(ConfigError, match=rf"^offline.dataset='ogbench:{NAME}' could not be read as an OGBench dataset"):
        load_ogbench_transitions(NAME, tmp_path, observation_shape=(2,), action_dim=2)
    write_npz(tmp_path / f"{NAME}.npz", observation_dim=4, action_dim=2)
    with pytest.raises(ConfigError, match="does not match the env: its observation has 4 dimensions, the env's has 2"):
        load_ogbench_transitions(NAME, tmp_path, observation_shape=(2,), action_dim=2)
    cfg = make_cfg("offline.dataset=ogbench:pointmaze-large-navigate-v0", f"env.env_name={NAME}")
    with pytest.raises(ConfigError, match="is not allowed with env.env_name='pointmaze-medium-navigate-v0'"):
        load_offline_data(cfg, check_config(cfg))


@pytest.mark.parametrize("field,row,value", [("observations", 37, np.nan), ("actions", 5, -np.inf)])
def test_a_dataset_with_a_non_finite_value_is_refused_naming_file_field_and_row(tmp_path, field, row, value):
    path = tmp_path / f"{NAME}.npz"
    data = write_npz(path, observation_dim=2, action_dim=2)
    data[field][row, 1] = value
    np.savez(path, **data)
    with pytest.raises(ConfigError, match=rf"^offline.dataset='ogbench:{NAME}' holds a non-finite value: "
                                          rf"{re.escape(str(path))}, field '{field}', row {row} \({value}\)$"):
        load_ogbench_transitions(NAME, tmp_path, observation_shape=(2,), action_dim=2)


@pytest.mark.slow
def test_script_trains_offline_then_online_on_a_regenerated_dataset_with_the_five_task_protocol(tmp_path):
    write_locomaze_dataset(NAME, tmp_path / "data", episodes=10, steps=51)
    result = subprocess.run(
        script(*TINY_OVERRIDES, f"env.env_name={NAME}", "env.max_steps=50", f"offline.dataset=ogbench:{NAME}",
               f"offline.root={tmp_path / 'data'}", "offline.gradient_steps=20", "offline.eval_interval=10",
               "offline.finetune=true", f"hydra.run.dir={tmp_path / 'run'}"),
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    overall = read_scalar(tmp_path / "run", "eval/overall_success")
    assert [step for step, _ in overall] == [10, 20, 220, 420]
    for index, (step, value) in enumerate(overall):
        tasks = [read_scalar(tmp_path / "run", f"eval/task{task}_success")[index] for task in range(1, 6)]
        assert all(task_step == step for task_step, _ in tasks)
        assert value == pytest.approx(sum(task_value for _, task_value in tasks) / 5)


@pytest.mark.slow
def test_ogbench_crl_preset_trains_offline_on_a_regenerated_dataset(tmp_path):
    write_locomaze_dataset(NAME, tmp_path / "data", episodes=10, steps=51)
    result = subprocess.run(
        script("--config-name", "config_ogbench_crl", f"env.env_name={NAME}", "env.max_steps=50",
               f"offline.root={tmp_path / 'data'}", "offline.gradient_steps=2400", "offline.eval_interval=1200",
               "model.hidden_dim=32", "model.embed_dim=16", "buffer.batch_size=64", "logger.backend=csv",
               "logger.num_eval_episodes=2", f"hydra.run.dir={tmp_path / 'run'}"),
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # An evaluation interval that is not a multiple of the logging period (1000) still holds.
    assert [step for step, _ in read_scalar(tmp_path / "run", "eval/overall_success")] == [1200, 2400]
    critic = [value for _, value in read_scalar(tmp_path / "run", "train/loss_critic")]
    actor = [value for _, value in read_scalar(tmp_path / "run", "train/loss_actor")]
    assert critic and all(math.isfinite(value) for value in critic + actor)
    # Binary NCE is log 2 per entry and per critic at untrained logits ~0; training takes it far below.
    assert max(critic) < 2 * math.log(2) and critic[-1] < math.log(2)
