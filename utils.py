"""Builders of the Stable Contrastive RL example: config checks, envs, collector, replay buffer,
networks, loss, optimizers, logger and evaluation."""
from __future__ import annotations

import copy
import ctypes
import functools
import importlib.util
import logging
import os
import random
import shutil
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from hydra.utils import to_absolute_path
from omegaconf import OmegaConf
from tensordict import TensorDict
from tensordict.nn import InteractionType, TensorDictModule, TensorDictSequential
from tensordict.nn.distributions import NormalParamExtractor
from torch import nn
from torchrl.collectors import Collector
from torchrl.envs import (
    CatTensors,
    Compose,
    DoubleToFloat,
    EnvCreator,
    ParallelEnv,
    RewardSum,
    TransformedEnv,
)
from torchrl.envs.libs.gym import GymEnv, GymWrapper
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import MLP, IndependentNormal, ProbabilisticActor, TanhNormal
from torchrl.objectives import SoftUpdate
from torchrl._utils import timeit
from torchrl.record import VideoRecorder
from torchrl.record.loggers import get_logger

from contrastive_rl.distributed import gather_batch
from contrastive_rl.envs import (
    ConfigError,
    NonFiniteError,
    SuccessInfoReader,
    check_goal_observation_space,
    register_goal_envs,
    resolve_env_name,
)
from contrastive_rl.loss import CONTRASTIVE_LOSSES, ENERGIES, ContrastiveLoss
from contrastive_rl.models import ContrastiveCritic, FixedStdNormalHead, GoalConditionedNet
from contrastive_rl.offline import load_goal_transitions, split_into_columns
from contrastive_rl.pixels import (
    GOAL_PIXELS_KEY,
    PIXELS_KEY,
    PixelEncoder,
    RandomShiftCrop,
    SharedEncoderView,
    make_pixel_gym_env,
    rendering_error,
    supports_image_goals,
)
from contrastive_rl.replay import FutureGoalReplayBuffer
from contrastive_rl.videos import VIDEO_KEY, Mp4CSVLogger, make_video_gym_env

log = logging.getLogger(__name__)

LOGGER_BACKENDS = ("wandb", "tensorboard", "csv", "")
VIDEO_FPS = 25
RANK_SEED_STRIDE = 100_003  # env seeds of data-parallel ranks, far apart from each other
POLICIES = ("tanh_normal", "fixed_std_normal")
GOAL_KEY = "desired_goal"


@dataclass(frozen=True)
class DataKeys:
    """Where the observation and the goal live: state vectors, or images with ``env.from_pixels``."""

    observation: str
    goal: str
    achieved_goal: tuple  # the next state's, the source of hindsight goals
    state: str | None = None  # proprioception beside an image observation

    @property
    def stored(self) -> tuple:
        """What the loss and the goal relabelling read; the rest of a collected batch is not stored
        (the goal itself is written at sampling time)."""
        keys = (self.observation, "action", ("next", self.observation), self.achieved_goal, ("next", "done"))
        return keys if self.state is None else (*keys, self.state, ("next", self.state))


def data_keys(cfg) -> DataKeys:
    if cfg.env.from_pixels:
        state = "observation" if cfg.env.pixels_with_state else None
        return DataKeys(PIXELS_KEY, GOAL_PIXELS_KEY, ("next", PIXELS_KEY), state)
    return DataKeys("observation", GOAL_KEY, ("next", "achieved_goal"))


# ====================================================================
# Config checks
# -------------


def validate_config(cfg, world_size: int = 1) -> str:
    """Check the config before anything starts; return the env id to use. ``world_size``: the
    processes of a data-parallel run (torchrun), which share the global sizes.

    Raises ConfigError with one line naming the key, its value and what is allowed.
    """
    positive = {
        "env.max_steps": cfg.env.max_steps,
        "collector.total_frames": cfg.collector.total_frames,
        "collector.frames_per_batch": cfg.collector.frames_per_batch,
        "collector.num_envs": cfg.collector.num_envs,
        "buffer.size": cfg.buffer.size,
        "buffer.batch_size": cfg.buffer.batch_size,
        "model.embed_dim": cfg.model.embed_dim,
        "model.hidden_dim": cfg.model.hidden_dim,
        "model.num_layers": cfg.model.num_layers,
        "optim.lr": cfg.optim.lr,
        "optim.utd_ratio": cfg.optim.utd_ratio,
        "logger.eval_interval": cfg.logger.eval_interval,
        "logger.num_eval_episodes": cfg.logger.num_eval_episodes,
        "logger.video_size": cfg.logger.video_size,
        "loss.temperature": cfg.loss.temperature,
        "loss.max_importance_weight": cfg.loss.max_importance_weight,
        "model.policy_std": cfg.model.policy_std,
    }
    real_valued = ("optim.lr", "optim.utd_ratio", "loss.temperature", "loss.max_importance_weight", "model.policy_std")
    for key, value in positive.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{key}={value!r} is not allowed: it must be a positive number")
        if key not in real_valued and not isinstance(value, int):
            raise ConfigError(f"{key}={value!r} is not allowed: it must be an integer")
    for key in ("collector.init_random_frames", "buffer.random_crop_pad", "logger.video_every"):
        value = OmegaConf.select(cfg, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"{key}={value!r} is not allowed: it must be an integer >= 0")
    for key in ("loss.bc_coef", "loss.target_tau", "loss.random_goal_fraction", "buffer.random_crop_prob"):
        value = OmegaConf.select(cfg, key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
            raise ConfigError(f"{key}={value!r} is not allowed: it must lie in [0, 1]")
    choices = {
        "loss.contrastive": (cfg.loss.contrastive, CONTRASTIVE_LOSSES),
        "loss.energy": (cfg.loss.energy, ENERGIES),
        "model.policy": (cfg.model.policy, POLICIES),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not allowed: use one of {', '.join(allowed)}")
    if not isinstance(cfg.checkpoint.interval, int) or cfg.checkpoint.interval < 0:
        raise ConfigError(
            f"checkpoint.interval={cfg.checkpoint.interval!r} is not allowed: an integer >= 0 (0: at the end only)"
        )
    if cfg.checkpoint.resume and cfg.offline.dataset:
        raise ConfigError("checkpoint.resume is not allowed with offline.dataset: offline runs are not resumable yet")
    if cfg.optim.on_nonfinite not in ("stop", "skip"):
        raise ConfigError(f"optim.on_nonfinite={cfg.optim.on_nonfinite!r} is not allowed: use stop or skip")
    if not 0.0 < cfg.loss.gamma < 1.0:
        raise ConfigError(f"loss.gamma={cfg.loss.gamma!r} is not allowed: it must lie in (0, 1)")
    target_entropy = cfg.loss.target_entropy
    if target_entropy != "auto" and not isinstance(target_entropy, (int, float)):
        raise ConfigError(
            f"loss.target_entropy={target_entropy!r} is not allowed: use a number or auto (-action_dim)"
        )
    if cfg.loss.auto_alpha and cfg.loss.alpha_init <= 0:
        raise ConfigError(
            f"loss.alpha_init={cfg.loss.alpha_init!r} is not allowed with loss.auto_alpha=true: "
            "it must be positive"
        )
    num_envs = cfg.collector.num_envs
    if cfg.collector.frames_per_batch % num_envs:
        raise ConfigError(
            f"collector.frames_per_batch={cfg.collector.frames_per_batch} is not allowed: "
            f"it must be a multiple of collector.num_envs={num_envs}"
        )
    if cfg.offline.dataset:
        for key in ("offline.gradient_steps", "offline.eval_interval"):
            value = OmegaConf.select(cfg, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{key}={value!r} is not allowed: it must be a positive integer")
    if trains_online(cfg) and cfg.buffer.size < cfg.collector.frames_per_batch:
        raise ConfigError(
            f"buffer.size={cfg.buffer.size} is not allowed: it must hold at least one collected "
            f"batch (collector.frames_per_batch={cfg.collector.frames_per_batch})"
        )
    if not cfg.offline.dataset and cfg.buffer.batch_size > cfg.buffer.size:
        raise ConfigError(
            f"buffer.batch_size={cfg.buffer.batch_size} is not allowed: "
            f"it must be <= buffer.size={cfg.buffer.size}"
        )
    backend = cfg.logger.backend or ""
    if backend not in LOGGER_BACKENDS:
        raise ConfigError(
            f"logger.backend={backend!r} is not allowed: use one of wandb, tensorboard, csv, "
            "or leave it empty for no logging"
        )
    if cfg.logger.video_every and not backend:
        raise ConfigError(
            f"logger.video_every={cfg.logger.video_every} is not allowed with no logger.backend: "
            "videos go to the logger (wandb, tensorboard, csv)"
        )
    if cfg.compile.compile_mode not in ("", None, "default", "reduce-overhead", "max-autotune"):
        raise ConfigError(
            f"compile.compile_mode={cfg.compile.compile_mode!r} is not allowed: use default, "
            "reduce-overhead or max-autotune"
        )
    device = get_device(cfg)
    if cfg.compile.cudagraphs and device.type != "cuda":
        raise ConfigError(
            f"compile.cudagraphs=true is not allowed on device {str(device)!r}: CUDA graphs need a GPU"
        )
    if world_size > 1:
        validate_data_parallel(cfg, world_size)
    env_name = resolve_env_name(cfg.env.env_name)
    env = gym.make(env_name)
    try:
        check_goal_observation_space(env_name, env.observation_space)
    finally:
        env.close()
    if cfg.env.from_pixels:
        if not supports_image_goals(env_name):
            raise ConfigError(
                f"env.from_pixels=true is not allowed with env.env_name={env_name!r}: image goals are "
                "rendered for PointMaze_* envs only"
            )
        if not isinstance(cfg.env.image_size, int) or cfg.env.image_size < 36:
            raise ConfigError(
                f"env.image_size={cfg.env.image_size!r} is not allowed: the encoder needs at least 36 pixels"
            )
    rendering_keys = [key for key in ("env.from_pixels", "logger.video_every") if OmegaConf.select(cfg, key)]
    error = rendering_error(env_name) if rendering_keys else ""  # one probe: it opens a GL context
    if error:
        key = rendering_keys[0]
        raise ConfigError(
            f"{key}={OmegaConf.select(cfg, key)} is not allowed here: {env_name} cannot render offscreen "
            f"({error}); see the README's Images section"
        )
    return env_name


def validate_data_parallel(cfg, world_size: int) -> None:
    step = world_size * cfg.collector.num_envs
    divisible = {
        "buffer.batch_size": (cfg.buffer.batch_size, world_size, "the world size"),
        "collector.frames_per_batch": (cfg.collector.frames_per_batch, step, "world size x collector.num_envs"),
    }
    for key, (value, divisor, name) in divisible.items():
        if value % divisor:
            raise ConfigError(
                f"{key}={value} is not allowed with {world_size} processes: it must be a multiple of {name} ({divisor})"
            )
    if cfg.checkpoint.resume:
        raise ConfigError(
            f"checkpoint.resume={cfg.checkpoint.resume!r} is not allowed with {world_size} processes: "
            "rank 0 alone checkpoints, so a data-parallel run does not resume"
        )
    if cfg.compile.cudagraphs:
        raise ConfigError(f"compile.cudagraphs=true is not allowed with {world_size} processes: "
                          "the update's collectives cannot be captured")


def get_device(cfg) -> torch.device:
    """``device``, or the GPU of this process (torchrun's LOCAL_RANK, else 0) when there is one."""
    if cfg.device:
        return torch.device(cfg.device)
    if torch.cuda.is_available():
        return torch.device(f"cuda:{os.environ.get('LOCAL_RANK', '0')}")
    return torch.device("cpu")


def keep_freed_heap_memory() -> None:
    """Stop glibc from handing freed heap memory back to the OS between updates.

    A paper-size update frees a few hundred MB of activations at its end; with glibc's defaults the
    top of the heap is trimmed, and the next update page-faults the same memory back in (on 2 CPU
    cores 20-40k faults and 5-15% of the update's time, up to 150k faults and a third of it when
    other allocations come in between). A trim threshold of 2 GiB keeps it. Setting it turns off
    glibc's own raising of the mmap threshold, so that is set to its maximum, 32 MiB, or every
    activation would be mapped and faulted afresh. A preloaded jemalloc or tcmalloc does the same job
    but has to be installed and set before Python starts. Without glibc (macOS, musl) nothing changes.
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 32 * 2**20)
    mallopt(m_trim_threshold, 2**31 - 1)


def skip_missing_pandas_lookups() -> None:
    """Mark pandas as absent in ``sys.modules`` when it is not installed.

    tensordict's ``TensorDict.from_any``, which runs on every output of every TensorDictModule (the
    policy's, at each env step), asks ``importlib.util.find_spec("pandas")``; without pandas that
    searches every ``sys.path`` entry on each call. A None entry in ``sys.modules`` is Python's own
    marker of a module that cannot be imported: find_spec answers at once and ``import pandas`` still
    raises ImportError. FetchReach collection: 840 -> 924 env steps/s. Where pandas is installed,
    nothing changes.
    """
    if importlib.util.find_spec("pandas") is None:
        sys.modules.setdefault("pandas", None)


def rank_config(cfg, rank: int, world_size: int):
    """This process's share of a data-parallel run. ``buffer.batch_size``, ``buffer.size`` and the
    ``collector`` frame counts are global: each rank samples, stores and collects its 1/world_size of
    them, with its envs seeded apart (rank 0 keeps ``env.seed``). A world of one gets ``cfg`` itself."""
    if world_size == 1:
        return cfg
    local = copy.deepcopy(cfg)
    local.buffer.batch_size //= world_size
    local.buffer.size //= world_size
    local.collector.frames_per_batch //= world_size
    local.collector.total_frames //= world_size
    local.collector.init_random_frames //= world_size
    local.env.seed += RANK_SEED_STRIDE * rank
    return local


# ====================================================================
# Environment
# -----------


def env_maker(env_name: str, max_steps: int, from_pixels: bool = False, image_size: int = 64) -> GymEnv:
    register_goal_envs()  # worker processes start with an empty gymnasium registry
    if from_pixels:
        env = GymWrapper(make_pixel_gym_env(env_name, max_steps, image_size))
    else:
        env = GymEnv(env_name, max_episode_steps=max_steps)
    env.set_info_dict_reader(SuccessInfoReader())
    return env


def gym_env_factory(
    env_name: str, max_steps: int, from_pixels: bool = False, image_size: int = 64
) -> Callable[[], gym.Env]:
    """A function making one gymnasium env: the goal env, or its image version (``from_pixels``)."""
    if from_pixels:
        return functools.partial(make_pixel_gym_env, env_name, max_steps, image_size)
    return functools.partial(gym.make, env_name, max_episode_steps=max_steps)


def vector_env_maker(
    env_name: str, max_steps: int, num_envs: int, from_pixels: bool = False, image_size: int = 64
) -> GymWrapper:
    """``num_envs`` copies of the env in one gymnasium vector env, stepped in this process: a TorchRL
    step (its tensordicts, specs and transforms, ~0.6 ms on FetchReach) then serves all of them.
    Autoreset is off because TorchRL resets finished envs itself; gymnasium's default would add a
    reset step to every episode."""
    register_goal_envs()
    make = gym_env_factory(env_name, max_steps, from_pixels, image_size)
    vector_env = gym.vector.SyncVectorEnv([make] * num_envs, autoreset_mode=gym.vector.AutoresetMode.DISABLED)
    env = GymWrapper(vector_env)
    env.set_info_dict_reader(SuccessInfoReader(env.batch_size))
    return env


def apply_env_transforms(env) -> TransformedEnv:
    """float32 observations and the episode return. Episode length is gymnasium's TimeLimit
    (``max_episode_steps``): a StepCounter and an InitTracker on top cost 15% of the env steps/s on
    FetchReach (767 against 899 steps/s) for entries nothing reads."""
    return TransformedEnv(env, Compose(DoubleToFloat(), RewardSum()))


def _env_creator(cfg, env_name: str) -> EnvCreator:
    return EnvCreator(
        functools.partial(
            env_maker,
            env_name=env_name,
            max_steps=cfg.env.max_steps,
            from_pixels=cfg.env.from_pixels,
            image_size=cfg.env.image_size,
        )
    )


def make_train_environment(cfg, env_name: str) -> TransformedEnv:
    """``collector.num_envs`` copies of the env: one vector env in this process, or with
    ``collector.worker_processes`` one TorchRL worker process per env."""
    if cfg.collector.worker_processes:
        train_env = ParallelEnv(cfg.collector.num_envs, _env_creator(cfg, env_name), serial_for_single=True)
    else:
        train_env = vector_env_maker(
            env_name, cfg.env.max_steps, cfg.collector.num_envs, cfg.env.from_pixels, cfg.env.image_size
        )
    train_env.set_seed(cfg.env.seed)
    return apply_env_transforms(train_env)


def make_eval_environment(cfg, env_name: str) -> TransformedEnv:
    """``logger.num_eval_episodes`` copies of the env in one vector env, one episode each."""
    eval_env = vector_env_maker(
        env_name, cfg.env.max_steps, cfg.logger.num_eval_episodes, cfg.env.from_pixels, cfg.env.image_size
    )
    eval_env.set_seed(cfg.env.seed + 10_000)
    return apply_env_transforms(eval_env)


def trains_online(cfg) -> bool:
    return not cfg.offline.dataset or cfg.offline.finetune


def load_offline_data(cfg, env_name: str) -> TensorDict:
    """The dataset's transitions, checked against the env and the batch size."""
    env = gym.make(env_name)
    try:
        dims = dict(
            observation_dim=env.observation_space["observation"].shape[-1],
            goal_dim=env.observation_space[GOAL_KEY].shape[-1],
            action_dim=env.action_space.shape[-1],
        )
    finally:
        env.close()
    # Hydra runs in its output directory: relative paths are taken from where the command was typed.
    dataset = cfg.offline.dataset
    as_path = Path(to_absolute_path(dataset))
    if (as_path / "data" / "metadata.json").is_file():
        dataset = str(as_path)
    root = to_absolute_path(cfg.offline.root) if cfg.offline.root else None
    image_size = cfg.env.image_size if cfg.env.from_pixels else None
    transitions = load_goal_transitions(dataset, root, image_size=image_size, **dims)
    usable = len(transitions) // cfg.collector.num_envs * cfg.collector.num_envs
    if cfg.buffer.batch_size > usable:
        raise ConfigError(
            f"buffer.batch_size={cfg.buffer.batch_size} is not allowed: offline.dataset="
            f"{cfg.offline.dataset!r} holds {len(transitions)} transitions"
        )
    return transitions


# ====================================================================
# Collector and replay buffer
# ---------------------------


def make_collector(cfg, train_env, actor, device, collected_frames: int = 0) -> Collector:
    """The collector of the frames still to come; ``collected_frames`` are those of a resumed run."""
    collector = Collector(
        train_env,
        actor,
        frames_per_batch=cfg.collector.frames_per_batch,
        total_frames=cfg.collector.total_frames - collected_frames,
        init_random_frames=max(0, cfg.collector.init_random_frames - collected_frames),
        policy_device=device,
        env_device="cpu",
        storing_device=device,
        # The policy is not recurrent: it needs no InitTracker, which torchrl would otherwise add.
        auto_register_policy_transforms=False,
    )
    return collector


def restart_episodes(cfg, collector: Collector, collected_frames: int) -> None:
    """Reseed and reset the training envs: what they do next depends on the seed and the frame count
    alone, so a run resumed from a checkpoint taken here continues exactly as the original."""
    collector.set_seed(cfg.env.seed + collected_frames)
    collector.reset()


def make_replay_buffer(cfg, device, offline_data: TensorDict | None = None) -> FutureGoalReplayBuffer:
    """The future-goal buffer, holding the offline dataset first if there is one (and grown to fit it)."""
    keys = data_keys(cfg)
    capacity = cfg.buffer.size if offline_data is None else max(cfg.buffer.size, len(offline_data))
    replay_buffer = FutureGoalReplayBuffer(
        capacity=capacity,
        num_envs=cfg.collector.num_envs,
        batch_size=cfg.buffer.batch_size,
        gamma=cfg.loss.gamma,
        device=device,
        goal_key=keys.goal,
        achieved_goal_key=keys.achieved_goal,
    )
    if offline_data is not None:
        columns = split_into_columns(offline_data.select(*keys.stored), cfg.collector.num_envs)
        replay_buffer.extend(columns.to(device))
    return replay_buffer


def make_augmentation(cfg) -> RandomShiftCrop | None:
    """Random crop of the images of a sampled batch: the observation, its goal and the next observation
    share each sample's crop."""
    if not cfg.env.from_pixels or cfg.buffer.random_crop_prob == 0:
        return None
    keys = data_keys(cfg)
    return RandomShiftCrop(
        in_keys=[keys.observation, keys.goal, ("next", keys.observation)],
        pad=cfg.buffer.random_crop_pad,
        prob=cfg.buffer.random_crop_prob,
    )


# ====================================================================
# Model
# -----


def make_agent(cfg, env, device) -> tuple[ProbabilisticActor, ContrastiveCritic]:
    """The policy pi(a | s, g), tanh-Gaussian or fixed-std Gaussian, and the contrastive critic."""
    keys = data_keys(cfg)
    model = cfg.model
    if cfg.env.from_pixels:
        critic_encoder = PixelEncoder(cfg.env.image_size, device=device)
        if model.actor_shares_encoder:
            actor_encoder = SharedEncoderView(critic_encoder)
        else:
            actor_encoder = PixelEncoder(cfg.env.image_size, device=device)
        observation_dim = goal_dim = critic_encoder.out_features
        if keys.state is not None:
            state_dim = env.observation_spec[keys.state].shape[-1]
            observation_dim += state_dim
    else:
        critic_encoder = actor_encoder = None
        observation_dim = env.observation_spec["observation"].shape[-1]
        goal_dim = env.observation_spec[GOAL_KEY].shape[-1]
    action_spec = env.full_action_spec_unbatched["action"].to(device)
    action_dim = action_spec.shape[-1]
    hidden_layers = model.num_layers

    actor_net = MLP(
        in_features=observation_dim + goal_dim,
        out_features=(2 if model.policy == "tanh_normal" else 1) * action_dim,
        num_cells=[model.hidden_dim] * hidden_layers,
        activation_class=nn.ReLU,
        norm_class=nn.LayerNorm if model.use_layer_norm else None,
        norm_kwargs=[{"normalized_shape": model.hidden_dim}] * hidden_layers
        if model.use_layer_norm
        else None,
        device=device,
    )
    if model.policy == "tanh_normal":
        head = NormalParamExtractor(scale_mapping="biased_softplus_1.0", scale_lb=1e-4)
        distribution_class = TanhNormal
        distribution_kwargs = {
            "low": action_spec.space.low,
            "high": action_spec.space.high,
            "tanh_loc": False,
        }
    else:
        head = FixedStdNormalHead(action_spec.space.low, action_spec.space.high, model.policy_std)
        distribution_class = IndependentNormal
        distribution_kwargs = {}
    actor_module = TensorDictSequential(
        TensorDictModule(
            GoalConditionedNet(actor_net, actor_encoder),
            in_keys=[keys.observation, keys.goal] + ([keys.state] if keys.state else []),
            out_keys=["actor_params"],
        ),
        TensorDictModule(head, in_keys=["actor_params"], out_keys=["loc", "scale"]),
    )
    actor = ProbabilisticActor(
        module=actor_module,
        spec=action_spec,
        in_keys=["loc", "scale"],
        distribution_class=distribution_class,
        distribution_kwargs=distribution_kwargs,
        default_interaction_type=InteractionType.RANDOM,
        safe=model.policy != "tanh_normal",
    )
    critic = ContrastiveCritic(
        observation_dim,
        action_dim,
        goal_dim,
        embed_dim=model.embed_dim,
        hidden_dim=model.hidden_dim,
        num_layers=hidden_layers,
        use_layer_norm=model.use_layer_norm,
        cold_init=model.cold_init,
        num_critics=2 if model.twin_critics else 1,
        encoder=critic_encoder,
        device=device,
    )
    return actor, critic


# ====================================================================
# Loss and optimizers
# -------------------


def make_loss_module(cfg, actor, critic, world_size: int = 1) -> ContrastiveLoss:
    keys = data_keys(cfg)
    target_entropy = cfg.loss.target_entropy
    if target_entropy == "auto":
        target_entropy = -float(actor.spec["action"].shape[-1])
    loss_module = ContrastiveLoss(
        actor,
        critic,
        contrastive=cfg.loss.contrastive,
        energy=cfg.loss.energy,
        temperature=cfg.loss.temperature,
        learn_temperature=cfg.loss.learn_temperature,
        weight_negatives=cfg.loss.weight_negatives,
        gamma=cfg.loss.gamma,
        max_importance_weight=cfg.loss.max_importance_weight,
        logsumexp_coef=cfg.loss.logsumexp_coef,
        bc_coef=cfg.loss.bc_coef,
        alpha_init=cfg.loss.alpha_init,
        auto_alpha=cfg.loss.auto_alpha,
        target_entropy=target_entropy,
        random_goal_fraction=cfg.loss.random_goal_fraction,
        use_state=keys.state is not None,
        gather_batch=gather_batch if world_size > 1 else None,
    )
    loss_module.set_keys(
        observation=keys.observation,
        goal=keys.goal,
        next_observation=("next", keys.observation),
        next_achieved_goal=keys.achieved_goal,
    )
    return loss_module


def make_optimizer(cfg, loss_module: ContrastiveLoss) -> torch.optim.Optimizer:
    """One Adam over critic, actor and (if tuned) entropy parameters: their losses touch disjoint
    parameters, so a single step over their sum equals three separate steps. The fused kernel (CPU
    and CUDA) steps all parameters in one pass: on 2 CPU cores, 30 ms against the default
    multi-tensor Adam's 160 ms for 20M parameters."""
    param_groups = [
        {"params": loss_module.critic_parameters()},
        {"params": list(loss_module.actor_network_params.values(True, True))},
    ]
    if cfg.loss.auto_alpha:
        param_groups.append({"params": [loss_module.log_alpha]})
    return torch.optim.Adam(param_groups, lr=cfg.optim.lr, fused=True)


def gradient_norm(optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """Euclidean norm of all the gradients the optimizer would apply."""
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    return torch.nn.utils.get_total_norm(grads)


def check_finite(loss_td: TensorDict, keys, where: str, on_nonfinite: str) -> bool:
    """True if every entry of ``keys`` is finite. Otherwise raise NonFiniteError (``stop``), before the
    step is applied, or log and return False (``skip``: the caller drops the batch)."""
    values = torch.stack([loss_td[key].float() for key in keys])
    if bool(torch.isfinite(values).all()):
        return True
    message = f"non-finite {where}: " + ", ".join(f"{key}={loss_td[key].item():.4g}" for key in keys)
    if on_nonfinite == "skip":
        log.warning("%s; batch skipped", message)
        return False
    raise NonFiniteError(message)


def make_target_updater(cfg, loss_module: ContrastiveLoss) -> SoftUpdate | None:
    """Polyak averaging of the target critics, which only the td loss has."""
    if cfg.loss.contrastive != "td":
        return None
    return SoftUpdate(loss_module, tau=cfg.loss.target_tau)


# ====================================================================
# Checkpoints
# -----------

CHECKPOINT_FILE = "checkpoint.pt"
REPLAY_BUFFER_PREFIX = "replay_buffer_"
# Config entries that may change between a run and its resumption.
RESUMABLE_KEYS = ("checkpoint.", "collector.total_frames", "logger.backend", "logger.mode", "device")


def flat_config(cfg) -> dict:
    """The resolved config as ``{"group.key": value}``, without the entries a resumption may change."""

    def flatten(node: dict, prefix: str = "") -> dict:
        flat = {}
        for key, value in node.items():
            if isinstance(value, dict):
                flat.update(flatten(value, f"{prefix}{key}."))
            else:
                flat[f"{prefix}{key}"] = value
        return flat

    config = flatten(OmegaConf.to_container(cfg, resolve=True))
    return {key: value for key, value in config.items() if not key.startswith(RESUMABLE_KEYS)}


def find_checkpoint(cfg) -> Path | None:
    """The checkpoint to resume from: none, the run directory's own (``auto``), or a given run's."""
    resume = cfg.checkpoint.resume
    if not resume:
        return None
    if resume == "auto":
        path = Path.cwd() / CHECKPOINT_FILE
        return path if path.is_file() else None
    path = Path(to_absolute_path(resume)) / CHECKPOINT_FILE
    if not path.is_file():
        raise ConfigError(f"checkpoint.resume={resume!r} is not allowed: {path} does not exist")
    return path


def load_checkpoint(cfg, path: Path) -> dict:
    """Read a checkpoint and check that it was written by a run of the same configuration."""
    state = torch.load(path, weights_only=False)
    saved, current = state["config"], flat_config(cfg)
    differing = sorted(key for key in saved.keys() | current.keys() if saved.get(key) != current.get(key))
    if differing:
        raise ConfigError(
            f"checkpoint.resume={cfg.checkpoint.resume!r} is not allowed: {path} belongs to another "
            f"configuration (it differs in {', '.join(differing)})"
        )
    return state


def save_checkpoint(path: Path, state: dict, replay_buffer: FutureGoalReplayBuffer) -> None:
    """Write the replay buffer (TorchRL's dump: memory-mapped files) to a fresh directory, then
    atomically replace the checkpoint file that names it, then remove the older buffer directories: a
    kill at any point leaves the last complete checkpoint and its buffer whole."""
    buffer_dir = f"{REPLAY_BUFFER_PREFIX}{uuid.uuid4().hex[:12]}"
    replay_buffer.dumps(path.parent / buffer_dir)
    temporary = path.with_suffix(".tmp")
    torch.save({**state, "replay_buffer_dir": buffer_dir}, temporary)
    os.replace(temporary, path)
    for old in path.parent.glob(f"{REPLAY_BUFFER_PREFIX}*"):
        if old.name != buffer_dir:
            shutil.rmtree(old)


def load_replay_buffer(replay_buffer: FutureGoalReplayBuffer, path: Path, state: dict) -> None:
    """Fill the buffer from the dump that the checkpoint at ``path`` names."""
    replay_buffer.loads(path.parent / state["replay_buffer_dir"])


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


# ====================================================================
# Logging and evaluation
# ----------------------


def make_logger(cfg, exp_name: str):
    if not cfg.logger.backend:
        return None
    if cfg.logger.backend == "csv":
        return Mp4CSVLogger(exp_name, log_dir="logs")
    return get_logger(
        cfg.logger.backend,
        logger_name="logs",
        experiment_name=exp_name,
        wandb_kwargs={
            "mode": cfg.logger.mode,
            "project": cfg.logger.project_name,
            "config": OmegaConf.to_container(cfg, resolve=True),
        },
    )


def log_metrics(logger, metrics: dict, step: int) -> None:
    for name, value in metrics.items():
        logger.log_scalar(name, value, step)


def report_time_shares(logger, wall_seconds: float, step: int) -> dict[str, float]:
    """Print, and log as ``time_share/*``, the share of the run's wall-clock spent in each timed part
    (TorchRL ``timeit``: collect, rb - extend, rb - sample, update, eval, logging)."""
    totals = timeit.todict(percall=False)
    shares = {name: total / wall_seconds for name, total in totals.items()}
    shares["other"] = max(0.0, 1.0 - sum(shares.values()))
    log.info(
        "wall-clock %.1f s: %s",
        wall_seconds,
        ", ".join(f"{name} {share:.1%}" for name, share in sorted(shares.items(), key=lambda x: -x[1])),
    )
    if logger is not None:
        log_metrics(logger, {f"time_share/{name}": share for name, share in shares.items()}, step)
    return shares


def episode_metrics(rollout: TensorDict) -> dict[str, float]:
    """Success at the last step and anywhere, final goal distance and return of the FIRST episode of
    each env in a ``[num_envs, time]`` rollout."""
    done = rollout["next", "done"].squeeze(-1)
    done[:, -1] = True
    last = done.int().argmax(-1)
    in_episode = torch.arange(done.shape[-1], device=done.device) <= last.unsqueeze(-1)
    rows = torch.arange(done.shape[0], device=done.device)
    final = rollout["next"][rows, last]
    success = rollout["next", "success"].squeeze(-1)
    distance = (final["achieved_goal"] - final["desired_goal"]).norm(dim=-1)
    return {
        "success_final": final["success"].float().mean().item(),
        "success_any": (success & in_episode).any(-1).float().mean().item(),
        "final_goal_distance": distance.mean().item(),
        "return": final["episode_reward"].mean().item(),
        "episode_length": (last + 1).float().mean().item(),
    }


@torch.no_grad()
def evaluate(eval_env, actor, max_steps: int, seed: int) -> dict[str, float]:
    """One episode per eval env on fresh desired goals (drawn from ``seed``), acting with the policy's
    mode."""
    eval_env.set_seed(seed)
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        rollout = eval_env.rollout(
            max_steps, actor, auto_cast_to_device=True, break_when_any_done=False
        )
    return episode_metrics(rollout)


def make_video_environment(cfg, env_name: str, logger) -> TransformedEnv | None:
    """One env recorded by TorchRL's VideoRecorder into the logger, for ``record_video``.

    State-based envs are rendered by MuJoCo (``logger.video_size`` pixels) with the desired goal's
    marker; image envs show what the agent sees beside the goal image, their marker being hidden.
    """
    if not cfg.logger.video_every:
        return None
    if cfg.env.from_pixels:
        env = apply_env_transforms(env_maker(env_name, cfg.env.max_steps, True, cfg.env.image_size))
        side_by_side = CatTensors([PIXELS_KEY, GOAL_PIXELS_KEY], VIDEO_KEY, dim=-2, del_keys=False, sort=False)
        env.append_transform(side_by_side)
        frame_key = VIDEO_KEY
    else:
        register_goal_envs()
        gym_env = make_video_gym_env(env_name, cfg.env.max_steps, cfg.logger.video_size)
        env = GymWrapper(gym_env, from_pixels=True, pixels_only=False)
        env.set_info_dict_reader(SuccessInfoReader())
        env = apply_env_transforms(env)
        frame_key = PIXELS_KEY
    env.append_transform(VideoRecorder(logger, tag="eval/video", in_keys=[frame_key], skip=1, fps=VIDEO_FPS))
    return env


def record_video(video_env: TransformedEnv, actor, max_steps: int, seed: int, step: int) -> TensorDict:
    """Replay the first evaluation episode (same seed, deterministic policy) in ``video_env`` and log
    its video at ``step``; return the rollout."""
    video_env.set_seed(seed)
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        rollout = video_env.rollout(max_steps, actor, auto_cast_to_device=True)
    video_env.transform[-1].dump(step=step)
    return rollout


def train_episode_metrics(batch: TensorDict) -> dict[str, float]:
    """Success and return of the training episodes that ended in a collected batch."""
    done = batch["next", "done"]
    if not done.any():
        return {}
    return {
        "train/success_final": batch["next", "success"][done].float().mean().item(),
        "train/return": batch["next", "episode_reward"][done].mean().item(),
    }
