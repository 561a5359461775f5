"""Gather the runs of a Hydra multirun sweep into one plot of success against steps, mean and spread.

    python gather_sweep.py multirun/2026-11-24/10-00-00 --output sweep.png [--metric eval/success_final]

Each run directory of the sweep (``<sweep>/<job number>/``) holds ``.hydra/overrides.yaml`` and the csv
logs (``logger.backend=csv``). Runs whose overrides differ only in ``env.seed`` form one group; each
group is drawn as its mean over seeds with a band of one standard deviation, and printed as a table.
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402


def read_runs(sweep_dir: Path, metric: str) -> dict[str, list[dict[int, float]]]:
    """``{group label: [curve of each seed]}``, a curve mapping the logging step to the metric."""
    groups: dict[str, list[dict[int, float]]] = defaultdict(list)
    for overrides_file in sorted(sweep_dir.glob("*/.hydra/overrides.yaml")):
        run_dir = overrides_file.parent.parent
        found = list(run_dir.glob(f"logs/*/scalars/{metric}.csv"))
        if not found:
            continue
        overrides = yaml.safe_load(overrides_file.read_text()) or []
        label = " ".join(o for o in overrides if not o.startswith("env.seed=")) or "default"
        with open(found[0]) as f:
            groups[label].append({int(step): float(value) for step, value in csv.reader(f)})
    return groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--metric", default="eval/success_final")
    parser.add_argument("--output", type=Path, default=Path("sweep.png"))
    args = parser.parse_args()
    groups = read_runs(args.sweep_dir, args.metric)
    if not groups:
        sys.exit(f"error: no run with {args.metric} under {args.sweep_dir} (was logger.backend=csv?)")

    figure, axis = plt.subplots(figsize=(6, 3.8))
    for label, curves in groups.items():
        steps = sorted(set.intersection(*(set(curve) for curve in curves)))
        means = [statistics.mean(curve[s] for curve in curves) for s in steps]
        spreads = [statistics.pstdev(curve[s] for curve in curves) for s in steps]
        print(f"{label} ({len(curves)} seeds), {args.metric}: step mean +- std")
        for step, mean, spread in zip(steps, means, spreads):
            print(f"  {step:>9} {mean:.2f} +- {spread:.2f}")
        axis.plot(steps, means, marker="o", label=f"{label} ({len(curves)} seeds)")
        low = [mean - spread for mean, spread in zip(means, spreads)]
        high = [mean + spread for mean, spread in zip(means, spreads)]
        axis.fill_between(steps, low, high, alpha=0.2)
    axis.set_xlabel("step")
    axis.set_ylabel(args.metric)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.output, dpi=100)
    print(f"saved {args.output}")


if __name__ == "__main__":
    main()
