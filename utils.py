"""Builders of the Stable Contrastive RL example: envs, collector, replay buffer, networks, loss,
optimizer and logger."""
from __future__ import annotations

import functools
from pathlib import Path

import torch
from omegaconf import OmegaConf
from tensordict import TensorDict
from tensordict.nn import InteractionType, TensorDictModule, TensorDictSequential
from tensordict.nn.distributions import NormalParamExtractor
from torchrl.collectors import Collector
from torchrl.envs import CatTensors, EnvCreator, ParallelEnv, TransformedEnv
from torchrl.envs.libs.gym import GymWrapper
from torchrl.modules import MLP, IndependentNormal, ProbabilisticActor, TanhNormal

from torchrl.record import VideoRecorder
from torchrl.record.loggers import get_logger

from contrastive_rl.trainers.config import trains_online
from contrastive_rl.trainers.distributed import gather_batch
from contrastive_rl.envs.goal_envs import (
    EVAL_SEED_STREAM,
    GOAL_KEY,
    DataKeys,
    SuccessInfoReader,
    apply_env_transforms,
    env_maker,
    register_goal_envs,
    stream_seed,
    vector_env_maker,
)
from contrastive_rl.envs.ogbench import NUM_TASKS, is_ogbench_name, make_ogbench_env
from contrastive_rl.objectives.contrastive import ContrastiveLoss
from contrastive_rl.objectives.family import make_contrastive_loss
from contrastive_rl.modules.models import (
    OGBENCH_FINAL_POLICY_SCALE,
    ContrastiveCritic,
    FixedStdNormalHead,
    GoalConditionedNet,
    hidden_layer_kwargs,
    ogbench_init_,
)
from contrastive_rl.data.offline import split_into_columns
from contrastive_rl.data.augmentation import RandomShiftCrop
from contrastive_rl.envs.pixels import GOAL_PIXELS_KEY, PIXELS_KEY
from contrastive_rl.modules.encoders import ENCODERS, SharedEncoderView
from contrastive_rl.data.replay import FutureGoalReplayBuffer
from contrastive_rl.trainers.update import GuardedSoftUpdate
from contrastive_rl.trainers.value_maps import ValueMaps
from contrastive_rl.envs.videos import VIDEO_KEY, Mp4CSVLogger, make_video_gym_env

VIDEO_FPS = 25


# ====================================================================
# Environment
# -----------


def make_train_environment(cfg, env_name: str) -> TransformedEnv:
    """``collector.num_envs`` copies of the env: one vector env in this process, or with
    ``collector.worker_processes`` one TorchRL worker process per env."""
    if cfg.collector.worker_processes:
        make_env = functools.partial(
            env_maker, env_name, cfg.env.max_steps, cfg.env.from_pixels, cfg.env.image_size
        )
        train_env = ParallelEnv(cfg.collector.num_envs, EnvCreator(make_env), serial_for_single=True)
    else:
        train_env = vector_env_maker(
            env_name, cfg.env.max_steps, cfg.collector.num_envs, cfg.env.from_pixels, cfg.env.image_size
        )
    train_env.set_seed(cfg.env.seed)
    return apply_env_transforms(train_env)


def make_eval_environments(cfg, env_name: str) -> dict[int | None, TransformedEnv]:
    """``logger.num_eval_episodes`` copies of the env in one vector env, one episode each, on fresh
    goals (key None); for an OGBench env, one such vector env per evaluation task (keys 1 to 5)."""
    tasks = range(1, NUM_TASKS + 1) if is_ogbench_name(env_name) else [None]
    eval_envs = {}
    for task in tasks:
        eval_env = vector_env_maker(env_name, cfg.env.max_steps, cfg.logger.num_eval_episodes, cfg.env.from_pixels,
                                    cfg.env.image_size, task)
        eval_env.set_seed(stream_seed(cfg.env.seed, EVAL_SEED_STREAM, 0))
        eval_envs[task] = apply_env_transforms(eval_env)
    return eval_envs


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


def make_replay_buffer(
    cfg, keys: DataKeys, device, offline_data: TensorDict | None = None
) -> FutureGoalReplayBuffer:
    """The future-goal buffer, holding the offline dataset first if there is one: grown to fit it, and
    sized to it when nothing is collected after."""
    if offline_data is None:
        capacity = cfg.buffer.size
    else:
        capacity = max(cfg.buffer.size, len(offline_data)) if trains_online(cfg) else len(offline_data)
    replay_buffer = FutureGoalReplayBuffer(
        capacity=capacity,
        num_envs=cfg.collector.num_envs,
        batch_size=cfg.buffer.batch_size,
        gamma=cfg.loss.gamma,
        device=device,
        goal_key=keys.goal,
        achieved_goal_key=keys.achieved_goal,
        actor_goal_key=keys.actor_goal,
        goal_offsets=cfg.buffer.goal_offsets,
    )
    if offline_data is not None:
        columns = split_into_columns(offline_data.select(*keys.stored), cfg.collector.num_envs)
        replay_buffer.extend(columns.to(device))
    return replay_buffer


def make_augmentation(cfg, keys: DataKeys) -> RandomShiftCrop | None:
    """Random crop of the images of a sampled batch: the observation, its goal and the next observation
    share each sample's crop."""
    if not cfg.env.from_pixels or cfg.buffer.random_crop_prob == 0:
        return None
    actor_goal = [keys.actor_goal] if keys.actor_goal else []
    return RandomShiftCrop(
        in_keys=[keys.observation, keys.goal, ("next", keys.observation), *actor_goal],
        pad=cfg.buffer.random_crop_pad,
        prob=cfg.buffer.random_crop_prob,
    )


# ====================================================================
# Model
# -----


def make_agent(cfg, env, keys: DataKeys, device) -> tuple[ProbabilisticActor, ContrastiveCritic]:
    """The policy pi(a | s, g), tanh-Gaussian or fixed-std Gaussian, and the contrastive critic."""
    model = cfg.model
    if cfg.env.from_pixels:
        critic_encoder = ENCODERS[model.encoder](cfg.env.image_size, device=device)
        if model.actor_shares_encoder:
            actor_encoder = SharedEncoderView(critic_encoder)
        else:
            actor_encoder = ENCODERS[model.encoder](cfg.env.image_size, device=device)
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
        **hidden_layer_kwargs(model.hidden_dim, hidden_layers, model.activation, model.actor_layer_norm,
                              model.layer_norm_after_activation),
        device=device,
    )
    if model.init == "ogbench":
        ogbench_init_(actor_net, final_scale=OGBENCH_FINAL_POLICY_SCALE)
    if model.policy == "tanh_normal":
        head = NormalParamExtractor(scale_mapping="biased_softplus_1.0", scale_lb=1e-4)
        distribution_class = TanhNormal
        distribution_kwargs = {
            "low": action_spec.space.low,
            "high": action_spec.space.high,
            "tanh_loc": False,
        }
    else:
        head = FixedStdNormalHead(action_spec.space.low, action_spec.space.high, model.policy_std, model.policy_mean)
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
        activation=model.activation,
        init=model.init,
        norm_after_activation=model.layer_norm_after_activation,
        num_critics=2 if model.twin_critics else 1,
        encoder=critic_encoder,
        device=device,
    )
    return actor, critic


# ====================================================================
# Loss and optimizer
# ------------------


def make_loss_module(cfg, actor, critic, keys: DataKeys, world_size: int = 1) -> ContrastiveLoss:
    loss_module = make_contrastive_loss(
        actor,
        critic,
        contrastive=cfg.loss.contrastive,
        energy=cfg.loss.energy,
        temperature=cfg.loss.temperature,
        learn_temperature=cfg.loss.learn_temperature,
        quasimetric_components=cfg.loss.quasimetric_components,
        tmd_zeta=cfg.loss.tmd_zeta,
        tmd_clip=cfg.loss.tmd_clip,
        tmd_diagonal_weight=cfg.loss.tmd_diagonal_weight,
        weight_negatives=cfg.loss.weight_negatives,
        gamma=cfg.loss.gamma,
        max_importance_weight=cfg.loss.max_importance_weight,
        logsumexp_coef=cfg.loss.logsumexp_coef,
        bc_coef=cfg.loss.bc_coef,
        alpha_init=cfg.loss.alpha_init,
        auto_alpha=cfg.loss.auto_alpha,
        target_entropy=cfg.loss.target_entropy,
        random_goal_fraction=cfg.loss.random_goal_fraction,
        actor_loss=cfg.loss.actor_loss,
        ddpg_at_mode=cfg.model.policy == "fixed_std_normal",
        # OGBench's DDPG+BC clips the unbounded mean before its critic; the stable-CRL code does not.
        clip_actions=cfg.model.policy_mean == "clip" and cfg.loss.actor_loss == "ddpg_bc",
        separate_actor_goals=keys.actor_goal is not None,
        use_state=keys.state is not None,
        gather_batch=gather_batch if world_size > 1 else None,
    )
    loss_module.set_keys(
        observation=keys.observation,
        goal=keys.goal,
        next_observation=("next", keys.observation),
        next_achieved_goal=keys.achieved_goal,
    )
    if keys.actor_goal is not None:
        loss_module.set_keys(actor_goal=keys.actor_goal)
    return loss_module


def make_optimizer(cfg, loss_module: ContrastiveLoss) -> torch.optim.Optimizer:
    """One Adam over critic, actor and (if tuned) entropy parameters: their losses touch disjoint
    parameters, so a single step over their sum equals three separate steps. The fused kernel (CPU
    and CUDA) steps all parameters in one pass, much faster than the default multi-tensor Adam; on
    CUDA it is capturable, so that a CUDA graph can hold the step."""
    param_groups = [
        {"params": loss_module.critic_parameters()},
        {"params": list(loss_module.actor_network_params.values(True, True))},
    ]
    if cfg.loss.auto_alpha:
        param_groups.append({"params": [loss_module.log_alpha]})
    cuda = loss_module.action_low.device.type == "cuda"
    return torch.optim.Adam(param_groups, lr=cfg.optim.lr, fused=True, capturable=cuda)


def make_target_updater(cfg, loss_module: ContrastiveLoss) -> GuardedSoftUpdate | None:
    """Polyak averaging of the target critics, which only the td loss has."""
    if not loss_module.has_target_critic:
        return None
    return GuardedSoftUpdate(loss_module, tau=cfg.loss.target_tau)


def make_value_maps(cfg, env_name: str, loss_module: ContrastiveLoss, actor, logger) -> ValueMaps | None:
    """The value maps drawn after each evaluation (``logger.value_maps``, OGBench pointmazes), into the
    run directory's ``value_maps/``."""
    if not cfg.logger.value_maps:
        return None
    maze = make_ogbench_env(env_name, cfg.env.max_steps).unwrapped
    return ValueMaps(cfg, maze, loss_module, actor, logger, Path.cwd() / "value_maps")


# ====================================================================
# Logger
# ------


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
