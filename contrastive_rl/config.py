"""Config checks that stop bad input before anything starts, and the values derived from the config."""
from __future__ import annotations

import copy
import os

import torch
from omegaconf import OmegaConf

from contrastive_rl.loss import CONTRASTIVE_LOSSES, ENERGIES
from contrastive_rl.models import POLICIES
from contrastive_rl.nonfinite import ON_NONFINITE

LOGGER_BACKENDS = ("wandb", "tensorboard", "csv", "")
COMPILE_MODES = ("", None, "default", "reduce-overhead", "max-autotune")
RANK_SEED_STRIDE = 100_003  # env seeds of data-parallel ranks, far apart from each other

POSITIVE_INTEGERS = (
    "env.max_steps", "collector.total_frames", "collector.frames_per_batch", "collector.num_envs",
    "buffer.size", "buffer.batch_size", "model.embed_dim", "model.hidden_dim", "model.num_layers",
    "logger.eval_interval", "logger.num_eval_episodes", "logger.video_size",
)
POSITIVE_REALS = ("optim.lr", "optim.utd_ratio", "loss.temperature", "loss.max_importance_weight", "model.policy_std")
NON_NEGATIVE_INTEGERS = ("collector.init_random_frames", "buffer.random_crop_pad", "logger.video_every")
UNIT_INTERVAL = ("loss.bc_coef", "loss.target_tau", "loss.random_goal_fraction", "buffer.random_crop_prob")
CHOICES = {
    "loss.contrastive": CONTRASTIVE_LOSSES,
    "loss.energy": ENERGIES,
    "model.policy": POLICIES,
    "optim.on_nonfinite": ON_NONFINITE,
}


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key, the value and what is allowed."""


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_config(cfg, world_size: int = 1) -> None:
    """Check the config's values and how they combine, before anything starts; the env's own checks
    are ``contrastive_rl.envs.resolve_goal_env``. ``world_size``: the processes of a data-parallel run
    (torchrun), which share the global sizes.

    Raises ConfigError with one line naming the key, its value and what is allowed.
    """
    _check_values(cfg)
    _check_combinations(cfg)
    if world_size > 1:
        _check_data_parallel(cfg, world_size)


def _check_values(cfg) -> None:
    for key in (*POSITIVE_INTEGERS, *POSITIVE_REALS):
        value = OmegaConf.select(cfg, key)
        if not _is_number(value) or value <= 0:
            raise ConfigError(f"{key}={value!r} is not allowed: it must be a positive number")
        if key in POSITIVE_INTEGERS and not isinstance(value, int):
            raise ConfigError(f"{key}={value!r} is not allowed: it must be an integer")
    for key in NON_NEGATIVE_INTEGERS:
        value = OmegaConf.select(cfg, key)
        if not _is_integer(value) or value < 0:
            raise ConfigError(f"{key}={value!r} is not allowed: it must be an integer >= 0")
    for key in UNIT_INTERVAL:
        value = OmegaConf.select(cfg, key)
        if not _is_number(value) or not 0.0 <= value <= 1.0:
            raise ConfigError(f"{key}={value!r} is not allowed: it must lie in [0, 1]")
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not allowed: use one of {', '.join(allowed)}")
    if not _is_integer(cfg.checkpoint.interval) or cfg.checkpoint.interval < 0:
        raise ConfigError(
            f"checkpoint.interval={cfg.checkpoint.interval!r} is not allowed: an integer >= 0 (0: at the end only)"
        )
    if not _is_number(cfg.loss.gamma) or not 0.0 < cfg.loss.gamma < 1.0:
        raise ConfigError(f"loss.gamma={cfg.loss.gamma!r} is not allowed: it must lie in (0, 1)")
    if cfg.loss.target_entropy != "auto" and not _is_number(cfg.loss.target_entropy):
        raise ConfigError(
            f"loss.target_entropy={cfg.loss.target_entropy!r} is not allowed: use a number or auto (-action_dim)"
        )
    backend = cfg.logger.backend or ""
    if backend not in LOGGER_BACKENDS:
        raise ConfigError(
            f"logger.backend={backend!r} is not allowed: use one of wandb, tensorboard, csv, "
            "or leave it empty for no logging"
        )
    if cfg.compile.compile_mode not in COMPILE_MODES:
        raise ConfigError(
            f"compile.compile_mode={cfg.compile.compile_mode!r} is not allowed: use default, "
            "reduce-overhead or max-autotune"
        )
    if cfg.offline.dataset:
        for key in ("offline.gradient_steps", "offline.eval_interval"):
            value = OmegaConf.select(cfg, key)
            if not _is_integer(value) or value <= 0:
                raise ConfigError(f"{key}={value!r} is not allowed: it must be a positive integer")


def _check_combinations(cfg) -> None:
    if cfg.checkpoint.resume and cfg.offline.dataset:
        raise ConfigError("checkpoint.resume is not allowed with offline.dataset: offline runs are not resumable yet")
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
    if cfg.logger.video_every and not cfg.logger.backend:
        raise ConfigError(
            f"logger.video_every={cfg.logger.video_every} is not allowed with no logger.backend: "
            "videos go to the logger (wandb, tensorboard, csv)"
        )
    if cfg.compile.cudagraphs and get_device(cfg).type != "cuda":
        raise ConfigError(
            f"compile.cudagraphs=true is not allowed on device {str(get_device(cfg))!r}: CUDA graphs need a GPU"
        )


def _check_data_parallel(cfg, world_size: int) -> None:
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


def trains_online(cfg) -> bool:
    return not cfg.offline.dataset or cfg.offline.finetune


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
