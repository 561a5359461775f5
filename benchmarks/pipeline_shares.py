"""Where a training run's wall-clock goes, and the cost of goal sampling and of TorchRL's env stepping.

    python benchmarks/pipeline_shares.py [--frames 10000]

1. A real run of the training script (``config_quick`` on FetchReach, ``--frames`` env steps): the
   share of wall-clock in collection, replay-buffer writes, goal sampling, updates, evaluation and
   logging, from TorchRL's ``timeit`` (the run logs them as ``time_share/*``).
2. Goal sampling of a 2048 batch from a 100k-transition buffer (future-goal relabelling included)
   against one update at the paper size, same machine, same run.
3. Env stepping through the project's TorchRL env and collector against raw gymnasium, FetchReach,
   the same uniform random actions (see collection_speed.py).

Prints the three and writes them as JSON (``--output``).

Its figures: docs/performance.md, "Update speed and pipeline" (time shares).
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path

import torch
import tqdm
from tensordict import TensorDict

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.collection_speed import compare  # noqa: E402
from benchmarks.reporting import RESULTS, say, write_json  # noqa: E402
from benchmarks.update_throughput import load_cfg, median_ms, project_update, random_batch  # noqa: E402
from contrastive_rl.envs.goal_envs import register_goal_envs  # noqa: E402
from contrastive_rl.data.replay import FutureGoalReplayBuffer  # noqa: E402
from contrastive_rl.trainers.runtime import keep_freed_heap_memory, skip_missing_pandas_lookups  # noqa: E402


def run_shares(frames: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as run_dir:
        command = [
            sys.executable, str(ROOT / "stable_contrastive_rl.py"), "--config-name", "config_quick",
            f"collector.total_frames={frames}", "logger.backend=csv", f"hydra.run.dir={run_dir}",
        ]
        subprocess.run(command, check=True, capture_output=True, text=True)
        shares = {}
        for path in Path(run_dir).glob("logs/*/scalars/time_share/*.csv"):
            with open(path) as f:
                shares[path.stem] = float(list(csv.reader(f))[-1][1])
        return shares


def sampling_against_update(repeats: int) -> tuple[float, float]:
    buffer = FutureGoalReplayBuffer(capacity=100_000, num_envs=1, batch_size=2048, gamma=0.99)
    steps = 100_000
    done = torch.zeros(1, steps, 1, dtype=torch.bool)
    done[:, 49::50] = True
    buffer.extend(TensorDict(
        {
            "observation": torch.randn(1, steps, 10),
            "action": torch.randn(1, steps, 4),
            "next": {"observation": torch.randn(1, steps, 10), "achieved_goal": torch.randn(1, steps, 3), "done": done},
        },
        batch_size=[1, steps],
    ))
    cfg = load_cfg([])
    batch = random_batch(2048, torch.device("cpu"))
    update = project_update(cfg, torch.device("cpu"))
    ms = median_ms({"sample": buffer.sample, "update": partial(update, batch)}, repeats, 2, torch.device("cpu"))
    return ms["sample"], ms["update"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=RESULTS / "pipeline_shares.json", help="the figures as JSON")
    args = parser.parse_args()
    env_counts = (1, 4)

    # One training run, the sampling against update timing, then one collector comparison per env count.
    with tqdm.tqdm(total=2 + len(env_counts), desc="pipeline shares", unit="measurement") as bar:
        shares = dict(sorted(run_shares(args.frames).items(), key=lambda item: -item[1]))
        bar.update()
        say(f"1. shares of a config_quick FetchReach run of {args.frames} env steps ({os.cpu_count()} cores)")
        for name, share in shares.items():
            say(f"   {name:<12} {share:6.1%}")

        keep_freed_heap_memory()  # as the training script does
        sample_ms, update_ms = sampling_against_update(args.repeats)
        bar.update()
        say(f"2. goal sampling, batch 2048 from 100k transitions: {sample_ms:.2f} ms; paper-size update "
            f"{update_ms:.0f} ms; sampling / update = {sample_ms / update_ms:.2%}")

        register_goal_envs()
        skip_missing_pandas_lookups()  # as the training script does
        stepping = []
        for num_envs in env_counts:
            raw, wrapped = compare("FetchReach-v4", 50, None, "uniform", num_envs, 2000, args.repeats)
            bar.update()
            say(f"3. FetchReach steps/s, uniform random actions: raw gymnasium {raw:.0f} (one env), the project's "
                f"{num_envs} env(s) through TorchRL's Collector {wrapped:.0f}; overhead {raw / wrapped:.2f}x")
            stepping.append({"envs": num_envs, "raw_steps_per_s": raw, "torchrl_steps_per_s": wrapped,
                             "overhead": raw / wrapped})
    where = write_json(args.output, {
        "cores": os.cpu_count(), "torch": torch.__version__, "frames": args.frames, "repeats": args.repeats,
        "time_shares": shares,
        "goal_sampling": {"batch": 2048, "stored": 100_000, "sample_ms": sample_ms, "paper_update_ms": update_ms,
                          "sample_over_update": sample_ms / update_ms},
        "env_stepping": {"env": "FetchReach-v4", "actions": "uniform", "steps": 2000, "rows": stepping},
    })
    print(f"wrote {where} (the figures above as JSON)")


if __name__ == "__main__":
    main()
