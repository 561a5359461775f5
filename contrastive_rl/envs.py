"""Goal environments: name resolution, goal checks and the success-flag reader."""
from __future__ import annotations

import logging
import math
import re

import gymnasium as gym
import numpy as np
import torch
from torchrl.data import Binary, Composite
from torchrl.envs.gym_like import BaseInfoDictReader

log = logging.getLogger(__name__)

GOAL_KEYS = ("observation", "achieved_goal", "desired_goal")
_VERSIONED_ID = re.compile(r"^(?P<name>.+)-v(?P<version>\d+)$")


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key, the value and what is allowed."""


class NonFiniteError(RuntimeError):
    """A loss or gradient became NaN or infinite; the message names the update and the values."""


def register_goal_envs() -> None:
    """Register gymnasium-robotics' envs (Fetch, PointMaze, AntMaze, ...) with gymnasium."""
    import gymnasium_robotics

    gym.register_envs(gymnasium_robotics)


def resolve_env_name(env_name: str) -> str:
    """Return a registered id for ``env_name``.

    A version that the installed gymnasium-robotics lacks (``FetchReach-v3`` where only ``-v4`` exists)
    resolves to the newest registered version of the same env, with one logged line saying so.
    """
    register_goal_envs()
    if env_name in gym.registry:
        return env_name
    match = _VERSIONED_ID.match(env_name)
    base = match.group("name") if match else env_name
    versions = sorted(
        int(m.group("version"))
        for env_id in gym.registry
        if (m := _VERSIONED_ID.match(env_id)) and m.group("name") == base
    )
    if not versions:
        raise ConfigError(
            f"env.env_name={env_name!r} is not a registered gymnasium env; "
            f"goal envs include {', '.join(sorted(known_goal_env_families()))}"
        )
    resolved = f"{base}-v{versions[-1]}"
    log.warning("env.env_name=%s is not registered; using %s instead", env_name, resolved)
    return resolved


def known_goal_env_families() -> set[str]:
    """Names (without version) of the goal envs this example is known to run."""
    return {"FetchReach", "FetchPush", "PointMaze_UMaze", "PointMaze_Medium", "PointMaze_Large", "AntMaze_UMaze"}


def check_goal_observation_space(env_name: str, observation_space: gym.Space) -> None:
    """Raise ConfigError unless the env's observations are a goal Dict."""
    keys = set(getattr(observation_space, "spaces", {}) or {})
    if not set(GOAL_KEYS) <= keys:
        raise ConfigError(
            f"env.env_name={env_name!r} has no goals: its observation space must be a Dict with "
            f"{', '.join(GOAL_KEYS)} (got {type(observation_space).__name__}"
            f"{' with ' + ', '.join(sorted(keys)) if keys else ''})"
        )


class SuccessInfoReader(BaseInfoDictReader):
    """Read the env's success flag from ``info`` into the boolean entry ``"success"``.

    torchrl's default reader cannot serve here: Fetch reports ``is_success`` as a float and leaves it out
    of the reset info, and the mazes report ``success`` as a Python bool, which it fails to convert.
    For a vector env of ``batch_size`` envs, ``info`` holds one flag per env.
    """

    info_keys = ("is_success", "success")

    def __init__(self, batch_size: tuple[int, ...] = ()) -> None:
        self.shape = (*batch_size, 1)

    def __call__(self, info_dict, tensordict):
        value = next((info_dict[key] for key in self.info_keys if key in info_dict), False)
        flags = np.broadcast_to(np.asarray(value, dtype=bool).reshape(-1), (math.prod(self.shape),))
        tensordict.set("success", torch.tensor(flags.reshape(self.shape)))
        return tensordict

    @property
    def info_spec(self) -> Composite:
        return Composite(success=Binary(n=1, shape=self.shape, dtype=torch.bool), shape=self.shape[:-1])
