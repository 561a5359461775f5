"""Stable Contrastive RL: goal-conditioned contrastive RL (Zheng, Eysenbach et al., arXiv 2306.03346).

The critic f(s, a, g) = phi(s, a)^T psi(g) learns by InfoNCE which goal, among the batch's, is a future
state of each transition; the policy pi(a | s, g) picks actions that maximise it. Trains online, offline
from a Minari dataset (``offline.dataset``), or offline then online (``offline.finetune``). Builders live
in utils.py.
"""
from __future__ import annotations

import dataclasses
import logging
import sys
import time
from pathlib import Path

import hydra
import numpy as np
import torch

import contrastive_rl  # noqa: F401  (before torchrl, which imports MuJoCo: it picks MuJoCo's offscreen GL backend)
from hydra.core.hydra_config import HydraConfig
from torchrl._utils import timeit
from torchrl.record.loggers import generate_exp_name

from contrastive_rl.trainers.checkpoint import (
    CheckpointError,
    Checkpointer,
    find_checkpoint,
    flat_config,
    load_checkpoint,
    restart_episodes,
)
from contrastive_rl.errors import ConfigError, NonFiniteError
from contrastive_rl.trainers.config import get_device, rank_config, trains_online, validate_config
from contrastive_rl.trainers.distributed import broadcast_from_rank_zero, init_distributed
from contrastive_rl.envs.goal_envs import DataKeys, resolve_goal_env
from contrastive_rl.trainers.evaluation import (
    evaluate_and_record,
    log_metrics,
    report_time_shares,
    train_episode_metrics,
)
from contrastive_rl.data.offline import load_offline_data
from contrastive_rl.trainers.progress import ProgressBar, RunProgress, describe_plan, offline_steps, planned_updates
from contrastive_rl.trainers.runtime import tune_runtime
from contrastive_rl.trainers.stopping import StopOnSignal, exit_quietly_on_interrupt, resume_command
from contrastive_rl.trainers.update import GradientUpdate, SpeedPlan, set_matmul_precision
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
    env_name, offline_data, checkpoint = read_inputs(cfg, world_size)
    progress = RunProgress.start(cfg)
    if checkpoint:
        progress.load_state_dict(checkpoint["progress"])
        if progress.is_complete(cfg):
            log.info("the run in %s is complete (%d gradient updates, %d env steps): nothing left to train",
                     Path.cwd(), progress.num_updates, progress.collected_frames)
            return
    run = build_run(cfg, rank, world_size, env_name, offline_data, checkpoint, progress)
    if run.is_main:
        log.info(describe_plan(cfg, run.device, run.total_updates, run.gradient_update.plan))

    with StopOnSignal(world_size) as stop:
        stopped = bool(run.offline_steps) and train_offline(run, stop)
        if not stopped and trains_online(cfg):
            stopped = train_online(run, stop)
    close_run(run)
    if stopped:
        report_stop(run, stop)
        sys.exit(stop.exit_code)


def read_inputs(cfg, world_size: int):
    """The checked config's env id, offline dataset and checkpoint to resume from; one line on bad input."""
    try:
        validate_config(cfg, world_size)
        env_name = resolve_goal_env(cfg)
        offline_data = load_offline_data(cfg, env_name) if cfg.offline.dataset else None
        candidates = find_checkpoint(cfg)
        checkpoint = load_checkpoint(cfg, candidates, offline_data) if candidates else None
    except ConfigError as error:
        raise SystemExit(f"error: {error}") from None
    return env_name, offline_data, checkpoint


@dataclasses.dataclass
class Run:
    """What the training loops share: the config, the networks and their update, the data, the envs that
    evaluate, the logger, and where the run stands."""

    cfg: "DictConfig"  # noqa: F821
    rank_cfg: "DictConfig"  # noqa: F821  (this rank's seeds and shares of the sizes)
    env_name: str
    world_size: int
    is_main: bool
    device: torch.device
    keys: DataKeys
    progress: RunProgress
    exp_name: str
    logger: object
    eval_envs: dict
    video_env: object
    actor: object
    loss_module: object
    optimizer: torch.optim.Optimizer
    replay_buffer: object
    augment: object
    checkpointer: Checkpointer
    gradient_update: GradientUpdate
    value_maps: object
    offline_steps: int
    total_updates: int
    start_time: float


def build_run(cfg, rank: int, world_size: int, env_name: str, offline_data, checkpoint, progress) -> Run:
    rank_cfg = rank_config(cfg, rank, world_size)
    device = get_device(cfg)
    keys = DataKeys.from_config(cfg)
    total_updates = planned_updates(cfg)
    speed_plan = SpeedPlan.resolve(cfg, device, total_updates, world_size)
    tune_runtime()
    set_matmul_precision(speed_plan)
    torch.manual_seed(rank_cfg.env.seed)
    np.random.seed(rank_cfg.env.seed)
    is_main = rank == 0
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
    checkpointer = Checkpointer(Path.cwd(), replay_buffer, checkpoint, keep=cfg.checkpoint.keep)
    if checkpoint:
        loss_module.load_state_dict(checkpoint["loss_module"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        checkpointer.restore_replay_buffer()
    gradient_update = GradientUpdate(cfg, loss_module, optimizer, target_updater, device, world_size, speed_plan)
    value_maps = make_value_maps(cfg, env_name, loss_module, actor, logger) if is_main else None
    return Run(cfg, rank_cfg, env_name, world_size, is_main, device, keys, progress, exp_name, logger, eval_envs,
               video_env, actor, loss_module, optimizer, replay_buffer, augment, checkpointer, gradient_update,
               value_maps, offline_steps=offline_steps(cfg), total_updates=total_updates,
               start_time=time.perf_counter())


def train_offline(run: Run, stop: StopOnSignal) -> bool:
    """Gradient steps on the dataset; the logging step counts gradient steps. True if a signal stopped it."""
    cfg, progress = run.cfg, run.progress
    if progress.collected_frames == 0:  # a checkpoint of the offline phase: its random state goes on here
        progress.restore_rng()
    log_every = min(cfg.offline.eval_interval, 1000)
    with ProgressBar(cfg, run.device, run.total_updates, run.gradient_update.plan.warmup_updates,
                     total=run.offline_steps, initial=progress.num_updates,
                     unit="updates", disable=not run.is_main) as pbar:
        while progress.num_updates < run.offline_steps:
            to_next_eval = cfg.offline.eval_interval - progress.num_updates % cfg.offline.eval_interval
            batch_updates = min(log_every, run.offline_steps - progress.num_updates, to_next_eval)
            metrics = update(run, batch_updates, f"after {progress.num_updates} offline gradient steps", pbar, stop)
            pbar.show_updates(progress.num_updates, force=True)
            stopped = stop.agreed(run.device)
            at_end = progress.num_updates == run.offline_steps
            if not stopped and (progress.num_updates % cfg.offline.eval_interval == 0 or at_end):
                metrics.update(evaluate(run, progress.num_updates, pbar))
            log_step(run, metrics, progress.num_updates)
            # Checkpoint every checkpoint.interval gradient steps, at the end of the offline phase and on a signal.
            due = progress.checkpoint_due(progress.num_updates, cfg.checkpoint.interval, offline=True)
            if due or at_end or stopped:
                save_checkpoint(run)
            if stopped:
                return True
    return False


def train_online(run: Run, stop: StopOnSignal) -> bool:
    """Collect, store, update; the logging step counts env steps (after the offline steps). True if a
    signal stopped it."""
    cfg, progress = run.cfg, run.progress
    train_env = make_train_environment(run.rank_cfg, run.env_name)
    collector = make_collector(run.rank_cfg, train_env, run.actor, run.device, progress.collected_frames)
    progress.restore_rng()
    restart_episodes(run.rank_cfg, collector, progress.collected_frames)
    stopped = False
    with ProgressBar(cfg, run.device, run.total_updates, run.gradient_update.plan.warmup_updates,
                     total=cfg.collector.total_frames,
                     initial=progress.collected_frames, unit="frames", disable=not run.is_main) as pbar:
        collector_iter = iter(collector)
        for _ in range(len(collector)):
            with timeit("collect"):
                batch = next(collector_iter)
            frames = batch.numel() * run.world_size  # frame counts are global, as the config's
            progress.collected_frames += frames
            pbar.update(frames)
            with timeit("rb - extend"):
                run.replay_buffer.extend(batch.reshape(cfg.collector.num_envs, -1).select(*run.keys.stored))

            metrics = train_episode_metrics(batch)
            if progress.collected_frames >= cfg.collector.init_random_frames:
                batch_updates = progress.credit_updates(frames, cfg.optim.utd_ratio)
                done_before = progress.num_updates
                metrics.update(update(run, batch_updates, f"at env step {progress.collected_frames}", pbar, stop))
                progress.update_credit += batch_updates - (progress.num_updates - done_before)  # owed if stopped
                collector.update_policy_weights_()
            stopped = stop.agreed(run.device)
            at_end = progress.collected_frames >= cfg.collector.total_frames
            if not stopped and (progress.collected_frames >= progress.next_eval or at_end):
                progress.next_eval += cfg.logger.eval_interval
                metrics.update(evaluate(run, progress.collected_frames, pbar))
            metrics["train/frames_per_second"] = progress.collected_frames / (time.perf_counter() - run.start_time)
            metrics["train/collected_frames"] = progress.collected_frames
            log_step(run, metrics, run.offline_steps + progress.collected_frames)

            # Checkpoint every checkpoint.interval env steps, at the end and on a signal. Episodes are cut
            # and restarted here in every run, resumed or not, so both go on alike.
            due = progress.checkpoint_due(progress.collected_frames, cfg.checkpoint.interval, offline=False)
            if due or at_end or stopped:
                run.replay_buffer.end_episodes()
                save_checkpoint(run)
                if stopped:
                    break
                restart_episodes(run.rank_cfg, collector, progress.collected_frames)
    collector.shutdown()
    if not train_env.is_closed:
        train_env.close()
    return stopped


def update(run: Run, num_updates: int, where: str, pbar: ProgressBar, stop: StopOnSignal) -> dict[str, float]:
    """``num_updates`` updates on sampled batches, fewer if a signal asks to stop; their mean losses and
    diagnostics, read from the device once at the end."""
    cfg, progress = run.cfg, run.progress
    frames_left = cfg.collector.total_frames - progress.collected_frames if trains_online(cfg) else 0
    seconds_per_frame = timeit.todict(percall=False).get("collect", 0.0) / max(progress.collected_frames, 1)
    pbar.start_round(progress.num_updates, frames_left, seconds_per_frame)
    loss_tds = []
    for _ in range(num_updates):
        if stop.requested:
            break
        with timeit("rb - sample"):
            batch = run.replay_buffer.sample()
            if run.augment is not None:
                batch = run.augment(batch)
        with timeit("update"):
            loss_tds.append(run.gradient_update(batch))
        pbar.updated(progress.num_updates + len(loss_tds))
    progress.num_updates += len(loss_tds)
    try:
        mean, skipped = run.gradient_update.summarize(loss_tds, lambda i: f"update {i + 1} of {num_updates} {where}")
    except NonFiniteError as error:
        raise SystemExit(f"error: {error}; run stopped before applying it") from None
    progress.skipped_updates += skipped
    metrics = {"train/skipped_updates": progress.skipped_updates}
    if mean is not None:
        metrics.update({f"train/{key}": mean[key].item() for key in run.loss_module.out_keys})
    return metrics


def evaluate(run: Run, step: int, pbar: ProgressBar) -> dict[str, float]:
    """The ``eval/*`` metrics at ``step`` (rank 0 alone evaluates), shown beside the progress bar."""
    if not run.is_main:
        return {}
    metrics = evaluate_and_record(run.cfg, run.eval_envs, run.video_env, run.actor, step, run.progress,
                                  run.value_maps)
    pbar.show_success(metrics["eval/success_final"], run.progress.num_updates)
    return metrics


def log_step(run: Run, metrics: dict, step: int) -> None:
    metrics.update(run.progress.rates(time.perf_counter() - run.start_time))
    log_metrics(run.logger, metrics, step)


def save_checkpoint(run: Run) -> None:
    if not run.is_main:
        return
    with timeit("checkpoint"):
        try:
            run.checkpointer.save({
                "config": flat_config(run.cfg),
                "exp_name": run.exp_name,
                "loss_module": run.loss_module.state_dict(),
                "optimizer": run.optimizer.state_dict(),
                "progress": run.progress.state_dict(),
            })
        except CheckpointError as error:
            raise SystemExit(f"error: {error}") from None


def report_stop(run: Run, stop: StopOnSignal) -> None:
    """One line: the signal, the checkpoint written and the command that resumes the run."""
    if not run.is_main:
        return
    resume = "a data-parallel run does not resume" if run.world_size > 1 else "resume with: " + resume_command(
        Path.cwd(), HydraConfig.get().job.config_name, HydraConfig.get().overrides.task)
    log.info("stopped by %s: checkpoint of %d gradient updates and %d env steps written to %s; %s",
             stop.signal_name, run.progress.num_updates, run.progress.collected_frames, Path.cwd(), resume)


def close_run(run: Run) -> None:
    for env in (*run.eval_envs.values(), run.video_env):
        if env is not None and not env.is_closed:
            env.close()
    if run.is_main:
        report_time_shares(run.logger, time.perf_counter() - run.start_time, run.progress.num_updates)
    if run.logger is not None:
        run.logger.close()  # flush while the working directory is still the run's
    if run.world_size > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    with exit_quietly_on_interrupt():  # also around Hydra's own set-up of the run
        main()
