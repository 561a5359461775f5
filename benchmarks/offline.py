"""Offline Stable Contrastive RL from a mixed-quality PointMaze dataset, over seeds.

    python benchmarks/offline.py --episodes 300 --gradient-steps 20000 --seeds 0 1

Writes a PointMaze_UMaze dataset with make_dataset.py's noisy scripted controller (Gaussian action
noise and random actions, so the data mixes good and poor behaviour), trains offline from it at the
CPU-sized config, and prints success rate against gradient steps beside the data policy's own success;
the curves go to a PNG (``--output``), named on the last line.

Its figures: docs/results.md, "PointMaze_UMaze-v3, offline".
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.learning_curve import report, run_seeds  # noqa: E402
from benchmarks.reporting import RESULTS  # noqa: E402
from make_dataset import make_dataset  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="PointMaze_UMaze-v3")
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--max-steps", type=int, default=100)
    parser.add_argument("--noise", type=float, default=1.0)
    parser.add_argument("--random-prob", type=float, default=0.5)
    parser.add_argument("--gradient-steps", type=int, default=20_000)
    parser.add_argument("--eval-interval", type=int, default=2000)
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--config", default="config_quick")
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--output", type=Path, default=RESULTS / "offline_PointMaze_UMaze.png")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, after --")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as root:
        baseline = make_dataset(
            args.env, policy="scripted", episodes=args.episodes, max_steps=args.max_steps,
            dataset_id="benchmark/noisy-v0", root=Path(root), noise=args.noise, random_prob=args.random_prob,
            progress=True,
        )
        overrides = [
            f"env.env_name={args.env}", f"env.max_steps={args.max_steps}",
            f"offline.dataset={Path(root) / 'benchmark' / 'noisy-v0'}",
            f"offline.gradient_steps={args.gradient_steps}", f"offline.eval_interval={args.eval_interval}",
            f"logger.num_eval_episodes={args.eval_episodes}", *args.overrides,
        ]
        runs = run_seeds(args.seeds, args.config, overrides, args.parallel)
    report(
        runs,
        title=(f"offline {args.env}, {args.episodes} noisy scripted episodes (noise {args.noise}, "
               f"random {args.random_prob}), {args.config} {' '.join(args.overrides)}"),
        x_label="gradient steps",
        output=args.output,
        baseline=baseline,
    )


if __name__ == "__main__":
    main()
