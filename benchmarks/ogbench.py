"""OGBench offline, the pointmazes (navigate and stitch) and manipulation (cube, scene, puzzle, from states
or pixels): every preset beside OGBench's published success.

    python benchmarks/ogbench.py                       # CPU scale: medium and large, navigate and stitch, 2 seeds
    python benchmarks/ogbench.py --recipes ogbench_crl ogbench_tmd --datasets pointmaze-medium-stitch-v0
    python benchmarks/ogbench.py --suite manipulation  # cube-single-play and scene-play, from states
    python benchmarks/ogbench.py --datasets visual-cube-single-play-10ep-v0 --recipes ogbench_crl --seeds 0
    python benchmarks/ogbench.py --scale paper --steps 1000000 --eval-interval 100000 --eval-episodes 50

Regenerates the datasets that are missing under ``--root`` (make_dataset.py's recipe), trains every
recipe x dataset x seed offline (``--parallel`` runs at a time, the cores split between them; seed by
seed, so that a matrix cut short has every recipe on every dataset once), keeps each finished run's
figures under ``--runs`` (a run already there with the same settings is not trained again, so a
stopped benchmark continues where it was), prints the
overall and per-task success (OGBench's 5 evaluation tasks) per seed and step with the wall-clock and
updates/s, beside OGBench's published success (8 seeds, 1M gradient steps, 5 x 50 episodes),
and saves a PNG of the curves and, with ``--value-maps``, each run's final value map per task
(``logger.value_maps``); its last line names what it wrote. ``--scale cpu`` narrows every recipe (2 x
256 units, latent 64, batch 256: the size OGBench's JAX CRL was run beside) to what a CPU trains in
minutes; ``paper`` keeps each recipe's own.
A dataset name with an episode tag (``visual-cube-single-play-10ep-v0``) trains on that smaller file
of the same env; every run evaluates with OGBench's episode length of its env.

Its figures: docs/results.md, "OGBench pointmaze, every preset" and "OGBench manipulation"; the README's
results table.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
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
# The repository instead of this file's folder: from there, `import ogbench` would find this file.
sys.path[0] = str(ROOT)

from benchmarks.learning_curve import read_scalar  # noqa: E402
from benchmarks.reporting import RESULTS, say, shown  # noqa: E402
from contrastive_rl.data.locomaze import OGBENCH_ROOT, REGENERABLE_DATASETS, write_locomaze_dataset  # noqa: E402
from contrastive_rl.envs.ogbench import (  # noqa: E402
    NUM_TASKS,
    episode_steps,
    full_dataset_name,
    is_manipulation_name,
    is_visual,
    subset_episodes,
)
from contrastive_rl.data.manipspace import write_manipulation_dataset  # noqa: E402

# Hydra config of each recipe; the dataset and the episode length come from the dataset's name.
RECIPES = {
    "ogbench_crl": "config_ogbench_crl",
    "ogbench_td_infonce": "config_ogbench_td_infonce",
    "ogbench_tmd": "config_ogbench_tmd",
    "stable_crl": "config_stable_crl",  # the released stable-CRL code's recipe
}
# OGBench's CRL on manipulation (BC weight 3.0 on the play datasets), and from pixels.
MANIPULATION_RECIPES = {"ogbench_crl": "config_ogbench_crl_manipulation"}
VISUAL_RECIPES = {"ogbench_crl": "config_ogbench_crl_visual"}
SUITES = {
    "pointmaze": ["pointmaze-medium-navigate-v0", "pointmaze-large-navigate-v0", "pointmaze-medium-stitch-v0",
                  "pointmaze-large-stitch-v0"],
    "manipulation": ["cube-single-play-v0", "scene-play-v0"],
}
# OGBench's CRL settings on stitch datasets (impls/hyperparameters.sh): half the actor's goals random;
# on the giant mazes, a discount of 0.995.
STITCH_OVERRIDES = ["loss.random_goal_fraction=0.5"]
GIANT_OVERRIDES = ["loss.gamma=0.995"]
SCALES = {"paper": [], "cpu": ["model.hidden_dim=256", "model.num_layers=2", "model.embed_dim=64",
                               "buffer.batch_size=256"]}
# OGBench paper (Park et al., ICLR 2025), Table 2: success in % (8 seeds, 1M steps; pixels 4 seeds, 500k
# steps); MQE (arXiv 2511.07730) where it reports the dataset.
PUBLISHED = {
    "cube-single-play-v0": {"CRL": 19, "GCIQL": 68, "GCIVL": 53, "HIQL": 15},
    "scene-play-v0": {"CRL": 19, "GCIQL": 51, "HIQL": 38, "MQE": 83},
    "visual-cube-single-play-v0": {"CRL": 31, "GCIQL": 30, "GCIVL": 60, "HIQL": 89},
    "pointmaze-medium-navigate-v0": {"CRL": 29, "QRL": 82, "HIQL": 79},
    "pointmaze-large-navigate-v0": {"CRL": 39, "QRL": 86, "HIQL": 58},
    "pointmaze-giant-navigate-v0": {"CRL": 27, "QRL": 68, "HIQL": 46, "MQE": 73},
    "pointmaze-medium-stitch-v0": {"CRL": 0, "QRL": 80, "HIQL": 74},
    "pointmaze-large-stitch-v0": {"CRL": 0, "QRL": 84, "HIQL": 13},
}
PUBLISHED_STYLES = {"CRL": "--", "QRL": ":", "HIQL": "-.", "MQE": (0, (1, 3)), "GCIQL": (0, (5, 1)),
                    "GCIVL": (0, (3, 1, 1, 1))}


def ensure_dataset(name: str, root: Path) -> None:
    if (root / f"{name}.npz").exists():
        return
    if name in REGENERABLE_DATASETS:
        print(f"regenerating {name} under {root}", flush=True)
        write_locomaze_dataset(name, root, progress=True)
    elif is_manipulation_name(name):
        print(f"regenerating {name} under {root}", flush=True)
        write_manipulation_dataset(full_dataset_name(name), root, episodes=subset_episodes(name), progress=True)


def recipe_config(recipe: str, name: str) -> str:
    if is_visual(name):
        if recipe not in VISUAL_RECIPES:
            raise SystemExit(f"error: --recipes {recipe} has no pixel version: use {', '.join(VISUAL_RECIPES)}")
        return VISUAL_RECIPES[recipe]
    return MANIPULATION_RECIPES.get(recipe, RECIPES[recipe]) if is_manipulation_name(name) else RECIPES[recipe]


def run_settings(recipe: str, name: str, seed: int, args) -> dict:
    """What decides a run's figures: a kept run is reused only when these are equal."""
    return {"recipe": recipe, "dataset": name, "seed": seed, "scale": args.scale, "steps": args.steps,
            "eval_interval": args.eval_interval, "eval_episodes": args.eval_episodes, "overrides": args.overrides}


def kept_run(recipe: str, name: str, seed: int, args, threads: int, tmp: Path) -> dict:
    """The run's figures from ``--runs`` when it was trained with these settings, else trained now and kept."""
    path = args.runs / f"{recipe}_{name}_seed{seed}.json"
    settings = run_settings(recipe, name, seed, args)
    if path.is_file():
        kept = json.loads(path.read_text())
        if kept.get("settings") == settings:
            say(f"kept: {recipe} {name} seed {seed} ({path})")
            return {key: {int(step): value for step, value in series.items()} if isinstance(series, dict) else series
                    for key, series in kept["run"].items()}
    run = train(recipe, name, seed, args, tmp / f"{recipe}_{name}_{seed}", threads)
    args.runs.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.tmp")
    partial.write_text(json.dumps({"settings": settings, "run": run}))
    partial.replace(path)
    return run


def train(recipe: str, name: str, seed: int, args, run_dir: Path, threads: int) -> dict:
    """One offline run; its per-task and overall success, wall-clock and updates/s by gradient step."""
    config, overrides = recipe_config(recipe, name), [f"env.max_steps={episode_steps(name)}"]
    if "-stitch-" in name:
        overrides = [*overrides, *STITCH_OVERRIDES]
    if "-giant-" in name:
        overrides = [*overrides, *GIANT_OVERRIDES]
    if args.value_maps:
        overrides = [*overrides, "logger.value_maps=true"]
    command = [
        sys.executable, str(ROOT / "stable_contrastive_rl.py"), "--config-name", config,
        f"env.env_name={full_dataset_name(name)}", f"env.seed={seed}", f"offline.dataset=ogbench:{name}",
        f"offline.root={args.root}",
        f"offline.gradient_steps={args.steps}", f"offline.eval_interval={args.eval_interval}",
        f"logger.num_eval_episodes={args.eval_episodes}", "logger.backend=csv", f"hydra.run.dir={run_dir}",
        *overrides, *SCALES[args.scale], *args.overrides,
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
    if result.returncode:
        raise RuntimeError(f"{recipe} {name} seed {seed} failed: {' '.join(command)}\n{result.stderr[-3000:]}")
    rates = read_scalar(run_dir, "train/updates_per_second")
    run = {
        "overall": read_scalar(run_dir, "eval/overall_success"),
        "elapsed": read_scalar(run_dir, "train/elapsed_seconds"),
        "updates_per_second": rates[max(rates)],
    }
    for task in range(1, NUM_TASKS + 1):
        run[f"task{task}"] = read_scalar(run_dir, f"eval/task{task}_success")
    if args.value_maps:
        keep_final_value_maps(run_dir, args.steps, args.output.parent / "value_maps" / f"{recipe}_{name}_seed{seed}")
    say(f"done: {recipe} {name} seed {seed}, {run['elapsed'][max(run['elapsed'])]:.0f} s")
    return run


def keep_final_value_maps(run_dir: Path, step: int, prefix: Path) -> None:
    """Copy the value maps of the run's last evaluation out of its (temporary) run directory."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    for image in sorted((run_dir / "value_maps").glob(f"value_map_step{step}_task*.png")):
        shutil.copyfile(image, f"{prefix}_{image.name.rsplit('_', 1)[-1]}")


def run_all(args) -> dict:
    """``{recipe: {dataset: {seed: run}}}``."""
    jobs = [(recipe, name, seed) for seed, recipe, name in itertools.product(args.seeds, args.recipes, args.datasets)]
    threads = max(1, (os.cpu_count() or 1) // args.parallel)
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(args.parallel) as pool:
        runs = [pool.submit(kept_run, *job, args, threads, Path(tmp)) for job in jobs]
        with tqdm.tqdm(total=len(jobs), desc="offline runs", unit="run") as bar:
            for _ in as_completed(runs):
                bar.update()
        results = {}
        for (recipe, name, seed), run in zip(jobs, runs):
            results.setdefault(recipe, {}).setdefault(name, {})[seed] = run.result()
        return results


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def report(results: dict, args) -> None:
    print(f"OGBench offline, {args.scale} scale, {args.eval_episodes} episodes per task, {os.cpu_count()} CPU cores; "
          "success in % (overall = mean of the 5 tasks)")
    for name in args.datasets:
        published = PUBLISHED.get(full_dataset_name(name), {})
        print(f"\n{name}: published (1M steps, 8 seeds) " + ", ".join(f"{k} {v}" for k, v in published.items()))
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
        for color, recipe in zip(("tab:blue", "tab:orange", "tab:green", "tab:red"), args.recipes):
            runs = results[recipe][name]
            steps = sorted(next(iter(runs.values()))["overall"])
            for seed, run in runs.items():
                axis.plot(steps, [100 * run["overall"][s] for s in steps], color=color, alpha=0.3, linewidth=1)
            axis.plot(steps, [mean(100 * run["overall"][s] for run in runs.values()) for s in steps], color=color,
                      marker="o", label=f"{recipe} (mean of {len(runs)} seeds)")
        for method, value in PUBLISHED.get(full_dataset_name(name), {}).items():
            axis.axhline(value, color="gray", linestyle=PUBLISHED_STYLES[method], linewidth=1,
                         label=f"published {method} (1M steps)")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=list(SUITES), default="pointmaze", help="the datasets, unless --datasets")
    parser.add_argument("--datasets", nargs="+", help="OGBench dataset names (default: the suite's)")
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--scale", choices=list(SCALES), default="cpu")
    parser.add_argument("--steps", type=int, default=20_000, help="gradient steps per run")
    parser.add_argument("--eval-interval", type=int, default=5000)
    parser.add_argument("--eval-episodes", type=int, default=10, help="per task (OGBench: 50)")
    parser.add_argument("--root", type=Path, default=OGBENCH_ROOT.expanduser(), help="datasets directory")
    parser.add_argument("--parallel", type=int, default=2, help="runs trained at once")
    parser.add_argument("--output", type=Path, help="the PNG of the curves (default: results/ogbench_<suite>.png)")
    parser.add_argument("--save", type=Path, help="also write every figure as JSON")
    parser.add_argument("--runs", type=Path, default=RESULTS / "ogbench_runs",
                        help="where each finished run's figures are kept, and found again")
    parser.add_argument("--value-maps", action="store_true",
                        help="save each run's value maps of its last evaluation beside --output")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run, after --")
    args = parser.parse_args()
    args.datasets = args.datasets or SUITES[args.suite]
    args.output = args.output or RESULTS / f"ogbench_{args.suite}.png"
    for recipe, name in itertools.product(args.recipes, args.datasets):
        recipe_config(recipe, name)
    for name in args.datasets:
        ensure_dataset(name, args.root)
    results = run_all(args)
    if args.save:
        args.save.write_text(json.dumps(results))
    report(results, args)
    plot(results, args)
    written = [f"{shown(args.output)} (the curves)"]
    if args.save:
        written.append(f"{shown(args.save)} (every figure as JSON)")
    if args.value_maps:
        written.append(f"the final value maps under {shown(args.output.parent / 'value_maps')}")
    listed = written[0] if len(written) == 1 else f"{', '.join(written[:-1])} and {written[-1]}"
    print(f"wrote {listed}; each run's figures are kept under {shown(args.runs)}")


if __name__ == "__main__":
    main()
