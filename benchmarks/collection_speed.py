"""Env steps per second: raw gymnasium against the TorchRL env this project builds, states and pixels.

    python benchmarks/collection_speed.py [--steps 2000] [--repeats 3]

Random actions, one env, one process; medians over ``--repeats`` runs. The TorchRL rows go through
GymEnv (or GymWrapper for images) with the project's transforms and a rollout, as the collector steps
them; the overhead column is their time per step over raw gymnasium's for the same env.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import gymnasium as gym
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from contrastive_rl.envs import register_goal_envs  # noqa: E402
from contrastive_rl.pixels import make_pixel_gym_env  # noqa: E402
from utils import apply_env_transforms, env_maker  # noqa: E402


def raw_steps_per_second(make, steps: int) -> float:
    env = make()
    env.reset(seed=0)
    env.action_space.seed(0)
    start = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()
    elapsed = time.perf_counter() - start
    env.close()
    return steps / elapsed


def torchrl_steps_per_second(env_name: str, max_steps: int, steps: int, **kwargs) -> float:
    env = apply_env_transforms(env_maker(env_name, max_steps, **kwargs))
    env.set_seed(0)
    env.rollout(10)
    start = time.perf_counter()
    env.rollout(steps, break_when_any_done=False)
    elapsed = time.perf_counter() - start
    env.close()
    return steps / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    register_goal_envs()
    cases = [
        ("FetchReach-v4", 50, None),
        ("PointMaze_UMaze-v3", 100, None),
        ("PointMaze_UMaze-v3", 100, 48),
        ("PointMaze_UMaze-v3", 100, 64),
    ]
    print(f"{'env':<20} {'images':>7} {'raw steps/s':>12} {'TorchRL steps/s':>16} {'overhead':>9}")
    for env_name, max_steps, image_size in cases:
        if image_size is None:
            make = lambda: gym.make(env_name, max_episode_steps=max_steps)  # noqa: E731
            kwargs = {}
        else:
            make = lambda: make_pixel_gym_env(env_name, max_steps, image_size)  # noqa: E731
            kwargs = {"from_pixels": True, "image_size": image_size}
        raw = statistics.median(raw_steps_per_second(make, args.steps) for _ in range(args.repeats))
        wrapped = statistics.median(
            torchrl_steps_per_second(env_name, max_steps, args.steps, **kwargs) for _ in range(args.repeats)
        )
        images = f"{image_size}px" if image_size else "-"
        print(f"{env_name:<20} {images:>7} {raw:>12.0f} {wrapped:>16.0f} {raw / wrapped:>8.2f}x")


if __name__ == "__main__":
    main()
