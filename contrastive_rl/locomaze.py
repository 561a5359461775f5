"""OGBench's pointmaze ``navigate`` datasets, regenerated with the env's own oracle.

OGBench downloads its datasets at run time; its pointmaze ones are made by the maze's oracle, so they
can be made again offline, following the recipe of OGBench's data-generation script: each episode
starts in a random free cell with a goal in a random "vertex" cell (not a straight hallway cell), the
action is the unit vector towards the oracle's next waypoint plus Gaussian noise, clipped to [-1, 1],
and a new vertex goal is drawn whenever the current one is reached. Files are written as OGBench's
loader reads them: ``<name>.npz`` and ``<name>-val.npz`` (a tenth as many episodes).
"""
from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np

from contrastive_rl.config import ConfigError

NAVIGATE_DATASETS = {  # dataset name: (training episodes, steps per episode)
    "pointmaze-medium-navigate-v0": (1000, 1001),
    "pointmaze-large-navigate-v0": (1000, 1001),
    "pointmaze-giant-navigate-v0": (500, 2001),
    "pointmaze-teleport-navigate-v0": (1000, 1001),
}
ACTION_NOISE = 0.5
EXPERT_MAZES = ("antmaze", "humanoidmaze")


def env_id(dataset_name: str) -> str:
    """The env of a dataset: ``pointmaze-medium-navigate-v0`` -> ``pointmaze-medium-v0``."""
    parts = dataset_name.split("-")
    return "-".join(parts[:-2] + parts[-1:])


def check_regenerable(dataset_name: str) -> None:
    if dataset_name.split("-")[0] in EXPERT_MAZES:
        raise ConfigError(
            f"{dataset_name} cannot be regenerated here: its data policy is a SAC expert that OGBench "
            "only distributes as a download"
        )
    if dataset_name not in NAVIGATE_DATASETS:
        raise ConfigError(f"{dataset_name} is not a dataset this script regenerates: use one of "
                          f"{', '.join(NAVIGATE_DATASETS)}")


def maze_cells(maze_map: np.ndarray) -> tuple[list, list]:
    """Free cells, and the free cells that are not straight hallway cells (the goal cells)."""
    free, vertices = [], []
    for i, j in zip(*np.nonzero(maze_map == 0)):
        free.append((int(i), int(j)))
        vertical_hallway = maze_map[i - 1, j] == 0 and maze_map[i + 1, j] == 0 and maze_map[i, j - 1] == 1 \
            and maze_map[i, j + 1] == 1
        horizontal_hallway = maze_map[i, j - 1] == 0 and maze_map[i, j + 1] == 0 and maze_map[i - 1, j] == 1 \
            and maze_map[i + 1, j] == 1
        if not (vertical_hallway or horizontal_hallway):
            vertices.append((int(i), int(j)))
    return free, vertices


def oracle_direction(maze) -> np.ndarray:
    """Unit vector from the agent towards the oracle's next waypoint to the current goal."""
    waypoint, _ = maze.get_oracle_subgoal(maze.get_xy(), maze.cur_goal_xy)
    direction = waypoint - maze.get_xy()
    return direction / (np.linalg.norm(direction) + 1e-6)


def generate_navigate(dataset_name: str, episodes: int, steps: int, noise: float = ACTION_NOISE,
                      seed: int = 0) -> dict[str, np.ndarray]:
    """``episodes`` episodes of ``steps`` steps, one after the other: observations, actions,
    terminals (the last step of each episode), qpos and qvel as OGBench saves them, and the oracle's
    direction at each step (``oracle_directions``, not saved) to check the noise against."""
    import ogbench  # noqa: F401  (registers the envs)

    rng = np.random.default_rng(seed)
    np.random.seed(seed)  # the maze draws its teleports from numpy's global generator
    env = gym.make(env_id(dataset_name), terminate_at_goal=False, max_episode_steps=steps)
    maze = env.unwrapped
    free, vertices = maze_cells(maze.maze_map)
    columns = {key: [] for key in ("observations", "actions", "terminals", "qpos", "qvel", "oracle_directions")}
    for episode in range(episodes):
        task = dict(init_ij=free[rng.integers(len(free))], goal_ij=vertices[rng.integers(len(vertices))])
        observation, _ = env.reset(seed=seed if episode == 0 else None, options=dict(task_info=task))
        done = False
        while not done:
            direction = oracle_direction(maze)
            action = np.clip(direction + rng.normal(0.0, noise, direction.shape), -1, 1)
            next_observation, _, terminated, truncated, info = env.step(action)
            done = terminated or truncated
            if info["success"]:
                maze.set_goal(vertices[rng.integers(len(vertices))])
            for key, value in (("observations", observation), ("actions", action), ("terminals", done),
                               ("qpos", info["prev_qpos"]), ("qvel", info["prev_qvel"]),
                               ("oracle_directions", direction)):
                columns[key].append(value)
            observation = next_observation
    env.close()
    dtypes = {"terminals": bool}
    return {key: np.asarray(values, dtype=dtypes.get(key, np.float32)) for key, values in columns.items()}


def write_navigate_dataset(dataset_name: str, root: Path, episodes: int | None = None, steps: int | None = None,
                           seed: int = 0) -> dict[str, Path]:
    """Write ``<name>.npz`` and ``<name>-val.npz`` under ``root``; return their paths."""
    check_regenerable(dataset_name)
    default_episodes, default_steps = NAVIGATE_DATASETS[dataset_name]
    episodes, steps = episodes or default_episodes, steps or default_steps
    root.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, count, split_seed in (("train", episodes, seed), ("val", max(episodes // 10, 1), seed + 1)):
        data = generate_navigate(dataset_name, count, steps, seed=split_seed)
        data.pop("oracle_directions")
        path = root / (f"{dataset_name}.npz" if split == "train" else f"{dataset_name}-val.npz")
        np.savez_compressed(path, **data)
        paths[split] = path
    return paths
