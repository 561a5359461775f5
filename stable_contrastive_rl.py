"""Stable Contrastive RL: goal-conditioned contrastive RL (Zheng, Eysenbach et al., arXiv 2306.03346).

The critic f(s, a, g) = phi(s, a)^T psi(g) learns by InfoNCE which goal, among the batch's, is a future
state of each transition; the policy pi(a | s, g) picks actions that maximise it. Trains online, offline
from a Minari dataset (``offline.dataset``), or offline then online (``offline.finetune``). Builders live
in utils.py.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
import numpy as np
import torch

import contrastive_rl  # noqa: F401  (before torchrl, which imports MuJoCo: it picks MuJoCo's offscreen GL backend)
from torchrl._utils import timeit
from torchrl.record.loggers import generate_exp_name

from contrastive_rl.checkpoint import (
    Checkpointer,
    CheckpointError,
    find_checkpoint,
    flat_config,
    load_checkpoint,
    restart_episodes,
)
from contrastive_rl.config import ConfigError, get_device, rank_config, trains_online, validate_config
from contrastive_rl.distributed import broadcast_from_rank_zero, init_distributed
from contrastive_rl.envs import DataKeys, resolve_goal_env
from contrastive_rl.evaluation import evaluate_and_record, log_metrics, report_time_shares, train_episode_metrics
from contrastive_rl.nonfinite import NonFiniteError
from contrastive_rl.offline import load_offline_data
from contrastive_rl.progress import ProgressBar, RunProgress, describe_plan, planned_updates
from contrastive_rl.runtime import tune_runtime
from contrastive_rl.update import GradientUpdate, set_matmul_precision
from utils import (
    make_agent,
    make_augmentation,
    make_collector,
    make_eval_environments,
    make_logger,
    make_loss_module,
    make_optimizer,
    make_replay_buffer,
    make_target_updater,
    make_value_maps,
    make_train_environment,
    make_video_environment,
)

log = logging.getLogger(__name__)


@hydra.main(version_base="1.1", config_path="", config_name="config")
def main(cfg: "DictConfig"):  # noqa: F821
    # Under torchrun, one process per device; rank 0 alone logs, evaluates and checkpoints.
    rank, world_size = init_distributed()
    is_main = rank == 0
    try:
        validate_config(cfg, world_size)
        env_name = resolve_goal_env(cfg)
        offline_data = load_offline_data(cfg, env_name) if cfg.offline.dataset else None
        checkpoint_path = find_checkpoint(cfg)
        checkpoint = load_checkpoint(cfg, checkpoint_path, offline_data) if checkpoint_path else None
    except ConfigError as error:
        raise SystemExit(f"error: {error}") from None
    rank_cfg = rank_config(cfg, rank, world_size)
    device = get_device(cfg)
    keys = DataKeys.from_config(cfg)
    tune_runtime()
    set_matmul_precision(cfg)
    torch.manual_seed(rank_cfg.env.seed)
    np.random.seed(rank_cfg.env.seed)

    progress = RunProgress.start(cfg)
    if checkpoint:
        progress.load_state_dict(checkpoint["progress"])
    exp_name = checkpoint["exp_name"] if checkpoint else generate_exp_name("StableContrastiveRL", cfg.logger.exp_name)
    logger = make_logger(cfg, exp_name) if is_main else None

    # Envs, networks, loss, optimizer, replay buffer
    eval_envs = make_eval_environments(cfg, env_name)
    video_env = make_video_environment(cfg, env_name, logger) if is_main else None
    actor, critic = make_agent(cfg, next(iter(eval_envs.values())), keys, device)
    loss_module = make_loss_module(cfg, actor, critic, keys, world_size)
    if world_size > 1:
        broadcast_from_rank_zero(loss_module)
    optimizer = make_optimizer(cfg, loss_module)
    target_updater = make_target_updater(cfg, loss_module)
    replay_buffer = make_replay_buffer(rank_cfg, keys, device, offline_data)
    augment = make_augmentation(cfg, keys)
    checkpointer = Checkpointer(Path.cwd(), replay_buffer, checkpoint)
    if checkpoint:
        loss_module.load_state_dict(checkpoint["loss_module"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        checkpointer.restore_replay_buffer()

    update = GradientUpdate(cfg, loss_module, optimizer, target_updater, device, world_size)
    value_maps = make_value_maps(cfg, env_name, loss_module, actor, logger) if is_main else None

    def train(num_updates: int, where: str, pbar: ProgressBar) -> dict[str, float]:
        """``num_updates`` updates on sampled batches; their mean losses and diagnostics."""
        frames_left = cfg.collector.total_frames - progress.collected_frames if trains_online(cfg) else 0
        seconds_per_frame = timeit.todict(percall=False).get("collect", 0.0) / max(progress.collected_frames, 1)
        pbar.start_round(progress.num_updates, frames_left, seconds_per_frame)
        losses = []
        for index in range(num_updates):
            with timeit("rb - sample"):
                batch = replay_buffer.sample()
                if augment is not None:
                    batch = augment(batch)
            with timeit("update"):
                try:
                    loss_td = update(batch, f"update {index + 1} of {num_updates} {where}")
                except NonFiniteError as error:
                    raise SystemExit(f"error: {error}; run stopped before applying it") from None
            if loss_td is None:
                progress.skipped_updates += 1
            else:
                losses.append(loss_td.select(*loss_module.out_keys))
            pbar.updated(progress.num_updates + index + 1)
        progress.num_updates += num_updates
        metrics = {"train/skipped_updates": progress.skipped_updates}
        if losses:
            mean = torch.stack(losses).mean()
            metrics.update({f"train/{key}": mean[key].item() for key in mean.keys()})
        return metrics

    def save_checkpoint() -> None:
        if not is_main:
            return
        with timeit("checkpoint"):
            try:
                checkpointer.save({
                    "config": flat_config(cfg),
                    "exp_name": exp_name,
                    "loss_module": loss_module.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "progress": progress.state_dict(),
                })
            except CheckpointError as error:
                raise SystemExit(f"error: {error}") from None

    total_updates = planned_updates(cfg)
    if is_main:
        log.info(describe_plan(cfg, device, total_updates))
    start_time = time.perf_counter()

    # Offline: gradient steps on the dataset; the logging step counts gradient steps.
    offline_steps = cfg.offline.gradient_steps if offline_data is not None else 0
    if offline_steps:
        if progress.collected_frames == 0:  # a checkpoint of the offline phase: its random state goes on here
            progress.restore_rng()
        log_every = min(cfg.offline.eval_interval, 1000)
        with ProgressBar(cfg, device, total_updates, total=offline_steps, initial=progress.num_updates,
                         unit="updates", disable=not is_main) as pbar:
            while progress.num_updates < offline_steps:
                to_next_eval = cfg.offline.eval_interval - progress.num_updates % cfg.offline.eval_interval
                batch_updates = min(log_every, offline_steps - progress.num_updates, to_next_eval)
                metrics = train(batch_updates, f"after {progress.num_updates} offline gradient steps", pbar)
                pbar.update(batch_updates)
                if is_main and (progress.num_updates % cfg.offline.eval_interval == 0
                                or progress.num_updates == offline_steps):
                    step = progress.num_updates
                    metrics.update(evaluate_and_record(cfg, eval_envs, video_env, actor, step, progress, value_maps))
                    pbar.show_success(metrics["eval/success_final"], progress.num_updates)
                metrics.update(progress.rates(time.perf_counter() - start_time))
                log_metrics(logger, metrics, progress.num_updates)

                # Checkpoint every checkpoint.interval gradient steps and at the end of the offline phase.
                next_checkpoint = progress.next_offline_checkpoint
                interval_reached = cfg.checkpoint.interval and progress.num_updates >= next_checkpoint
                if interval_reached:
                    progress.next_offline_checkpoint += cfg.checkpoint.interval
                if interval_reached or progress.num_updates == offline_steps:
                    save_checkpoint()

    # Online: collect, store, update; the logging step counts env steps (after the offline steps).
    if trains_online(cfg):
        train_env = make_train_environment(rank_cfg, env_name)
        collector = make_collector(rank_cfg, train_env, actor, device, progress.collected_frames)
        progress.restore_rng()
        restart_episodes(rank_cfg, collector, progress.collected_frames)
        with ProgressBar(cfg, device, total_updates, total=cfg.collector.total_frames,
                         initial=progress.collected_frames, unit="frames", disable=not is_main) as pbar:
            collector_iter = iter(collector)
            for _ in range(len(collector)):
                with timeit("collect"):
                    batch = next(collector_iter)
                frames = batch.numel() * world_size  # frame counts are global, as the config's
                progress.collected_frames += frames
                pbar.update(frames)
                with timeit("rb - extend"):
                    replay_buffer.extend(batch.reshape(cfg.collector.num_envs, -1).select(*keys.stored))

                metrics = train_episode_metrics(batch)
                if progress.collected_frames >= cfg.collector.init_random_frames:
                    batch_updates = progress.credit_updates(frames, cfg.optim.utd_ratio)
                    metrics.update(train(batch_updates, f"at env step {progress.collected_frames}", pbar))
                    collector.update_policy_weights_()

                if (progress.collected_frames >= progress.next_eval
                        or progress.collected_frames >= cfg.collector.total_frames):
                    progress.next_eval += cfg.logger.eval_interval
                    if is_main:
                        metrics.update(evaluate_and_record(cfg, eval_envs, video_env, actor, progress.collected_frames,
                                                           progress, value_maps))
                        pbar.show_success(metrics["eval/success_final"], progress.num_updates)

                metrics.update(progress.rates(time.perf_counter() - start_time))
                metrics["train/frames_per_second"] = progress.collected_frames / metrics["train/elapsed_seconds"]
                metrics["train/collected_frames"] = progress.collected_frames
                log_metrics(logger, metrics, offline_steps + progress.collected_frames)

                # Checkpoint every checkpoint.interval env steps and at the end. Episodes are cut and
                # restarted here in every run, resumed or not, so both go on alike.
                interval_reached = cfg.checkpoint.interval and progress.collected_frames >= progress.next_checkpoint
                if interval_reached:
                    progress.next_checkpoint += cfg.checkpoint.interval
                if interval_reached or progress.collected_frames >= cfg.collector.total_frames:
                    replay_buffer.end_episodes()
                    save_checkpoint()
                    restart_episodes(rank_cfg, collector, progress.collected_frames)
        collector.shutdown()
        if not train_env.is_closed:
            train_env.close()

    for env in (*eval_envs.values(), video_env):
        if env is not None and not env.is_closed:
            env.close()
    if is_main:
        report_time_shares(logger, time.perf_counter() - start_time, progress.num_updates)
    if logger is not None:
        logger.close()  # flush while the working directory is still the run's
    if world_size > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
