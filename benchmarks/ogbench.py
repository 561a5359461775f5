"""OGBench pointmaze navigate, offline: OGBench's CRL recipe and this project's stable-CRL recipe beside
OGBench's published CRL success.

    python benchmarks/ogbench.py                       # CPU scale: medium and large, 2 seeds, both recipes
    python benchmarks/ogbench.py --scale paper --steps 1000000 --eval-interval 100000 --eval-episodes 50

Regenerates the datasets that are missing under ``--root`` (make_dataset.py's recipe), trains every
recipe x dataset x seed offline (``--parallel`` runs at a time, the cores split between them), prints the
overall and per-task success (OGBench's 5 evaluation tasks) per seed and step with the wall-clock and
updates/s, beside OGBench's published CRL (8 seeds, 1M gradient steps, 5 x 50 episodes) and the best
published method, and saves a PNG. ``--scale cpu`` narrows both recipes (256 units, batch 256) to what
a CPU trains in an hour; ``paper`` keeps each recipe's own sizes.
"""
from __future__ import annotations

import argparse
import itertools
import json
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
sys.path.insert(0, str(ROOT))

from benchmarks.learning_curve import read_scalar  # noqa: E402
from contrastive_rl.locomaze import NUM_TASKS, OGBENCH_ROOT, REGENERABLE_DATASETS, write_locomaze_dataset  # noqa: E402

# Hydra config and overrides of each recipe; the dataset and the time limit come from the dataset's name.
RECIPES = {
    "ogbench_crl": ("config_ogbench_crl", []),
    # The paper's defaults (config.yaml) with the released code's offline behaviour cloning.
    "stable_crl": ("config", ["loss.bc_coef=0.05", "env.max_steps=1000"]),
}
SCALES = {"paper": [], "cpu": ["model.hidden_dim=256", "buffer.batch_size=256"]}
# OGBench paper (Park et al., ICLR 2025), table of state-based navigate results: success in %.
PUBLISHED_CRL = {
    "pointmaze-medium-navigate-v0": (29, 7),
    "pointmaze-large-navigate-v0": (39, 7),
    "antmaze-medium-navigate-v0": (95, 1),
    "antmaze-large-navigate-v0": (83, 4),
}
BEST_PUBLISHED = {
    "pointmaze-medium-navigate-v0": ("QRL", 82),
    "pointmaze-large-navigate-v0": ("QRL", 86),
}


def ensure_dataset(name: str, root: Path) -> None:
    if name in REGENERABLE_DATASETS and not (root / f"{name}.npz").exists():
        print(f"regenerating {name} under {root}", flush=True)
        write_locomaze_dataset(name, root)


def train(recipe: str, name: str, seed: int, args, run_dir: Path, threads: int) -> dict:
    """One offline run; its per-task and overall success, wall-clock and updates/s by gradient step."""
    config, overrides = RECIPES[recipe]
    command = [
        sys.executable, str(ROOT / "stable_contrastive_rl.py"), "--config-name", config,
        f"env.env_name={name}", f"env.seed={seed}", f"offline.dataset=ogbench:{name}", f"offline.root={args.root}",
        f"offline.gradient_steps={args.steps}", f"offline.eval_interval={args.eval_interval}",
        f"logger.num_eval_episodes={args.eval_episodes}", "logger.backend=csv", f"hydra.run.dir={run_dir}",
        *overrides, *SCALES[args.scale], *args.overrides,
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
    if result.returncode:
        raise RuntimeError(f"{recipe} {name} seed {seed} failed:\n{result.stderr[-3000:]}")
    rates = read_scalar(run_dir, "train/updates_per_second")
    run = {
        "overall": read_scalar(run_dir, "eval/overall_success"),
        "elapsed": read_scalar(run_dir, "train/elapsed_seconds"),
        "updates_per_second": rates[max(rates)],
    }
    for task in range(1, NUM_TASKS + 1):
        run[f"task{task}"] = read_scalar(run_dir, f"eval/task{task}_success")
    print(f"done: {recipe} {name} seed {seed}, {run['elapsed'][max(run['elapsed'])]:.0f} s", flush=True)
    return run


def run_all(args) -> dict:
    """``{recipe: {dataset: {seed: run}}}``."""
    jobs = list(itertools.product(args.recipes, args.datasets, args.seeds))
    threads = max(1, (os.cpu_count() or 1) // args.parallel)
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(args.parallel) as pool:
        runs = pool.map(lambda job: train(*job, args, Path(tmp) / "_".join(map(str, job)), threads), jobs)
        results = {}
        for (recipe, name, seed), run in zip(jobs, runs):
            results.setdefault(recipe, {}).setdefault(name, {})[seed] = run
        return results


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def report(results: dict, args) -> None:
    print(f"OGBench offline, {args.scale} scale, {args.eval_episodes} episodes per task, {os.cpu_count()} CPU cores; "
          "success in % (overall = mean of the 5 tasks)")
    for name in args.datasets:
        published = PUBLISHED_CRL.get(name)
        best = BEST_PUBLISHED.get(name)
        print(f"\n{name}: published CRL {published[0]} +- {published[1]} (1M steps, 8 seeds)" if published else
              f"\n{name}", end="")
        print(f"; best published {best[0]} {best[1]}" if best else "")
        for recipe in args.recipes:
            runs = results[recipe][name]
            seeds = list(runs)
            print(f"  {recipe}: step | " + " | ".join(f"seed {s}: overall (tasks 1-5)" for s in seeds) + " | mean")
            for step in sorted(runs[seeds[0]]["overall"]):
                cells = []
                for s in seeds:
                    tasks = " ".join(f"{100 * runs[s][f'task{k}'][step]:3.0f}" for k in range(1, NUM_TASKS + 1))
                    cells.append(f"{100 * runs[s]['overall'][step]:5.1f} ({tasks})")
                overall = mean(100 * runs[s]["overall"][step] for s in seeds)
                print(f"  {recipe}: {step:>7} | " + " | ".join(cells) + f" | {overall:5.1f}")
            for s in seeds:
                print(f"  {recipe}: seed {s}: {runs[s]['updates_per_second']:.1f} updates/s, "
                      f"{runs[s]['elapsed'][max(runs[s]['elapsed'])]:.0f} s in all")


def plot(results: dict, args) -> None:
    figure, axes = plt.subplots(1, len(args.datasets), figsize=(5.5 * len(args.datasets), 4), squeeze=False)
    for axis, name in zip(axes[0], args.datasets):
        for color, recipe in zip(("tab:blue", "tab:orange", "tab:green"), args.recipes):
            runs = results[recipe][name]
            steps = sorted(next(iter(runs.values()))["overall"])
            for seed, run in runs.items():
                axis.plot(steps, [100 * run["overall"][s] for s in steps], color=color, alpha=0.3, linewidth=1)
            axis.plot(steps, [mean(100 * run["overall"][s] for run in runs.values()) for s in steps], color=color,
                      marker="o", label=f"{recipe} (mean of {len(runs)} seeds)")
        if name in PUBLISHED_CRL:
            axis.axhline(PUBLISHED_CRL[name][0], color="gray", linestyle="--", label="published CRL (1M steps)")
        if name in BEST_PUBLISHED:
            method, value = BEST_PUBLISHED[name]
            axis.axhline(value, color="black", linestyle=":", label=f"published {method} (1M steps)")
        axis.set_title(name, fontsize=10)
        axis.set_xlabel("gradient steps")
        axis.set_ylabel("overall success (%)")
        axis.set_ylim(-3, 103)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(f"OGBench offline, {args.scale} scale, {args.eval_episodes} episodes per task", fontsize=10)
    figure.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.output, dpi=100)
    print(f"saved {args.output}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+",
                        default=["pointmaze-medium-navigate-v0", "pointmaze-large-navigate-v0"])
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--scale", choices=list(SCALES), default="cpu")
    parser.add_argument("--steps", type=int, default=20_000, help="gradient steps per run")
    parser.add_argument("--eval-interval", type=int, default=5000)
    parser.add_argument("--eval-episodes", type=int, default=10, help="per task (OGBench: 50)")
    parser.add_argument("--root", type=Path, default=OGBENCH_ROOT.expanduser(), help="datasets directory")
    parser.add_argument("--parallel", type=int, default=2, help="runs trained at once")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "ogbench_pointmaze.png")
    parser.add_argument("--save", type=Path, help="also write every figure as JSON")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run, after --")
    args = parser.parse_args()

    for name in args.datasets:
        ensure_dataset(name, args.root)
    results = run_all(args)
    if args.save:
        args.save.write_text(json.dumps(results))
    report(results, args)
    plot(results, args)


if __name__ == "__main__":
    main()
