"""Config checks that stop bad input before anything starts, and the values derived from the config."""
from __future__ import annotations

import copy
import dataclasses
import math
import os

import torch
from omegaconf import OmegaConf

from contrastive_rl.data.nonfinite import ON_NONFINITE
from contrastive_rl.data.replay import GOAL_OFFSETS
from contrastive_rl.errors import ConfigError
from contrastive_rl.modules.encoders import ENCODERS
from contrastive_rl.modules.models import ACTIVATIONS, INITS, POLICIES, POLICY_MEANS
from contrastive_rl.objectives.contrastive import ACTOR_LOSSES
from contrastive_rl.objectives.family import CONTRASTIVE_LOSSES
from contrastive_rl.objectives.energies import ENERGIES, QUASIMETRIC_ENERGIES
from contrastive_rl.trainers.update import AUTOCAST_DTYPES

LOGGER_BACKENDS = ("wandb", "tensorboard", "csv", "")
WANDB_MODES = ("offline", "online", "disabled")
ACTOR_GOALS = ("critic_goal", "uniform_future")
COMPILE_MODES = ("", "default", "reduce-overhead", "max-autotune")
RANK_SEED_STRIDE = 100_003  # env seeds of data-parallel ranks, far apart from each other
MAX_SEED = 2**32 - 1  # numpy's global seed is 32 bits


def ogbench_episode_steps(env_name: str) -> int | None:
    """``${ogbench_episode_steps:${env.env_name}}`` in a preset: the episode length OGBench evaluates
    that env with (None for an env OGBench does not have, which the check of env.max_steps then names)."""
    from contrastive_rl.envs.ogbench import episode_steps

    return episode_steps(env_name)


# Registered on import, before Hydra composes any config that names it.
OmegaConf.register_new_resolver("ogbench_episode_steps", ogbench_episode_steps, replace=True)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


@dataclasses.dataclass(frozen=True)
class Rule:
    """What one config key accepts: its kind (``integer``, ``real``, ``boolean``, ``string``, ``choice``),
    for numbers the bounds (``low_open``: the lower bound itself is not allowed), values accepted
    besides (``also``) and the message that then says what is allowed (``allowed``)."""

    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    choices: tuple = ()
    also: tuple = ()
    allowed: str = ""

    def problem(self, value) -> str:
        """Why ``value`` is not allowed, or an empty string."""
        if value in self.also:
            return ""
        problem = self._kind_problem(value)
        return self.allowed if problem and self.allowed else problem

    def _kind_problem(self, value) -> str:
        if self.kind == "boolean":
            return "" if isinstance(value, bool) else "it must be true or false"
        if self.kind == "string":
            return "" if isinstance(value, str) else "it must be a string"
        if self.kind == "choice":
            names = ", ".join(str(choice) if choice else '""' for choice in self.choices)
            return "" if value in self.choices else f"use one of {names}"
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if self.low == 0 and self.low_open and self.high is None:
            wanted = "it must be a positive number"
        elif self.high is not None:
            bounds = f"{_number(self.low)}, {_number(self.high)}"
            wanted = f"it must lie in ({bounds})" if self.low_open else f"it must lie in [{bounds}]"
        else:
            wanted = f"it must be {'an integer' if self.kind == 'integer' else 'a number'} >= {_number(self.low)}"
        if not is_number or value < self.low or (self.low_open and value == self.low):
            return wanted
        if self.high is not None and (value > self.high or (self.low_open and value == self.high)):
            return wanted
        if self.kind == "integer" and not isinstance(value, int):
            return "it must be an integer"
        return ""


POSITIVE_INTEGER = Rule("integer", 0, low_open=True)
NON_NEGATIVE_INTEGER = Rule("integer", 0)
POSITIVE = Rule("real", 0, low_open=True)
NON_NEGATIVE = Rule("real", 0)
UNIT_INTERVAL = Rule("real", 0, 1)
BOOLEAN = Rule("boolean")
AUTO_BOOLEAN = Rule("boolean", also=("auto",), allowed="it must be true, false or auto")
STRING = Rule("string")

# Every key of config.yaml and what it accepts; a key missing here is refused as unknown.
RULES = {
    "env.env_name": STRING,
    "env.max_steps": POSITIVE_INTEGER,
    "env.seed": Rule("integer", 0, MAX_SEED),
    "env.from_pixels": BOOLEAN,
    "env.image_size": POSITIVE_INTEGER,
    "env.pixels_with_state": BOOLEAN,
    "collector.total_frames": POSITIVE_INTEGER,
    "collector.frames_per_batch": POSITIVE_INTEGER,
    "collector.init_random_frames": NON_NEGATIVE_INTEGER,
    "collector.num_envs": POSITIVE_INTEGER,
    "collector.worker_processes": BOOLEAN,
    "buffer.size": POSITIVE_INTEGER,
    "buffer.batch_size": POSITIVE_INTEGER,
    "buffer.random_crop_prob": UNIT_INTERVAL,
    "buffer.random_crop_pad": NON_NEGATIVE_INTEGER,
    "buffer.actor_goals": Rule("choice", choices=ACTOR_GOALS),
    "buffer.goal_offsets": Rule("choice", choices=GOAL_OFFSETS),
    "model.embed_dim": POSITIVE_INTEGER,
    "model.hidden_dim": POSITIVE_INTEGER,
    "model.num_layers": POSITIVE_INTEGER,
    "model.use_layer_norm": BOOLEAN,
    "model.actor_layer_norm": BOOLEAN,
    "model.layer_norm_after_activation": BOOLEAN,
    "model.cold_init": BOOLEAN,
    "model.init": Rule("choice", choices=INITS),
    "model.activation": Rule("choice", choices=tuple(ACTIVATIONS)),
    "model.twin_critics": BOOLEAN,
    "model.actor_shares_encoder": BOOLEAN,
    "model.encoder": Rule("choice", choices=tuple(ENCODERS)),
    "model.policy": Rule("choice", choices=POLICIES),
    "model.policy_std": POSITIVE,
    "model.policy_mean": Rule("choice", choices=POLICY_MEANS),
    "loss.gamma": Rule("real", 0, 1, low_open=True),
    "loss.contrastive": Rule("choice", choices=CONTRASTIVE_LOSSES),
    "loss.energy": Rule("choice", choices=ENERGIES),
    "loss.temperature": POSITIVE,
    "loss.learn_temperature": BOOLEAN,
    "loss.quasimetric_components": POSITIVE_INTEGER,
    "loss.tmd_zeta": NON_NEGATIVE,
    "loss.tmd_clip": POSITIVE,
    "loss.tmd_diagonal_weight": UNIT_INTERVAL,
    "loss.weight_negatives": BOOLEAN,
    "loss.max_importance_weight": POSITIVE,
    "loss.target_tau": UNIT_INTERVAL,
    "loss.bc_coef": NON_NEGATIVE,
    "loss.logsumexp_coef": NON_NEGATIVE,
    "loss.alpha_init": NON_NEGATIVE,
    "loss.auto_alpha": BOOLEAN,
    "loss.target_entropy": Rule("real", -math.inf, also=("auto",), allowed="use a number or auto (-action_dim)"),
    "loss.random_goal_fraction": UNIT_INTERVAL,
    "loss.actor_loss": Rule("choice", choices=ACTOR_LOSSES),
    "optim.lr": POSITIVE,
    "optim.utd_ratio": POSITIVE,
    "optim.on_nonfinite": Rule("choice", choices=ON_NONFINITE),
    "offline.dataset": STRING,
    "offline.root": STRING,
    "offline.gradient_steps": POSITIVE_INTEGER,
    "offline.eval_interval": POSITIVE_INTEGER,
    "offline.finetune": BOOLEAN,
    "logger.backend": Rule("choice", choices=LOGGER_BACKENDS, also=(None,)),
    "logger.mode": Rule("choice", choices=WANDB_MODES),
    "logger.project_name": STRING,
    "logger.exp_name": STRING,
    "logger.eval_interval": POSITIVE_INTEGER,
    "logger.num_eval_episodes": POSITIVE_INTEGER,
    "logger.video_every": NON_NEGATIVE_INTEGER,
    "logger.video_size": POSITIVE_INTEGER,
    "logger.value_maps": BOOLEAN,
    "checkpoint.interval": NON_NEGATIVE_INTEGER,
    "checkpoint.resume": STRING,
    "checkpoint.keep": POSITIVE_INTEGER,
    "compile.compile": AUTO_BOOLEAN,
    "compile.compile_mode": Rule("choice", choices=COMPILE_MODES, also=(None,)),
    "compile.cudagraphs": AUTO_BOOLEAN,
    "precision.tf32": AUTO_BOOLEAN,
    "precision.autocast": Rule("choice", choices=tuple(AUTOCAST_DTYPES)),
    "device": STRING,
}


def flat_items(cfg) -> dict:
    """The config as ``{"group.key": value}``, interpolations resolved."""

    def flatten(node: dict, prefix: str = "") -> dict:
        flat = {}
        for key, value in node.items():
            if isinstance(value, dict):
                flat.update(flatten(value, f"{prefix}{key}."))
            else:
                flat[f"{prefix}{key}"] = value
        return flat

    return flatten(OmegaConf.to_container(cfg, resolve=True))


def validate_config(cfg, world_size: int = 1) -> None:
    """Check every key of the config and how they combine, before anything starts; the env's own
    checks are ``contrastive_rl.envs.resolve_goal_env``. ``world_size``: the processes of a
    data-parallel run (torchrun), which share the global sizes.

    Raises ConfigError with one line naming the key, its value and what is allowed.
    """
    for key, value in flat_items(cfg).items():
        if key not in RULES:
            raise ConfigError(f"{key}={value!r} is not allowed: config.yaml has no such key")
        problem = RULES[key].problem(value)
        if problem:
            raise ConfigError(f"{key}={value!r} is not allowed: {problem}")
    _check_device(cfg.device)
    _check_combinations(cfg)
    if world_size > 1:
        _check_data_parallel(cfg, world_size)


def _check_device(name: str) -> None:
    if not name:
        return
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as error:
        raise ConfigError(f"device={name!r} is not allowed: {str(error).splitlines()[0]}") from None
    if device.type == "cpu":
        return
    if device.type == "cuda" and torch.cuda.is_available():
        if device.index is None or device.index < torch.cuda.device_count():
            return
        raise ConfigError(
            f"device={name!r} is not allowed: this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    raise ConfigError(
        f"device={name!r} is not allowed: this machine has no {device.type} device; use cpu or leave it empty"
    )


# Critic losses that read sigmoid(f) as a probability: a quasimetric energy, -d <= 0, caps it at 1/2.
SIGMOID_LOSSES = ("binary_nce", "td")


def _check_energy(cfg) -> None:
    loss = cfg.loss
    if loss.energy in QUASIMETRIC_ENERGIES and loss.contrastive in SIGMOID_LOSSES:
        raise ConfigError(
            f"loss.energy={loss.energy} is not allowed with loss.contrastive={loss.contrastive}: that loss reads "
            f"sigmoid(f) as a probability, which a distance energy (-d <= 0) caps at 1/2; use "
            f"loss.contrastive=infonce, symmetric_infonce, td_infonce or tmd, or a dot-product energy"
        )
    if loss.contrastive == "tmd" and loss.energy not in QUASIMETRIC_ENERGIES:
        raise ConfigError(
            f"loss.contrastive=tmd is not allowed with loss.energy={loss.energy}: TMD distils a quasimetric; "
            f"use loss.energy={' or '.join(QUASIMETRIC_ENERGIES)}"
        )
    if loss.energy in QUASIMETRIC_ENERGIES:
        components, embed = loss.quasimetric_components, cfg.model.embed_dim
        smallest = 2 if loss.energy == "mrn" else 1
        if embed % components or embed // components < smallest:
            raise ConfigError(
                f"loss.quasimetric_components={components} is not allowed with model.embed_dim={embed} and "
                f"loss.energy={loss.energy}: embed_dim must be a multiple of it"
                + (" with at least 2 dimensions per part" if loss.energy == "mrn" else "")
            )


def _check_combinations(cfg) -> None:
    _check_energy(cfg)
    if cfg.model.policy_mean != "tanh" and cfg.model.policy != "fixed_std_normal":
        raise ConfigError(
            f"model.policy_mean={cfg.model.policy_mean} is not allowed with model.policy={cfg.model.policy}: "
            "it sets the mean of fixed_std_normal; tanh_normal is bounded by its tanh"
        )
    if cfg.loss.actor_loss == "contrastive" and cfg.loss.bc_coef > 1:
        raise ConfigError(
            f"loss.bc_coef={_number(cfg.loss.bc_coef)} is not allowed with loss.actor_loss=contrastive: it is the "
            "behaviour-cloning share of that actor loss, in [0, 1] (ddpg_bc's BC weight, beside the normalised Q, "
            "may exceed 1)"
        )
    if cfg.loss.auto_alpha and cfg.loss.alpha_init <= 0:
        raise ConfigError(
            f"loss.alpha_init={cfg.loss.alpha_init!r} is not allowed with loss.auto_alpha=true: "
            "it must be positive"
        )
    if cfg.loss.actor_loss == "ddpg_bc" and (cfg.loss.auto_alpha or cfg.loss.alpha_init):
        raise ConfigError(
            f"loss.actor_loss=ddpg_bc is not allowed with loss.alpha_init={cfg.loss.alpha_init!r} and "
            f"loss.auto_alpha={str(cfg.loss.auto_alpha).lower()}: the DDPG+BC actor has no entropy term; "
            "set loss.alpha_init=0 and loss.auto_alpha=false"
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
    device = get_device(cfg)
    if cfg.compile.cudagraphs is True and device.type != "cuda":
        raise ConfigError(f"compile.cudagraphs=true is not allowed on device {str(device)!r}: CUDA graphs need a GPU")


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
    if cfg.compile.cudagraphs is True:
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
