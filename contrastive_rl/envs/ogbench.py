"""OGBench's envs as goal envs, and what a dataset's name says: its env, its kind, its subset."""
from __future__ import annotations

import re

import gymnasium as gym
import numpy as np

from contrastive_rl.envs.pixels import GOAL_PIXELS_KEY, PIXELS_KEY
from contrastive_rl.errors import ConfigError

OGBENCH_MAZES = ("pointmaze", "antmaze", "humanoidmaze")
NUM_TASKS = 5  # evaluation tasks of every OGBench maze


def is_ogbench_name(name: str) -> bool:
    """An OGBench dataset name such as ``pointmaze-medium-navigate-v0`` or ``scene-play-v0`` (its env and
    data type)."""
    return (name.split("-")[0] in OGBENCH_MAZES and len(name.split("-")) >= 4) or (
        is_manipulation_name(name) and len(name.split("-")) >= 3)


def check_ogbench_env(name: str, key: str = "env.env_name") -> None:
    import ogbench  # noqa: F401  (registers the envs)

    if env_id(name) not in gym.registry:
        raise ConfigError(
            f"{key}={name!r} is not allowed: OGBench has no env {env_id(name)!r} (use a dataset name such as "
            "pointmaze-medium-navigate-v0)"
        )


class OGBenchGoalEnv(gym.Wrapper):
    """An OGBench env as a goal env: Dict observations whose goal entries are full observations, the
    goal representation of OGBench's agents; ``desired_goal`` is the ``info["goal"]`` of the last
    reset. An image env (OGBench's ``visual-`` ones) gives its frame and its goal frame as ``pixels``
    and ``goal_pixels``, the keys of the project's image envs. With ``task_id``, every reset starts that
    evaluation task (its start and goal)."""

    def __init__(self, env: gym.Env, task_id: int | None = None) -> None:
        super().__init__(env)
        space = env.observation_space
        self.from_pixels = is_image_space(space)
        if self.from_pixels:
            self.observation_space = gym.spaces.Dict({PIXELS_KEY: space, GOAL_PIXELS_KEY: space})
        else:
            self.observation_space = gym.spaces.Dict(observation=space, achieved_goal=space, desired_goal=space)
        self.task_id = task_id
        self.goal = None

    def reset(self, *, seed=None, options=None):
        if self.task_id is not None:
            options = {**(options or {}), "task_id": self.task_id}
        observation, info = self.env.reset(seed=seed, options=options)
        self.goal = np.asarray(info["goal"], dtype=observation.dtype)
        return self._with_goals(observation), info

    def step(self, action):
        observation, reward, terminated, truncated, info = self.env.step(action)
        return self._with_goals(observation), reward, terminated, truncated, info

    def _with_goals(self, observation: np.ndarray) -> dict[str, np.ndarray]:
        if self.from_pixels:
            return {PIXELS_KEY: observation, GOAL_PIXELS_KEY: self.goal}
        return {"observation": observation, "achieved_goal": observation, "desired_goal": self.goal}


def is_image_space(space: gym.Space) -> bool:
    return space.dtype == np.uint8 and len(space.shape) == 3


def make_ogbench_env(name: str, max_steps: int, task_id: int | None = None, **make_kwargs) -> OGBenchGoalEnv:
    """The env of the OGBench dataset ``name``; ``make_kwargs`` go to its constructor (OGBench's ``visual-``
    envs take the frame's ``width`` and ``height``)."""
    import ogbench  # noqa: F401  (registers the envs)

    return OGBenchGoalEnv(gym.make(env_id(name), max_episode_steps=max_steps, **make_kwargs), task_id)


def image_kwargs(name: str, image_size: int) -> dict:
    """The frame size of an OGBench ``visual-`` env's constructor; nothing for a state env."""
    return {"width": image_size, "height": image_size} if is_visual(name) else {}


def episode_steps(name: str) -> int | None:
    """The episode length OGBench evaluates the dataset ``name``'s env with (its registered time limit:
    200 steps on cube-single, 750 on scene, 1000 on the pointmazes); None if OGBench has no such env."""
    import ogbench  # noqa: F401  (registers the envs)

    spec = gym.registry.get(env_id(name))
    return spec.max_episode_steps if spec is not None else None


MANIPULATION_ENVS = ("cube-single-v0", "cube-double-v0", "scene-v0", "puzzle-3x3-v0")
MANIPULATION_DATASETS = tuple(
    env.replace("-v0", f"-{kind}-v0") for env in MANIPULATION_ENVS for kind in ("play", "noisy"))


VISUAL_PREFIX = "visual-"
VISUAL_DATASETS = tuple(VISUAL_PREFIX + name for name in MANIPULATION_DATASETS)
MANIPULATION_FAMILIES = ("cube", "scene", "puzzle")
SUBSET_TAG = re.compile(r"^\d+ep$")


def subset_episodes(dataset_name: str) -> int | None:
    """``cube-single-play-100ep-v0`` -> 100; None for a full dataset's name."""
    tags = [part for part in dataset_name.split("-") if SUBSET_TAG.match(part)]
    return int(tags[0][:-2]) if tags else None


def full_dataset_name(dataset_name: str) -> str:
    """``cube-single-play-100ep-v0`` -> ``cube-single-play-v0``."""
    return "-".join(part for part in dataset_name.split("-") if not SUBSET_TAG.match(part))


def is_visual(dataset_name: str) -> bool:
    return dataset_name.startswith(VISUAL_PREFIX)


def state_dataset_name(dataset_name: str) -> str:
    """``visual-cube-single-play-v0`` -> ``cube-single-play-v0``: the trajectories its frames are rendered from."""
    return dataset_name.removeprefix(VISUAL_PREFIX)


def is_manipulation_name(name: str) -> bool:
    """A cube, scene or puzzle name, from states or pixels (``visual-``)."""
    return state_dataset_name(name).split("-")[0] in MANIPULATION_FAMILIES


def env_id(dataset_name: str) -> str:
    """The env of any OGBench dataset, its name without the data type and the subset tag:
    ``pointmaze-medium-navigate-v0`` -> ``pointmaze-medium-v0``, ``cube-single-play-100ep-v0`` -> ``cube-single-v0``."""
    parts = full_dataset_name(dataset_name).split("-")
    return "-".join(parts[:-2] + parts[-1:])


def supports_value_maps(env_name: str) -> bool:
    """Value maps need states that are positions in the maze: OGBench's pointmazes."""
    return env_name.startswith("pointmaze-")
