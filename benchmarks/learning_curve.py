"""Train at a CPU-sized config over several seeds and report success rate against env steps and wall-clock.

    python benchmarks/learning_curve.py --env FetchReach-v4 --frames 20000 --seeds 0 1
    python benchmarks/learning_curve.py --env PointMaze_UMaze-v3 --frames 100000 --eval-interval 10000 \
        -- env.max_steps=100 buffer.batch_size=512 optim.utd_ratio=0.25

Runs the training script once per seed (``--parallel`` at a time, the cores split between them), prints a
table of the evaluation success rate (deterministic policy, fresh desired goals) per seed with the
wall-clock it took, and saves both curves as a PNG (``--output``), named on the last line.

Its figures: docs/results.md, "FetchReach-v4, online" and "PointMaze_UMaze-v3, online".
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import matplotlib
import tqdm

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.reporting import RESULTS, shown  # noqa: E402


def read_scalar(run_dir: Path, name: str) -> dict[int, float]:
    [path] = run_dir.glob(f"logs/*/scalars/{name}.csv")
    with open(path) as f:
        return {int(step): float(value) for step, value in csv.reader(f)}


def train(seed: int, config: str, overrides: list[str], run_dir: Path, threads: int) -> dict:
    """One run of the training script; its eval curves keyed by the logging step."""
    command = [
        sys.executable, str(ROOT / "stable_contrastive_rl.py"), "--config-name", config,
        f"env.seed={seed}", "logger.backend=csv", f"hydra.run.dir={run_dir}", *overrides,
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode:
        raise RuntimeError(f"seed {seed} failed:\n{result.stderr[-3000:]}")
    updates_per_second = read_scalar(run_dir, "train/updates_per_second")
    return {
        "success": read_scalar(run_dir, "eval/success_final"),
        "success_any": read_scalar(run_dir, "eval/success_any"),
        "elapsed": read_scalar(run_dir, "train/elapsed_seconds"),
        "updates_per_second": updates_per_second[max(updates_per_second)],
    }


def run_seeds(seeds: list[int], config: str, overrides: list[str], parallel: int) -> dict[int, dict]:
    threads = max(1, (os.cpu_count() or 1) // parallel)
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(parallel) as pool:
        runs = {seed: pool.submit(train, seed, config, overrides, Path(tmp) / f"seed_{seed}", threads)
                for seed in seeds}
        with tqdm.tqdm(total=len(seeds), desc="training runs", unit="run") as bar:
            for _ in as_completed(runs.values()):
                bar.update()
        return {seed: run.result() for seed, run in runs.items()}


def report(runs: dict[int, dict], *, title: str, x_label: str, output: Path, baseline: dict | None = None) -> None:
    """Print the success table and save success against ``x_label`` and wall-clock as a PNG."""
    seeds = list(runs)
    steps = sorted(runs[seeds[0]]["success"])
    header = (
        f"{x_label:>14} | "
        + " | ".join(f"seed {s}: final / any (wall s)" for s in seeds)
        + " | mean final | mean any"
    )
    print(title)
    print("success = share of eval episodes at the goal at their last step (final) or at any step (any)")
    print(header)
    print("-" * len(header))
    for step in steps:
        cells = [
            f"{runs[s]['success'][step]:.2f} / {runs[s]['success_any'][step]:.2f} ({runs[s]['elapsed'][step]:.0f})"
            for s in seeds
        ]
        mean_final = sum(runs[s]["success"][step] for s in seeds) / len(seeds)
        mean_any = sum(runs[s]["success_any"][step] for s in seeds) / len(seeds)
        print(f"{step:>14} | " + " | ".join(f"{c:>28}" for c in cells) + f" | {mean_final:10.2f} | {mean_any:8.2f}")
    for s in seeds:
        print(f"seed {s}: {runs[s]['updates_per_second']:.1f} updates/s, "
              f"{runs[s]['elapsed'][steps[-1]]:.0f} s in all, "
              f"best final success {max(runs[s]['success'].values()):.2f}")
    if baseline:
        print(f"data policy: success {baseline['success_final']:.2f} final, {baseline['success_any']:.2f} any")

    figure, (by_steps, by_time) = plt.subplots(1, 2, figsize=(10, 3.8))
    for s in seeds:
        success = [runs[s]["success"][step] for step in steps]
        by_steps.plot(steps, success, marker="o", label=f"seed {s}")
        by_time.plot([runs[s]["elapsed"][step] for step in steps], success, marker="o", label=f"seed {s}")
    if baseline:
        for axis in (by_steps, by_time):
            axis.axhline(baseline["success_final"], color="gray", linestyle="--", label="data policy")
    by_steps.set_xlabel(x_label)
    by_time.set_xlabel(f"wall-clock seconds ({os.cpu_count()} CPU cores)")
    for axis in (by_steps, by_time):
        axis.set_ylabel("eval success (final step)")
        axis.set_ylim(-0.05, 1.05)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=100)
    print(f"wrote {shown(output)} (success against {x_label} and wall-clock, per seed)")


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
    overrides = [
        f"env.env_name={args.env}", f"collector.total_frames={args.frames}",
        f"logger.eval_interval={args.eval_interval}", f"logger.num_eval_episodes={args.eval_episodes}",
        *args.overrides,
    ]
    runs = run_seeds(args.seeds, args.config, overrides, args.parallel)
    report(
        runs,
        title=f"{args.env}, {args.config} {' '.join(args.overrides)}",
        x_label="env steps",
        output=args.output or RESULTS / f"{args.env}.png",
    )


if __name__ == "__main__":
    main()
