"""Train at a CPU-sized config over several seeds and report success rate against env steps and wall-clock.

    python benchmarks/learning_curve.py --env FetchReach-v4 --frames 20000 --seeds 0 1
    python benchmarks/learning_curve.py --env PointMaze_UMaze-v3 --frames 100000 --seeds 0 1 \
        -- env.max_steps=100

Runs the training script once per seed (``--parallel`` at a time, the cores split between them), prints a
table of the evaluation success rate (deterministic policy, fresh desired goals) per seed with the
wall-clock it took, and saves both curves as a PNG.
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def read_scalar(run_dir: Path, name: str) -> dict[int, float]:
    [path] = run_dir.glob(f"logs/*/scalars/{name}.csv")
    with open(path) as f:
        return {int(step): float(value) for step, value in csv.reader(f)}


def train(seed: int, args, run_dir: Path, threads: int) -> dict:
    command = [
        sys.executable, str(ROOT / "stable_contrastive_rl.py"), "--config-name", args.config,
        f"env.env_name={args.env}", f"env.seed={seed}", f"collector.total_frames={args.frames}",
        f"logger.eval_interval={args.eval_interval}", f"logger.num_eval_episodes={args.eval_episodes}",
        "logger.backend=csv", f"hydra.run.dir={run_dir}", *args.overrides,
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode:
        raise RuntimeError(f"seed {seed} failed:\n{result.stderr[-3000:]}")
    elapsed = read_scalar(run_dir, "train/elapsed_seconds")
    updates_per_second = read_scalar(run_dir, "train/updates_per_second")
    return {
        "success": read_scalar(run_dir, "eval/success_final"),
        "success_any": read_scalar(run_dir, "eval/success_any"),
        "elapsed": elapsed,
        "updates_per_second": updates_per_second[max(updates_per_second)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="FetchReach-v4")
    parser.add_argument("--frames", type=int, default=20_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--config", default="config_quick", help="Hydra config name")
    parser.add_argument("--eval-interval", type=int, default=2000)
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument("--parallel", type=int, default=2, help="seeds trained at once")
    parser.add_argument("--output", type=Path, help="PNG of the curves (default: benchmarks/results/<env>.png)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, after --")
    args = parser.parse_args()
    output = args.output or ROOT / "benchmarks" / "results" / f"{args.env}.png"
    threads = max(1, (os.cpu_count() or 1) // args.parallel)

    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(args.parallel) as pool:
        runs = dict(zip(args.seeds, pool.map(
            lambda seed: train(seed, args, Path(tmp) / f"seed_{seed}", threads), args.seeds
        )))

    steps = sorted(runs[args.seeds[0]]["success"])
    header = (
        "env steps | "
        + " | ".join(f"seed {s}: final / any (wall s)" for s in args.seeds)
        + " | mean final | mean any"
    )
    print(f"{args.env}, config {args.config} {' '.join(args.overrides)}")
    print("success = share of eval episodes at the goal at their last step (final) or at any step (any)")
    print(header)
    print("-" * len(header))
    for step in steps:
        cells = [
            f"{runs[s]['success'][step]:.2f} / {runs[s]['success_any'][step]:.2f} ({runs[s]['elapsed'][step]:.0f})"
            for s in args.seeds
        ]
        mean_final = sum(runs[s]["success"][step] for s in args.seeds) / len(args.seeds)
        mean_any = sum(runs[s]["success_any"][step] for s in args.seeds) / len(args.seeds)
        print(f"{step:>9} | " + " | ".join(f"{c:>28}" for c in cells) + f" | {mean_final:10.2f} | {mean_any:8.2f}")
    for s in args.seeds:
        print(f"seed {s}: {runs[s]['updates_per_second']:.1f} updates/s, "
              f"{runs[s]['elapsed'][steps[-1]]:.0f} s in all, best final success {max(runs[s]['success'].values()):.2f}")

    figure, (by_steps, by_time) = plt.subplots(1, 2, figsize=(10, 3.8))
    for s in args.seeds:
        success = [runs[s]["success"][step] for step in steps]
        by_steps.plot(steps, success, marker="o", label=f"seed {s}")
        by_time.plot([runs[s]["elapsed"][step] for step in steps], success, marker="o", label=f"seed {s}")
    by_steps.set_xlabel("env steps")
    by_time.set_xlabel(f"wall-clock seconds ({os.cpu_count()} CPU cores)")
    for axis in (by_steps, by_time):
        axis.set_ylabel("eval success (final step)")
        axis.set_ylim(-0.05, 1.05)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(f"Stable Contrastive RL, {args.env} ({args.config})")
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=100)
    print(f"saved {output}")


if __name__ == "__main__":
    main()
