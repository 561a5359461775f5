"""OGBench's pointmaze navigate datasets regenerated here: the recipe, the file layout, the oracle."""
import gymnasium as gym
import numpy as np
import ogbench
import pytest

from contrastive_rl.config import ConfigError
from contrastive_rl.locomaze import (
    check_regenerable,
    env_id,
    generate_navigate,
    maze_cells,
    oracle_direction,
    write_navigate_dataset,
)

NAME = "pointmaze-medium-navigate-v0"


@pytest.fixture(scope="module")
def episodes():
    return generate_navigate(NAME, episodes=6, steps=201, seed=0)


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


def test_files_load_with_ogbench_own_loader(tmp_path):
    paths = write_navigate_dataset(NAME, tmp_path, episodes=10, steps=51, seed=3)
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
    ("pointmaze-medium-stitch-v0", "is not a dataset this script regenerates"),
])
def test_datasets_that_cannot_be_regenerated_say_so(name, pattern):
    with pytest.raises(ConfigError, match=pattern):
        check_regenerable(name)
