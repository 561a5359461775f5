"""OGBench's mazes: their envs as goal envs, their datasets, and the pointmaze ``navigate`` and
``stitch`` datasets regenerated with the env's own oracle.

OGBench downloads its datasets at run time; its pointmaze ones are made by the maze's oracle, so they
can be made again offline, following the recipe of OGBench's data-generation script
(``generate_locomaze.py``): each episode starts in a random free cell; the action is the unit vector
towards the oracle's next waypoint plus Gaussian noise, clipped to [-1, 1]. ``navigate``: 1000 episodes
of 1001 steps, the goal in a random "vertex" cell (not a straight hallway cell), a new one whenever the
current one is reached. ``stitch``: 5000 episodes of 201 steps, the goal a cell 4 cells away (by maze
path), kept once reached. Files are written as OGBench's loader reads them: ``<name>.npz`` and
``<name>-val.npz`` (a tenth as many episodes).
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict

from contrastive_rl.data.nonfinite import first_nonfinite_row
from contrastive_rl.envs.ogbench import env_id
from contrastive_rl.envs.pixels import PIXELS_KEY
from contrastive_rl.errors import ConfigError

OGBENCH_DATASET_PREFIX = "ogbench:"
OGBENCH_ROOT = Path("~/.ogbench/data")  # where ogbench's loader looks by default
NAVIGATE_DATASETS = {  # dataset name: (training episodes, steps per episode)
    "pointmaze-medium-navigate-v0": (1000, 1001),
    "pointmaze-large-navigate-v0": (1000, 1001),
    "pointmaze-giant-navigate-v0": (500, 2001),
    "pointmaze-teleport-navigate-v0": (1000, 1001),
}
STITCH_DATASETS = {name.replace("-navigate-", "-stitch-"): (5000, 201) for name in NAVIGATE_DATASETS}
REGENERABLE_DATASETS = {**NAVIGATE_DATASETS, **STITCH_DATASETS}
ACTION_NOISE = 0.5
STITCH_GOAL_CELLS = 4  # path length, in cells, from a stitch episode's start to its goal
EXPERT_MAZES = ("antmaze", "humanoidmaze")


def load_ogbench_transitions(dataset_name: str, root: Path, *, observation_shape: tuple, action_dim: int) -> TensorDict:
    """The transitions of OGBench's ``<root>/<dataset_name>.npz``, read by ogbench's own loader (which
    downloads a missing file where the internet can be reached), as a ``[N]`` TensorDict with the keys
    the replay buffer stores: the goal entries are full observations (frames, uint8, under ``pixels``
    for a ``visual-`` dataset), ``("next", "done")`` ends each episode (OGBench's ``terminals``)."""
    import ogbench

    key = f"offline.dataset='{OGBENCH_DATASET_PREFIX}{dataset_name}'"
    path = root / f"{dataset_name}.npz"
    if not path.is_file():
        try:
            ogbench.download_datasets([dataset_name], str(root))
        except Exception as error:  # no network, no such file on OGBench's server, ...
            raise ConfigError(
                f"{key} not found: no {path}, and downloading it failed ({type(error).__name__}); regenerate "
                f"it with python make_dataset.py --ogbench {dataset_name} --root {root}"
            ) from None
    check_finite_npz(path, key)
    try:
        frames = len(observation_shape) == 3
        data = ogbench.utils.load_dataset(str(path), ob_dtype=np.uint8 if frames else np.float32, compact_dataset=False)
    except Exception as error:  # not an npz, missing arrays, cut short, ...
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"{key} could not be read as an OGBench dataset ({path}): {reason}") from None
    found = tuple(data["observations"].shape[1:])
    if found != tuple(observation_shape):
        if frames:
            raise ConfigError(f"{key} does not match the env: its frames are {' x '.join(map(str, found))}, the "
                              f"env's are {' x '.join(map(str, observation_shape))}; render it at this size with "
                              f"python make_dataset.py --ogbench {dataset_name} --image-size {observation_shape[0]}")
        raise ConfigError(f"{key} does not match the env: its observation has {found[-1] if found else 0} "
                          f"dimensions, the env's has {observation_shape[-1]}")
    if data["actions"].shape[-1] != action_dim:
        raise ConfigError(f"{key} does not match the env: its action has {data['actions'].shape[-1]} dimensions, "
                          f"the env's has {action_dim}")
    observations = torch.as_tensor(data["observations"])
    next_observations = torch.as_tensor(data["next_observations"])
    done = torch.as_tensor(data["terminals"] > 0).unsqueeze(-1)
    if frames:
        return TensorDict({PIXELS_KEY: observations, "action": torch.as_tensor(data["actions"]),
                           "next": {PIXELS_KEY: next_observations, "done": done}}, batch_size=[len(observations)])
    return TensorDict({
        "observation": observations,
        "action": torch.as_tensor(data["actions"]),
        "next": {"observation": next_observations, "achieved_goal": next_observations, "done": done},
    }, batch_size=[len(observations)])


def check_finite_npz(path: Path, key: str) -> None:
    """Refuse a dataset file holding a NaN or infinity, naming the field and its first bad row. Only its
    floating-point arrays are read: the headers tell their types, and frames (uint8) stay on disk."""
    try:
        with zipfile.ZipFile(path) as archive:
            dtypes = {name.removesuffix(".npy"): _npy_dtype(archive, name) for name in archive.namelist()}
        arrays = np.load(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return  # unreadable: ogbench's loader names the reason
    for field, dtype in dtypes.items():
        found = first_nonfinite_row(arrays[field]) if np.issubdtype(dtype, np.floating) else None
        if found:
            raise ConfigError(f"{key} holds a non-finite value: {path}, field {field!r}, row {found[0]} ({found[1]})")


def _npy_dtype(archive: zipfile.ZipFile, name: str) -> np.dtype:
    with archive.open(name) as member:
        version = np.lib.format.read_magic(member)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        return read_header(member)[2]


def check_regenerable(dataset_name: str) -> None:
    if dataset_name.split("-")[0] in EXPERT_MAZES:
        raise ConfigError(
            f"{dataset_name} cannot be regenerated here: its data policy is a SAC expert that OGBench "
            "only distributes as a download"
        )
    if dataset_name not in REGENERABLE_DATASETS:
        raise ConfigError(f"{dataset_name} is not a dataset this script regenerates: use one of "
                          f"{', '.join(REGENERABLE_DATASETS)}")


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


def cells_at_path_length(maze_map: np.ndarray, start: tuple[int, int], length: int) -> list[tuple[int, int]]:
    """The free cells whose shortest path from ``start`` (4-connected, through free cells) is ``length``
    cells long: breadth-first search, in the order it reaches them."""
    distance = {start: 0}
    queue, found = [start], []
    while queue:
        i, j = queue.pop(0)
        for di, dj in ((-1, 0), (0, -1), (1, 0), (0, 1)):
            cell = (i + di, j + dj)
            inside = 0 <= cell[0] < maze_map.shape[0] and 0 <= cell[1] < maze_map.shape[1]
            if inside and maze_map[cell] == 0 and cell not in distance:
                distance[cell] = distance[(i, j)] + 1
                queue.append(cell)
                if distance[cell] == length:
                    found.append(cell)
    return found


def oracle_direction(maze) -> np.ndarray:
    """Unit vector from the agent towards the oracle's next waypoint to the current goal."""
    waypoint, _ = maze.get_oracle_subgoal(maze.get_xy(), maze.cur_goal_xy)
    direction = waypoint - maze.get_xy()
    return direction / (np.linalg.norm(direction) + 1e-6)


def dataset_type(dataset_name: str) -> str:
    """``pointmaze-medium-stitch-v0`` -> ``stitch``."""
    return dataset_name.split("-")[-2]


def generate_locomaze(dataset_name: str, episodes: int, steps: int, noise: float = ACTION_NOISE,
                      seed: int = 0, progress: str | None = None) -> dict[str, np.ndarray]:
    """``episodes`` episodes of ``steps`` steps of a ``navigate`` or ``stitch`` dataset, one after the
    other: observations, actions, terminals (the last step of each episode), qpos and qvel as OGBench
    saves them, and the oracle's direction at each step (``oracle_directions``, not saved) to check the
    noise against. ``progress``: the label of a progress bar over the episodes (None: no bar)."""
    import ogbench  # noqa: F401  (registers the envs)
    from tqdm import tqdm

    stitch = dataset_type(dataset_name) == "stitch"
    rng = np.random.default_rng(seed)
    np.random.seed(seed)  # the maze draws its teleports from numpy's global generator
    env = gym.make(env_id(dataset_name), terminate_at_goal=False, max_episode_steps=steps)
    maze = env.unwrapped
    free, vertices = maze_cells(maze.maze_map)
    columns = {key: [] for key in ("observations", "actions", "terminals", "qpos", "qvel", "oracle_directions")}
    bar = tqdm(total=episodes, desc=progress, unit="episodes", disable=progress is None)
    for episode in range(episodes):
        start = free[rng.integers(len(free))]
        if stitch:
            nearby = cells_at_path_length(maze.maze_map, start, STITCH_GOAL_CELLS)
            goal = nearby[rng.integers(len(nearby))] if nearby else start
        else:
            goal = vertices[rng.integers(len(vertices))]
        observation, _ = env.reset(seed=seed if episode == 0 else None,
                                   options=dict(task_info=dict(init_ij=start, goal_ij=goal)))
        done = False
        while not done:
            direction = oracle_direction(maze)
            action = np.clip(direction + rng.normal(0.0, noise, direction.shape), -1, 1)
            next_observation, _, terminated, truncated, info = env.step(action)
            done = terminated or truncated
            if info["success"] and not stitch:
                maze.set_goal(vertices[rng.integers(len(vertices))])
            for key, value in (("observations", observation), ("actions", action), ("terminals", done),
                               ("qpos", info["prev_qpos"]), ("qvel", info["prev_qvel"]),
                               ("oracle_directions", direction)):
                columns[key].append(value)
            observation = next_observation
        bar.update()
    bar.close()
    env.close()
    dtypes = {"terminals": bool}
    return {key: np.asarray(values, dtype=dtypes.get(key, np.float32)) for key, values in columns.items()}


def write_locomaze_dataset(dataset_name: str, root: Path, episodes: int | None = None, steps: int | None = None,
                           seed: int = 0, progress: bool = False) -> dict[str, Path]:
    """Write ``<name>.npz`` and ``<name>-val.npz`` under ``root``; return their paths. ``progress``:
    show a progress bar per split."""
    check_regenerable(dataset_name)
    default_episodes, default_steps = REGENERABLE_DATASETS[dataset_name]
    episodes, steps = episodes or default_episodes, steps or default_steps
    root.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, count, split_seed in (("train", episodes, seed), ("val", max(episodes // 10, 1), seed + 1)):
        label = f"{dataset_name} {split}" if progress else None
        data = generate_locomaze(dataset_name, count, steps, seed=split_seed, progress=label)
        data.pop("oracle_directions")
        path = root / (f"{dataset_name}.npz" if split == "train" else f"{dataset_name}-val.npz")
        np.savez_compressed(path, **data)
        paths[split] = path
    return paths
