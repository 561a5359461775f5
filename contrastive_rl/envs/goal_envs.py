"""Goal environments: name resolution and checks, where their data lives, the success-flag reader, and
the gymnasium envs behind TorchRL's wrappers."""
from __future__ import annotations

import functools
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from omegaconf import OmegaConf
from torchrl.data import Binary, Composite
from torchrl.envs import Compose, DoubleToFloat, RewardSum, TransformedEnv
from torchrl.envs.gym_like import BaseInfoDictReader
from torchrl.envs.libs.gym import GymEnv, GymWrapper

from contrastive_rl.errors import ConfigError
from contrastive_rl.envs.ogbench import (
    VISUAL_PREFIX,
    check_ogbench_env,
    image_kwargs,
    is_ogbench_name,
    make_ogbench_env,
    supports_value_maps,
)
from contrastive_rl.envs.pixels import (
    GOAL_PIXELS_KEY,
    PIXELS_KEY,
    make_pixel_gym_env,
    rendering_error,
    supports_image_goals,
)

log = logging.getLogger(__name__)

GOAL_KEYS = ("observation", "achieved_goal", "desired_goal")
GOAL_KEY = "desired_goal"
TRAIN_SEED_STREAM, EVAL_SEED_STREAM = 0, 1
_VERSIONED_ID = re.compile(r"^(?P<name>.+)-v(?P<version>\d+)$")


def stream_seed(seed: int, stream: int, index: int) -> int:
    """The env seed for the ``index``-th use of a stream (training restarts by frame count,
    evaluations by step). Offsets such as ``seed + frames`` and ``seed + step`` collide, and the
    training envs would then draw an evaluation's goals; numpy's SeedSequence keeps the streams apart."""
    return int(np.random.SeedSequence([seed, stream, index]).generate_state(1)[0])


@dataclass(frozen=True)
class DataKeys:
    """Where the observation and the goal live: state vectors, or images with ``env.from_pixels``."""

    observation: str
    goal: str
    achieved_goal: tuple  # the next state's, the source of hindsight goals
    state: str | None = None  # proprioception beside an image observation
    actor_goal: str | None = None  # the actor's own goal, sampled apart from the critic's

    @classmethod
    def from_config(cls, cfg) -> DataKeys:
        uniform_actor_goals = cfg.buffer.actor_goals == "uniform_future"
        if cfg.env.from_pixels:
            state = "observation" if cfg.env.pixels_with_state else None
            actor_goal = f"actor_{GOAL_PIXELS_KEY}" if uniform_actor_goals else None
            return cls(PIXELS_KEY, GOAL_PIXELS_KEY, ("next", PIXELS_KEY), state, actor_goal)
        actor_goal = f"actor_{GOAL_KEY}" if uniform_actor_goals else None
        return cls("observation", GOAL_KEY, ("next", "achieved_goal"), actor_goal=actor_goal)

    @property
    def stored(self) -> tuple:
        """What the loss and the goal relabelling read; the rest of a collected batch is not stored
        (the goal itself is written at sampling time)."""
        keys = (self.observation, "action", ("next", self.observation), self.achieved_goal, ("next", "done"))
        return keys if self.state is None else (*keys, self.state, ("next", self.state))


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


def resolve_goal_env(cfg) -> str:
    """The env id to use for ``env.env_name``, after checking that it has goals and, where the config
    asks for them, image goals and offscreen rendering. Raises ConfigError naming the key."""
    if is_ogbench_name(cfg.env.env_name):
        check_ogbench_env(cfg.env.env_name)
        check_ogbench_pixels(cfg)
        if cfg.logger.value_maps and not supports_value_maps(cfg.env.env_name):
            raise ConfigError(f"logger.value_maps=true is not allowed with env.env_name={cfg.env.env_name!r}: value "
                              "maps need states that are maze positions (OGBench's pointmaze datasets)")
        return cfg.env.env_name
    if cfg.logger.value_maps:
        raise ConfigError(f"logger.value_maps=true is not allowed with env.env_name={cfg.env.env_name!r}: value maps "
                          "are drawn over OGBench's pointmazes")
    env_name = resolve_env_name(cfg.env.env_name)
    env = gym.make(env_name)
    try:
        check_goal_observation_space(env_name, env.observation_space)
        check_goals_are_states(cfg, env_name, env.observation_space)
    finally:
        env.close()
    if cfg.env.from_pixels:
        if not supports_image_goals(env_name):
            raise ConfigError(
                f"env.from_pixels=true is not allowed with env.env_name={env_name!r}: image goals are "
                "rendered for PointMaze_* envs only"
            )
        check_image_size(cfg)
    rendering_keys = [key for key in ("env.from_pixels", "logger.video_every") if OmegaConf.select(cfg, key)]
    error = rendering_error(env_name) if rendering_keys else ""  # one probe: it opens a GL context
    if error:
        key = rendering_keys[0]
        raise ConfigError(
            f"{key}={OmegaConf.select(cfg, key)} is not allowed here: {env_name} cannot render offscreen "
            f"({error}); see the README's Images section"
        )
    return env_name


def check_ogbench_pixels(cfg) -> None:
    """OGBench's ``visual-`` envs observe frames alone, its other envs states alone: ``env.from_pixels``
    follows the dataset's name."""
    name, visual = cfg.env.env_name, cfg.env.env_name.startswith(VISUAL_PREFIX)
    if cfg.env.from_pixels != visual:
        hint = f"drop the prefix {VISUAL_PREFIX!r} to train from states" if visual else \
            f"train from pixels on {VISUAL_PREFIX}{name}"
        raise ConfigError(f"env.from_pixels={cfg.env.from_pixels} is not allowed with env.env_name={name!r}: "
                          f"{'its observations are frames' if visual else 'its observations are states'} ({hint}, "
                          f"or set env.from_pixels={str(visual).lower()})")
    if visual and cfg.env.pixels_with_state:
        raise ConfigError(f"env.pixels_with_state=true is not allowed with env.env_name={name!r}: OGBench's visual "
                          "envs observe frames alone")
    if visual:
        check_image_size(cfg)


def check_image_size(cfg) -> None:
    if not isinstance(cfg.env.image_size, int) or cfg.env.image_size < 36:
        raise ConfigError(f"env.image_size={cfg.env.image_size!r} is not allowed: the encoder needs at least 36 pixels")


def check_goals_are_states(cfg, env_name: str, observation_space) -> None:
    """TMD's psi reads states as goals (psi(s), psi(s')): the env's goals must be full observations."""
    if cfg.loss.contrastive != "tmd" or cfg.env.from_pixels:
        return
    goal_dims = observation_space["desired_goal"].shape[-1]
    observation_dims = observation_space["observation"].shape[-1]
    if goal_dims != observation_dims:
        raise ConfigError(
            f"loss.contrastive=tmd is not allowed with env.env_name={env_name!r}: TMD's psi reads states as goals, "
            f"and this env's goals ({goal_dims} dims) are not its observations ({observation_dims} dims); use an "
            "OGBench dataset name, whose goals are full observations"
        )


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


def env_maker(env_name: str, max_steps: int, from_pixels: bool = False, image_size: int = 64) -> GymEnv:
    if not is_ogbench_name(env_name):
        register_goal_envs()  # worker processes start with an empty gymnasium registry
    if from_pixels or is_ogbench_name(env_name):
        env = GymWrapper(gym_env_factory(env_name, max_steps, from_pixels, image_size)())
    else:
        env = GymEnv(env_name, max_episode_steps=max_steps)
    env.set_info_dict_reader(SuccessInfoReader())
    return env


def gym_env_factory(
    env_name: str, max_steps: int, from_pixels: bool = False, image_size: int = 64, task_id: int | None = None
) -> Callable[[], gym.Env]:
    """A function making one gymnasium env: the goal env, or its image version (``from_pixels``); for
    an OGBench env, the evaluation task ``task_id`` if given."""
    if is_ogbench_name(env_name):
        return functools.partial(make_ogbench_env, env_name, max_steps, task_id, **image_kwargs(env_name, image_size))
    if from_pixels:
        return functools.partial(make_pixel_gym_env, env_name, max_steps, image_size)
    return functools.partial(gym.make, env_name, max_episode_steps=max_steps)


def vector_env_maker(
    env_name: str, max_steps: int, num_envs: int, from_pixels: bool = False, image_size: int = 64,
    task_id: int | None = None,
) -> GymWrapper:
    """``num_envs`` copies of the env in one gymnasium vector env, stepped in this process: one TorchRL
    step (its tensordicts, specs and transforms) then serves all of them. Autoreset is off because
    TorchRL resets finished envs itself; gymnasium's default would add a reset step to every episode."""
    if not is_ogbench_name(env_name):
        register_goal_envs()
    make = gym_env_factory(env_name, max_steps, from_pixels, image_size, task_id)
    vector_env = gym.vector.SyncVectorEnv([make] * num_envs, autoreset_mode=gym.vector.AutoresetMode.DISABLED)
    env = GymWrapper(vector_env)
    env.set_info_dict_reader(SuccessInfoReader(env.batch_size))
    return env


def apply_env_transforms(env) -> TransformedEnv:
    """float32 observations and the episode return. Episode length is gymnasium's TimeLimit
    (``max_episode_steps``): a StepCounter and an InitTracker on top would slow every step for entries
    nothing reads."""
    return TransformedEnv(env, Compose(DoubleToFloat(), RewardSum()))
