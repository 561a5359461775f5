"""Env steps per second: raw gymnasium against the project's TorchRL env and collector, same policy.

    python benchmarks/collection_speed.py [--steps 2000] [--repeats 3]

One process, one thread. Both paths act with the same torch function: ``uniform`` draws actions with
torch.rand, ``mlp`` is a config_quick-sized policy network (2 x 256, LayerNorm) mapping observation
and goal to an action. The raw path calls gymnasium's step and that function in a plain loop, over
one env or, for several, gymnasium's own SyncVectorEnv; the TorchRL path is what training runs:
``collector.num_envs`` envs in one in-process gymnasium vector env with the project's wrapper,
transforms and success reader, stepped by TorchRL's Collector with the function as its policy.
Steps/s count env steps (``envs`` of them per collector step). The overhead column is the raw loop's
steps/s over the collector's, medians over ``--repeats`` runs each, the two paths alternating. Prints a
table and writes it as JSON (``--output``).

Its figures: docs/performance.md, "Update speed and pipeline" (collection rows).
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import tqdm
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.collectors import Collector
from torchrl.modules import MLP

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.reporting import RESULTS, say, write_json  # noqa: E402
from contrastive_rl.envs.goal_envs import (  # noqa: E402
    apply_env_transforms,
    gym_env_factory,
    register_goal_envs,
    vector_env_maker,
)
from contrastive_rl.trainers.runtime import skip_missing_pandas_lookups  # noqa: E402


def make_policy(kind: str, observation_dim: int, goal_dim: int, action_dim: int):
    """``(observation, goal) -> action`` as torch tensors; the goal is a vector, its leading
    dimensions are the batch's."""
    if kind == "uniform":
        return lambda observation, goal: torch.rand(*goal.shape[:-1], action_dim) * 2 - 1
    network = MLP(
        in_features=observation_dim + goal_dim,
        out_features=action_dim,
        num_cells=[256, 256],
        activation_class=nn.ReLU,
        norm_class=nn.LayerNorm,
        norm_kwargs=[{"normalized_shape": 256}] * 2,
    )

    @torch.no_grad()
    def act(observation, goal):
        return torch.tanh(network(torch.cat([observation, goal], -1)))

    return act


def make_raw_env(make_env, num_envs: int) -> gym.Env:
    """One gymnasium env, or ``num_envs`` in gymnasium's own SyncVectorEnv."""
    if num_envs == 1:
        return make_env()
    return gym.vector.SyncVectorEnv([make_env] * num_envs, autoreset_mode=gym.vector.AutoresetMode.DISABLED)


def raw_steps_per_second(env: gym.Env, num_envs: int, policy, observation_key: str, steps: int) -> float:
    """A plain loop over ``make_raw_env``'s env (finished envs reset by mask), the policy called once
    per step on all envs."""
    def as_batch(array):
        return torch.as_tensor(np.ascontiguousarray(array), dtype=torch.float32).reshape(num_envs, -1)

    obs, _ = env.reset(seed=0)
    start = time.perf_counter()
    for _ in range(steps // num_envs):
        action = policy(as_batch(obs[observation_key]), as_batch(obs["desired_goal"])).numpy()
        if num_envs == 1:
            obs, _, terminated, truncated, _ = env.step(action[0])
            if terminated or truncated:
                obs, _ = env.reset()
        else:
            obs, _, terminated, truncated, _ = env.step(action)
            if (terminated | truncated).any():
                obs, _ = env.reset(options={"reset_mask": terminated | truncated})
    elapsed = time.perf_counter() - start
    return steps // num_envs * num_envs / elapsed


def collector_steps_per_second(env, policy, observation_key: str, steps: int) -> float:
    module = TensorDictModule(policy, in_keys=[observation_key, "desired_goal"], out_keys=["action"])
    # Endless (total_frames=-1): a collector that reaches its total closes the env, and the next repeat
    # would step an env whose renderers are gone.
    collector = Collector(env, module, frames_per_batch=steps, total_frames=-1, auto_register_policy_transforms=False)
    batches = iter(collector)
    next(batches)  # the first batch pays the collector's set-up
    start = time.perf_counter()
    batch = next(batches)
    elapsed = time.perf_counter() - start
    collector.shutdown(close_env=False)
    if observation_key == "pixels" and (batch["pixels"][..., 1:, :, :, :] == batch["pixels"][..., :-1, :, :, :]).all():
        raise RuntimeError("the collected images never change: rendering failed, the figures would mean nothing")
    return steps / elapsed


def compare(
    env_name: str, max_steps: int, image_size: int | None, policy_kind: str, num_envs: int, steps: int, repeats: int
):
    """Median env steps/s of the raw gymnasium loop and of the project's collector over ``num_envs``
    envs (as training builds them: one in-process vector env), same env and policy."""
    from_pixels = image_size is not None
    make_env = gym_env_factory(env_name, max_steps, from_pixels, image_size or 64)
    torchrl_env = apply_env_transforms(vector_env_maker(env_name, max_steps, num_envs, from_pixels, image_size or 64))
    torchrl_env.set_seed(0)
    observation_key = "pixels" if from_pixels else "observation"
    spec = torchrl_env.observation_spec
    policy = make_policy(
        policy_kind, spec["observation"].shape[-1], spec["desired_goal"].shape[-1], torchrl_env.action_spec.shape[-1]
    )
    raw_env = make_raw_env(make_env, num_envs)
    raw, wrapped = [], []
    for _ in range(repeats):
        raw.append(raw_steps_per_second(raw_env, num_envs, policy, observation_key, steps))
        wrapped.append(collector_steps_per_second(torchrl_env, policy, observation_key, steps))
    raw_env.close()
    torchrl_env.close()
    # Free the closed envs' GL contexts now: MuJoCo contexts freed later, while other envs render,
    # can leave those drawing the same frame over and over.
    del raw_env, torchrl_env
    gc.collect()
    return statistics.median(raw), statistics.median(wrapped)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=RESULTS / "collection_speed.json", help="the table as JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    skip_missing_pandas_lookups()  # as the training script does
    register_goal_envs()
    cases = [
        ("FetchReach-v4", 50, None, "uniform", 1),
        ("FetchReach-v4", 50, None, "uniform", 4),
        ("FetchReach-v4", 50, None, "mlp", 1),
        ("FetchReach-v4", 50, None, "mlp", 4),
        ("PointMaze_UMaze-v3", 100, None, "uniform", 1),
        ("PointMaze_UMaze-v3", 100, None, "uniform", 4),
        ("PointMaze_UMaze-v3", 100, None, "mlp", 4),
        ("PointMaze_UMaze-v3", 100, 48, "uniform", 1),
        ("PointMaze_UMaze-v3", 100, 48, "uniform", 4),
        ("PointMaze_UMaze-v3", 100, 64, "uniform", 4),
    ]
    print(f"{'env':<20} {'images':>7} {'policy':>8} {'envs':>5} {'raw steps/s':>12} {'TorchRL steps/s':>16} "
          f"{'overhead':>9}")
    rows = []
    for case in tqdm.tqdm(cases, desc="collection speed", unit="case"):
        env_name, max_steps, image_size, policy_kind, num_envs = case
        raw, wrapped = compare(env_name, max_steps, image_size, policy_kind, num_envs, args.steps, args.repeats)
        images = f"{image_size}px" if image_size else "-"
        say(f"{env_name:<20} {images:>7} {policy_kind:>8} {num_envs:>5} {raw:>12.0f} {wrapped:>16.0f} "
            f"{raw / wrapped:>8.2f}x")
        rows.append({"env": env_name, "image_size": image_size, "policy": policy_kind, "envs": num_envs,
                     "raw_steps_per_s": raw, "torchrl_steps_per_s": wrapped, "overhead": raw / wrapped})
    where = write_json(args.output, {
        "cores": os.cpu_count(), "torch_threads": 1, "torch": torch.__version__, "steps": args.steps,
        "repeats": args.repeats, "rows": rows,
    })
    print(f"wrote {where} (the table above as JSON)")


if __name__ == "__main__":
    main()
