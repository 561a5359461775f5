"""Record what fixed-seed CPU runs of the training script compute, to show that a change to the script's
structure changes no figure: every update's losses, every logged evaluation, and the final weights.

    python benchmarks/same_figures.py --record before.json     # before the change
    python benchmarks/same_figures.py --compare before.json    # after it: identical or the first difference

Four runs: online (FetchReach-v4), offline (a Minari PointMaze dataset made here), offline then online
from the same dataset, and an online run stopped at a checkpoint and resumed to the end.

Its figures: no table: the check of docs/layout.md, "Checking that a change keeps every figure".
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import tqdm

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "collector.frames_per_batch=100", "collector.init_random_frames=100", "buffer.size=2000",
    "buffer.batch_size=32", "model.hidden_dim=32", "model.num_layers=2", "model.embed_dim=8",
    "model.cold_init=false", "optim.utd_ratio=0.2", "logger.backend=csv", "logger.eval_interval=200",
    "logger.num_eval_episodes=2", "env.seed=3",
]
OFFLINE = ["env.env_name=PointMaze_UMaze-v3", "env.max_steps=30", "offline.dataset=pointmaze/umaze-figures-v0",
           "offline.gradient_steps=40", "offline.eval_interval=20"]
RUNS = {
    "online": [[*TINY, "collector.total_frames=1000", "checkpoint.interval=300"]],
    "offline": [[*TINY, *OFFLINE]],
    "offline_then_online": [[*TINY, *OFFLINE, "offline.finetune=true", "collector.total_frames=600"]],
    "resumed": [[*TINY, "collector.total_frames=500", "checkpoint.interval=300"],
                [*TINY, "collector.total_frames=1000", "checkpoint.interval=300", "checkpoint.resume=auto"]],
}
# Runs the script in this process with every update's losses recorded: GradientUpdate is patched on its
# class, so the script's own instance reports each update it makes.
RECORDING_RUNNER = """
import json, runpy, sys
sys.path.insert(0, {root!r})
sys.argv = [{script!r}, *{overrides!r}]
from contrastive_rl.trainers.update import GradientUpdate
losses = []
original = GradientUpdate.__call__
def recorded(self, batch):
    loss_td = original(self, batch)
    applied = loss_td["update_applied"].item()
    losses.append({{k: loss_td[k].item() for k in self.loss_module.loss_keys}} if applied else None)
    return loss_td
GradientUpdate.__call__ = recorded
try:
    runpy.run_path({script!r}, run_name="__main__")
finally:
    with open({out!r}, "a") as f:
        f.write(json.dumps(losses) + "\\n")
"""


def make_offline_dataset(root: Path) -> None:
    sys.path.insert(0, str(ROOT))
    from make_dataset import make_dataset

    make_dataset("PointMaze_UMaze-v3", policy="scripted", episodes=6, max_steps=30,
                 dataset_id="pointmaze/umaze-figures-v0", root=root, noise=0.3, random_prob=0.2)


def logged_scalars(run_dir: Path) -> dict[str, list]:
    """Every csv scalar but the timings, as (step, value) rows; a resumed run's later row of a step wins."""
    scalars = {}
    [scalars_dir] = run_dir.glob("logs/*/scalars")
    for path in sorted(scalars_dir.rglob("*.csv")):
        name = path.relative_to(scalars_dir).with_suffix("").as_posix()
        if "second" in name or name.startswith(("time/", "time_share/")):
            continue
        with open(path) as file:
            rows = {int(step): float(value) for step, value in csv.reader(file)}
        scalars[name] = sorted(rows.items())
    return scalars


def weights_digest(run_dir: Path) -> str:
    import torch

    state = torch.load(run_dir / "checkpoint.pt", weights_only=False)["loss_module"]
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def record_run(name: str, commands: list[list[str]], workdir: Path, data_root: Path) -> dict:
    run_dir = workdir / name
    losses_file = workdir / f"{name}.losses"
    for overrides in commands:
        overrides = [*overrides, f"offline.root={data_root}", f"hydra.run.dir={run_dir}"]
        runner = RECORDING_RUNNER.format(root=str(ROOT), script=str(ROOT / "stable_contrastive_rl.py"),
                                         overrides=overrides, out=str(losses_file))
        result = subprocess.run([sys.executable, "-c", runner], capture_output=True, text=True, cwd=ROOT)
        if result.returncode != 0:
            raise SystemExit(f"error: run {name} failed:\n{result.stderr[-3000:]}")
    updates = [update for line in losses_file.read_text().splitlines() for update in json.loads(line)]
    return {"updates": updates, "logged": logged_scalars(run_dir), "final_weights_sha256": weights_digest(run_dir)}


def record_all() -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        make_offline_dataset(workdir / "datasets")
        return {name: record_run(name, commands, workdir, workdir / "datasets")
                for name, commands in tqdm.tqdm(RUNS.items(), desc="fixed-seed runs", unit="run")}


def first_difference(before, after, where: str = "") -> str | None:
    if isinstance(before, dict) and isinstance(after, dict):
        for key in sorted(before.keys() | after.keys()):
            if key not in before or key not in after:
                return f"{where}/{key}: only {'after' if key in after else 'before'}"
            found = first_difference(before[key], after[key], f"{where}/{key}")
            if found:
                return found
        return None
    if isinstance(before, list) and isinstance(after, list):
        if len(before) != len(after):
            return f"{where}: {len(before)} entries before, {len(after)} after"
        for index, (old, new) in enumerate(zip(before, after)):
            found = first_difference(old, new, f"{where}[{index}]")
            if found:
                return found
        return None
    return None if before == after else f"{where}: {before!r} before, {after!r} after"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--record", type=Path, help="write the runs' figures to this JSON file")
    action.add_argument("--compare", type=Path, help="run again and compare with the figures in this JSON file")
    args = parser.parse_args()
    figures = record_all()
    counts = ", ".join(f"{name}: {len(run['updates'])} updates, {sum(map(len, run['logged'].values()))} logged values"
                       for name, run in figures.items())
    if args.record:
        args.record.write_text(json.dumps(figures, indent=1))
        print(f"wrote the figures of {counts} to {args.record}")
        return
    before = json.loads(args.compare.read_text())
    difference = first_difference(before, json.loads(json.dumps(figures)))
    if difference:
        raise SystemExit(f"figures differ from {args.compare}: {difference}")
    print(f"identical to {args.compare}: {counts}")


if __name__ == "__main__":
    main()
