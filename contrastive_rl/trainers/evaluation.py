"""Evaluation episodes, their metrics and videos, and what the logger receives."""
from __future__ import annotations

import logging

import torch
import tqdm
from tensordict import TensorDict
from torchrl._utils import timeit
from torchrl.envs import TransformedEnv
from torchrl.envs.utils import ExplorationType, set_exploration_type

from contrastive_rl.envs.goal_envs import EVAL_SEED_STREAM, stream_seed

log = logging.getLogger(__name__)
PROGRESS_BAR_STEPS = 10_000  # evaluations of at least this many env steps show a progress bar


def episode_metrics(rollout: TensorDict) -> dict[str, float]:
    """Success at the last step and anywhere, final goal distance (where the env has goal states: not
    OGBench's image-only envs) and return of the FIRST episode of each env in a ``[num_envs, time]``
    rollout."""
    done = rollout["next", "done"].squeeze(-1)
    done[:, -1] = True
    last = done.int().argmax(-1)
    in_episode = torch.arange(done.shape[-1], device=done.device) <= last.unsqueeze(-1)
    rows = torch.arange(done.shape[0], device=done.device)
    final = rollout["next"][rows, last]
    success = rollout["next", "success"].squeeze(-1)
    metrics = {
        "success_final": final["success"].float().mean().item(),
        "success_any": (success & in_episode).any(-1).float().mean().item(),
        "return": final["episode_reward"].mean().item(),
        "episode_length": (last + 1).float().mean().item(),
    }
    if "achieved_goal" in final.keys():
        metrics["final_goal_distance"] = (final["achieved_goal"] - final["desired_goal"]).norm(dim=-1).mean().item()
    return metrics


@torch.no_grad()
def evaluation_rollout(eval_env, actor, max_steps: int, seed: int, bar: tqdm.tqdm | None = None) -> TensorDict:
    """One episode per eval env on fresh desired goals (drawn from ``seed``), acting with the policy's
    mode: the ``[num_envs, max_steps]`` rollout. ``bar`` counts its env steps."""
    eval_env.set_seed(seed)
    episodes = eval_env.batch_size.numel()
    callback = None if bar is None else (lambda env, tensordict: bar.update(episodes))
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        rollout = eval_env.rollout(max_steps, actor, auto_cast_to_device=True, break_when_any_done=False,
                                   callback=callback)
    if bar is not None:
        bar.update(episodes)  # rollout calls back after every step but the last
    return rollout


def record_video(video_env: TransformedEnv, actor, max_steps: int, seed: int, step: int) -> TensorDict:
    """Replay the first evaluation episode (same seed, deterministic policy) in ``video_env`` and log
    its video at ``step``; return the rollout."""
    video_env.set_seed(seed)
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        rollout = video_env.rollout(max_steps, actor, auto_cast_to_device=True)
    video_env.transform[-1].dump(step=step)
    return rollout


def evaluate_and_record(cfg, eval_envs: dict, video_env, actor, step: int, progress,
                        value_maps=None) -> dict[str, float]:
    """The ``eval/*`` metrics at ``step``, and the video of its first episode every
    ``logger.video_every`` evaluations; counts the evaluation in ``progress``. With one env per
    evaluation task (OGBench), each task's final success (``eval/taskK_success``), their mean
    (``eval/overall_success``, the figure OGBench reports) and the other metrics averaged over tasks;
    ``value_maps`` (``contrastive_rl.value_maps.ValueMaps``) then draws each task's value map."""
    seed = stream_seed(cfg.env.seed, EVAL_SEED_STREAM, step)
    env_steps = sum(env.batch_size.numel() for env in eval_envs.values()) * cfg.env.max_steps
    with timeit("eval"), tqdm.tqdm(total=env_steps, desc=f"evaluation at step {step}", unit="env steps",
                                   leave=False, disable=env_steps < PROGRESS_BAR_STEPS) as bar:
        rollouts = {task: evaluation_rollout(env, actor, cfg.env.max_steps, seed, bar)
                    for task, env in eval_envs.items()}
        per_task = {task: episode_metrics(rollout) for task, rollout in rollouts.items()}
    if value_maps is not None:
        with timeit("value maps"):
            value_maps(rollouts, step)
    names = next(iter(per_task.values()))
    metrics = {name: sum(task[name] for task in per_task.values()) / len(per_task) for name in names}
    if None not in per_task:
        metrics.update({f"task{task}_success": results["success_final"] for task, results in per_task.items()})
        metrics["overall_success"] = metrics["success_final"]
    if video_env is not None and progress.evaluations % cfg.logger.video_every == 0:
        with timeit("video"):
            record_video(video_env, actor, cfg.env.max_steps, seed=seed, step=step)
    progress.evaluations += 1
    return {f"eval/{key}": value for key, value in metrics.items()}


def train_episode_metrics(batch: TensorDict) -> dict[str, float]:
    """Success and return of the training episodes that ended in a collected batch."""
    done = batch["next", "done"]
    if not done.any():
        return {}
    return {
        "train/success_final": batch["next", "success"][done].float().mean().item(),
        "train/return": batch["next", "episode_reward"][done].mean().item(),
    }


def log_metrics(logger, metrics: dict, step: int) -> None:
    """Every metric, and the wall-clock of each timed part so far (``time/*``), at ``step``."""
    if logger is None:
        return
    with timeit("logging"):
        for name, value in {**metrics, **timeit.todict(prefix="time")}.items():
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
        for name, share in shares.items():
            logger.log_scalar(f"time_share/{name}", share, step)
    return shares
