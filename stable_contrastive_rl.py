"""Stable Contrastive RL: goal-conditioned contrastive RL (Zheng, Eysenbach et al., arXiv 2306.03346).

The critic f(s, a, g) = phi(s, a)^T psi(g) learns by InfoNCE which goal, among the batch's, is a future
state of each transition; the policy pi(a | s, g) picks actions that maximise it. Trains online, offline
from a Minari dataset (``offline.dataset``), or offline then online (``offline.finetune``). Builders live
in utils.py.
"""
from __future__ import annotations

import time
from pathlib import Path

import hydra
import numpy as np
import torch
import tqdm
from tensordict import TensorDict
from tensordict.nn import CudaGraphModule
from torchrl._utils import compile_with_warmup, timeit
from torchrl.record.loggers import generate_exp_name

from contrastive_rl.distributed import average_gradients, broadcast_from_rank_zero, init_distributed
from contrastive_rl.envs import ConfigError, NonFiniteError
from utils import (
    CHECKPOINT_FILE,
    check_finite,
    data_keys,
    evaluate,
    find_checkpoint,
    flat_config,
    get_device,
    gradient_norm,
    keep_freed_heap_memory,
    load_checkpoint,
    load_replay_buffer,
    load_offline_data,
    log_metrics,
    make_agent,
    make_augmentation,
    make_collector,
    make_eval_environment,
    make_logger,
    make_loss_module,
    make_optimizer,
    make_replay_buffer,
    make_target_updater,
    make_train_environment,
    make_video_environment,
    rank_config,
    record_video,
    report_time_shares,
    restart_episodes,
    rng_state,
    save_checkpoint,
    set_rng_state,
    skip_missing_pandas_lookups,
    train_episode_metrics,
    trains_online,
    validate_config,
)

LOSS_KEYS = ("loss_critic", "loss_actor", "loss_alpha")
METRIC_KEYS = ("alpha", "entropy", "logits_accuracy", "logits_positive", "logits_negative")


@hydra.main(version_base="1.1", config_path="", config_name="config")
def main(cfg: "DictConfig"):  # noqa: F821
    # Under torchrun, one process per device; rank 0 alone logs, evaluates and checkpoints.
    rank, world_size = init_distributed()
    is_main = rank == 0
    try:
        env_name = validate_config(cfg, world_size)
        offline_data = load_offline_data(cfg, env_name) if cfg.offline.dataset else None
        resume_from = find_checkpoint(cfg)
        resumed = load_checkpoint(cfg, resume_from) if resume_from else None
    except ConfigError as error:
        raise SystemExit(f"error: {error}") from None
    rank_cfg = rank_config(cfg, rank, world_size)
    device = get_device(cfg)
    keep_freed_heap_memory()
    skip_missing_pandas_lookups()
    torch.manual_seed(rank_cfg.env.seed)
    np.random.seed(rank_cfg.env.seed)

    exp_name = resumed["exp_name"] if resumed else generate_exp_name("StableContrastiveRL", cfg.logger.exp_name)
    logger = make_logger(cfg, exp_name) if is_main else None

    eval_env = make_eval_environment(cfg, env_name)
    video_env = make_video_environment(cfg, env_name, logger) if is_main else None
    actor, critic = make_agent(cfg, eval_env, device)
    loss_module = make_loss_module(cfg, actor, critic, world_size)
    if world_size > 1:
        broadcast_from_rank_zero(loss_module)
    optimizer = make_optimizer(cfg, loss_module)
    trained_parameters = [p for group in optimizer.param_groups for p in group["params"]]
    target_updater = make_target_updater(cfg, loss_module)
    replay_buffer = make_replay_buffer(rank_cfg, device, offline_data)
    augment = make_augmentation(cfg)
    stored_keys = data_keys(cfg).stored
    if resumed:
        loss_module.load_state_dict(resumed["loss_module"])
        optimizer.load_state_dict(resumed["optimizer"])
        load_replay_buffer(replay_buffer, resume_from, resumed)

    def compute_gradients(batch: TensorDict) -> TensorDict:
        loss_td = loss_module(batch)
        sum(loss_td[key] for key in LOSS_KEYS).backward()
        return loss_td.detach()

    if cfg.compile.compile:
        compute_gradients = compile_with_warmup(compute_gradients, mode=cfg.compile.compile_mode or None, warmup=1)
    if cfg.compile.cudagraphs:
        compute_gradients = CudaGraphModule(compute_gradients, in_keys=[], out_keys=[], warmup=5)

    def update(batch: TensorDict, where: str) -> TensorDict | None:
        """One gradient step; None when a non-finite loss or gradient skips the batch."""
        torch.compiler.cudagraph_mark_step_begin()
        loss_td = compute_gradients(batch).clone()
        if world_size > 1:
            average_gradients(trained_parameters, world_size)
        loss_td["grad_norm"] = gradient_norm(optimizer)
        try:
            finite = check_finite(loss_td, (*LOSS_KEYS, "grad_norm"), where, cfg.optim.on_nonfinite)
        except NonFiniteError as error:
            raise SystemExit(f"error: {error}; run stopped before applying it") from None
        if not finite:
            optimizer.zero_grad(set_to_none=True)
            return None
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if target_updater is not None:
            target_updater.step()
        return loss_td

    skipped_updates = resumed["skipped_updates"] if resumed else 0

    def train(num_updates: int, where: str) -> dict[str, float]:
        nonlocal skipped_updates
        losses = []
        for index in range(num_updates):
            with timeit("rb - sample"):
                sample = replay_buffer.sample()
                if augment is not None:
                    sample = augment(sample)
            with timeit("update"):
                loss_td = update(sample, f"update {index + 1} of {num_updates} {where}")
            if loss_td is None:
                skipped_updates += 1
            else:
                losses.append(loss_td.select(*LOSS_KEYS, *METRIC_KEYS))
        metrics = {"train/skipped_updates": skipped_updates}
        if losses:
            losses = torch.stack(losses).mean()
            metrics.update({f"train/{key}": losses[key].item() for key in losses.keys()})
        return metrics

    evaluations = resumed["evaluations"] if resumed else 0

    def evaluate_policy(pbar, step: int) -> dict[str, float]:
        nonlocal evaluations
        if not is_main:
            return {}
        seed = cfg.env.seed + 10_000 + step
        with timeit("eval"):
            eval_metrics = evaluate(eval_env, actor, cfg.env.max_steps, seed=seed)
        if video_env is not None and evaluations % cfg.logger.video_every == 0:
            with timeit("video"):
                record_video(video_env, actor, cfg.env.max_steps, seed=seed, step=step)
        evaluations += 1
        pbar.set_postfix(success=f"{eval_metrics['success_final']:.2f}")
        return {f"eval/{key}": value for key, value in eval_metrics.items()}

    num_updates = resumed["num_updates"] if resumed else 0
    start_time = time.perf_counter()

    def progress_metrics() -> dict[str, float]:
        elapsed = time.perf_counter() - start_time
        return {
            "train/updates_per_second": num_updates / elapsed,
            "train/num_updates": num_updates,
            "train/elapsed_seconds": elapsed,
        }

    def log(metrics: dict[str, float], step: int) -> None:
        if logger is not None:
            with timeit("logging"):
                log_metrics(logger, {**metrics, **timeit.todict(prefix="time")}, step)

    # Offline: gradient steps on the dataset; the logging step counts gradient steps.
    offline_steps = cfg.offline.gradient_steps if offline_data is not None else 0
    if offline_steps:
        with tqdm.tqdm(total=offline_steps, unit="updates", disable=not is_main) as pbar:
            log_every = min(cfg.offline.eval_interval, 1000)
            while num_updates < offline_steps:
                batch_updates = min(log_every, offline_steps - num_updates)
                metrics = train(batch_updates, f"after {num_updates} offline gradient steps")
                num_updates += batch_updates
                pbar.update(batch_updates)
                if num_updates % cfg.offline.eval_interval == 0 or num_updates == offline_steps:
                    metrics.update(evaluate_policy(pbar, num_updates))
                metrics.update(progress_metrics())
                log(metrics, num_updates)

    # Online: collect, store, update; the logging step counts env steps (after the offline steps).
    if trains_online(cfg):
        checkpoint_path = Path.cwd() / CHECKPOINT_FILE
        counters = resumed["counters"] if resumed else {
            "collected_frames": 0, "update_credit": 0.0, "next_eval": cfg.logger.eval_interval,
            "next_checkpoint": cfg.checkpoint.interval,
        }
        collected_frames = counters["collected_frames"]
        update_credit = counters["update_credit"]
        next_eval = counters["next_eval"]
        next_checkpoint = counters["next_checkpoint"]
        train_env = make_train_environment(rank_cfg, env_name)
        collector = make_collector(rank_cfg, train_env, actor, device, collected_frames)
        if resumed:
            set_rng_state(resumed["rng"])
        restart_episodes(rank_cfg, collector, collected_frames)
        num_envs = cfg.collector.num_envs
        checkpointed_frames = collected_frames

        def checkpoint() -> None:
            if not is_main:
                return
            with timeit("checkpoint"):
                save_checkpoint(checkpoint_path, {
                    "config": flat_config(cfg),
                    "exp_name": exp_name,
                    "loss_module": loss_module.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "rng": rng_state(),
                    "num_updates": num_updates,
                    "skipped_updates": skipped_updates,
                    "evaluations": evaluations,
                    "counters": {
                        "collected_frames": collected_frames, "update_credit": update_credit,
                        "next_eval": next_eval, "next_checkpoint": next_checkpoint,
                    },
                }, replay_buffer)

        with tqdm.tqdm(
            total=cfg.collector.total_frames, initial=collected_frames, unit="frames", disable=not is_main
        ) as pbar:
            collector_iter = iter(collector)
            for _ in range(len(collector)):
                with timeit("collect"):
                    batch = next(collector_iter)
                frames = batch.numel() * world_size  # frame counts are global, as the config's
                collected_frames += frames
                pbar.update(frames)

                with timeit("rb - extend"):
                    replay_buffer.extend(batch.reshape(num_envs, -1).select(*stored_keys))

                metrics = train_episode_metrics(batch)
                if collected_frames >= cfg.collector.init_random_frames:
                    update_credit += frames * cfg.optim.utd_ratio
                    batch_updates = int(update_credit)
                    update_credit -= batch_updates
                    metrics.update(train(batch_updates, f"at env step {collected_frames}"))
                    num_updates += batch_updates
                    collector.update_policy_weights_()

                if collected_frames >= next_eval or collected_frames >= cfg.collector.total_frames:
                    next_eval += cfg.logger.eval_interval
                    metrics.update(evaluate_policy(pbar, collected_frames))

                metrics.update(progress_metrics())
                metrics["train/frames_per_second"] = collected_frames / metrics["train/elapsed_seconds"]
                metrics["train/collected_frames"] = collected_frames
                log(metrics, offline_steps + collected_frames)

                if cfg.checkpoint.interval and collected_frames >= next_checkpoint:
                    next_checkpoint += cfg.checkpoint.interval
                    # Episodes are cut here in every run, resumed or not, so both go on alike.
                    replay_buffer.end_episodes()
                    checkpoint()
                    restart_episodes(rank_cfg, collector, collected_frames)
                    checkpointed_frames = collected_frames
        if checkpointed_frames != collected_frames:
            replay_buffer.end_episodes()
            checkpoint()

        collector.shutdown()
        if not train_env.is_closed:
            train_env.close()
    for env in (eval_env, video_env):
        if env is not None and not env.is_closed:
            env.close()
    if is_main:
        report_time_shares(logger, time.perf_counter() - start_time, num_updates)
    if logger is not None:
        logger.close()  # flush while the working directory is still the run's
    if world_size > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
