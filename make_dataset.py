"""Write a Minari dataset of goal-reaching episodes, for offline training.

    python make_dataset.py --env PointMaze_UMaze-v3 --policy scripted --noise 0.5 --episodes 200 \
        --max-steps 100 --dataset-id pointmaze/umaze-noisy-v0 --root datasets

Rolls out a data policy (``random``: uniform actions; ``scripted``: a goal-reaching controller for
PointMaze and FetchReach, with Gaussian action noise of std ``--noise`` and, with probability
``--random-prob`` per step, a uniform random action instead) and writes the episodes with Minari's
DataCollector under ``--root`` (then train with ``offline.dataset=<id> offline.root=<root>``, or
``offline.dataset=<root>/<id>``). Prints the data policy's own success rate.

    python make_dataset.py --ogbench pointmaze-medium-navigate-v0     # or pointmaze-medium-stitch-v0
    python make_dataset.py --ogbench cube-single-play-v0 [--episodes 100] [--workers 2]
    python make_dataset.py --ogbench visual-cube-single-play-v0 --episodes 25   # frames of 64 x 64 x 3

regenerates one of OGBench's pointmaze navigate or stitch datasets (``contrastive_rl/data/locomaze.py``) or
its manipulation datasets, cube, scene and puzzle, play and noisy (``contrastive_rl/data/manipspace.py``:
made by the env's own oracles over ``--workers`` processes, continued where a stopped run left off;
their ``visual-`` versions rendered from the saved states the same way, ``--image-size`` frames),
with a progress bar, as the ``.npz`` and ``-val.npz`` files that ogbench's loader reads, by default
where it looks for them.
"""
from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

from contrastive_rl.errors import ConfigError
from contrastive_rl.envs.goal_envs import SuccessInfoReader, check_goal_observation_space, resolve_env_name
from contrastive_rl.data.locomaze import OGBENCH_ROOT, write_locomaze_dataset
from contrastive_rl.data.manipspace import parts_dir, write_manipulation_dataset
from contrastive_rl.envs.ogbench import is_manipulation_name, state_dataset_name
from contrastive_rl.data.offline import _datasets_path
from contrastive_rl.envs.pixels import make_pixel_gym_env, supports_image_goals
from contrastive_rl.envs.scripted import make_controller

POLICIES = ("random", "scripted")


def make_dataset(
    env_name: str,
    *,
    policy: str,
    episodes: int,
    max_steps: int,
    dataset_id: str,
    root: Path,
    noise: float = 0.0,
    random_prob: float = 0.0,
    seed: int = 0,
    overwrite: bool = False,
    image_size: int | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Roll out ``policy`` and write a Minari dataset; return the data policy's success rates.

    With ``image_size``, observations also hold the rendered ``pixels`` and ``goal_pixels`` (PointMaze).
    ``progress``: show a progress bar over the episodes.
    """
    from minari import DataCollector
    from tqdm import tqdm

    env_name = resolve_env_name(env_name)
    target = root / dataset_id
    if target.exists() and not overwrite:
        raise ConfigError(f"--dataset-id {dataset_id!r}: {target} exists already (pass --overwrite to replace it)")
    check_goal_observation_space(env_name, gym.make(env_name).observation_space)
    if image_size is None:
        env = gym.make(env_name, max_episode_steps=max_steps)
    elif supports_image_goals(env_name):
        env = make_pixel_gym_env(env_name, max_steps, image_size)
    else:
        raise ConfigError(f"--from-pixels: image goals are rendered for PointMaze_* envs only, not {env_name}")
    controller = make_controller(env_name, env) if policy == "scripted" else None
    collector = DataCollector(env, record_infos=False)
    rng = np.random.default_rng(seed)
    collector.action_space.seed(seed)
    low, high = env.action_space.low, env.action_space.high
    success_final, success_any = [], []
    for episode in tqdm(range(episodes), desc=dataset_id, unit="episodes", disable=not progress):
        observation, _ = collector.reset(seed=seed + episode)
        successes = []
        for _ in range(max_steps):
            if controller is None or rng.random() < random_prob:
                action = collector.action_space.sample()
            else:
                action = controller(observation) + noise * rng.standard_normal(low.shape) * (high - low) / 2
            observation, _, terminated, truncated, info = collector.step(np.clip(action, low, high).astype(np.float32))
            successes.append(bool(next((info[k] for k in SuccessInfoReader.info_keys if k in info), False)))
            if terminated or truncated:
                break
        success_final.append(successes[-1])
        success_any.append(any(successes))
    if target.exists():
        shutil.rmtree(target)
    with _datasets_path(root):
        collector.create_dataset(
            dataset_id=dataset_id,
            algorithm_name=f"{policy} (noise {noise}, random actions {random_prob})",
            author="make_dataset.py",
            description=f"{episodes} episodes of {env_name}, {max_steps} steps at most, {policy} policy",
        )
    collector.close()
    stats = {
        "episodes": episodes,
        "success_final": float(np.mean(success_final)),
        "success_any": float(np.mean(success_any)),
    }
    (target / "data_policy.json").write_text(json.dumps(stats, indent=1))
    return stats


def regenerate_ogbench(name: str, root: Path, episodes: int | None, steps: int | None, seed: int,
                       workers: int | None, image_size: int = 64) -> None:
    start = time.perf_counter()
    try:
        if is_manipulation_name(name):
            if steps is not None:
                raise ConfigError(f"--max-steps={steps}: manipulation datasets keep OGBench's 1001 steps per episode")
            for stop in (signal.SIGINT, signal.SIGTERM):  # a kill stops as Ctrl-C does, also in a background job
                signal.signal(stop, signal.default_int_handler)
            try:
                paths = write_manipulation_dataset(name, root, episodes=episodes, seed=seed, workers=workers,
                                                   progress=True, image_size=image_size)
            except KeyboardInterrupt:
                kept = [str(parts_dir(root, kind, episodes)) for kind in {name, state_dataset_name(name)}
                        if parts_dir(root, kind, episodes).is_dir()]
                sys.exit(f"\nstopped: the work done so far is kept under {' and '.join(sorted(kept))}; the same "
                         "command continues")
        else:
            paths = write_locomaze_dataset(name, root, episodes=episodes, steps=steps, seed=seed, progress=True)
    except ConfigError as error:
        sys.exit(f"error: {error}")
    size = sum(path.stat().st_size for path in paths.values())
    print(f"wrote {paths['train']} and {paths['val']} in {time.perf_counter() - start:.0f} s "
          f"({size / 2**20:.1f} MB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ogbench", metavar="NAME", help="instead: regenerate OGBench's dataset NAME "
                        "(pointmaze-{medium,large,giant,teleport}-{navigate,stitch}-v0, "
                        "[visual-]{cube-single,cube-double,scene,puzzle-3x3}-{play,noisy}-v0; train and val npz) "
                        f"under --root (default {OGBENCH_ROOT}) with its recipe")
    parser.add_argument("--env", help="goal env id, e.g. PointMaze_UMaze-v3")
    parser.add_argument("--policy", choices=POLICIES, default="scripted")
    parser.add_argument("--episodes", type=int, default=None, help="default 100 (--ogbench: the recipe's)")
    parser.add_argument("--max-steps", type=int, default=None, help="default 100 (--ogbench: the recipe's)")
    parser.add_argument(
        "--noise", type=float, default=0.0, help="std of the Gaussian action noise (share of half the range)"
    )
    parser.add_argument(
        "--random-prob", type=float, default=0.0, help="per-step probability of a uniform random action"
    )
    parser.add_argument("--dataset-id", help="Minari id, namespace/name-vN")
    parser.add_argument("--root", type=Path, default=None, help="directory of Minari datasets (default datasets)")
    parser.add_argument("--from-pixels", action="store_true", help="also store rendered images (PointMaze)")
    parser.add_argument("--image-size", type=int, default=64,
                        help="side of the images (--from-pixels, --ogbench visual-*), default 64")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None,
                        help="--ogbench manipulation datasets: processes making episodes (default: one per core)")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    for name in ("episodes", "max_steps", "workers"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            sys.exit(f"error: --{name.replace('_', '-')}={getattr(args, name)} is not allowed: it must be >= 1")
    if not 0.0 <= args.random_prob <= 1.0 or args.noise < 0:
        sys.exit("error: --random-prob must lie in [0, 1] and --noise must be >= 0")
    if args.ogbench:
        regenerate_ogbench(args.ogbench, (args.root or OGBENCH_ROOT).expanduser(), args.episodes, args.max_steps,
                           args.seed, args.workers, args.image_size)
        return
    if not args.env or not args.dataset_id:
        sys.exit("error: --env and --dataset-id are required (or --ogbench NAME)")
    args.root = args.root or Path("datasets")
    try:
        stats = make_dataset(
            args.env, policy=args.policy, episodes=args.episodes or 100, max_steps=args.max_steps or 100,
            dataset_id=args.dataset_id, root=args.root, noise=args.noise, random_prob=args.random_prob,
            seed=args.seed, overwrite=args.overwrite, image_size=args.image_size if args.from_pixels else None,
            progress=True,
        )
    except (ConfigError, ValueError) as error:
        sys.exit(f"error: {error}")
    print(
        f"wrote {args.root / args.dataset_id}: {stats['episodes']} episodes; data policy success "
        f"{stats['success_final']:.2f} at the final step, {stats['success_any']:.2f} at any step"
    )


if __name__ == "__main__":
    main()
