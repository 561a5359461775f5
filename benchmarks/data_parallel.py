"""Updates/s and frames/s of the training script with 1 and N processes (torchrun; gloo on CPU, NCCL on GPUs).

    python benchmarks/data_parallel.py --processes 1 2 --frames 6000
    python benchmarks/data_parallel.py --processes 1 2 -- buffer.batch_size=1024 model.hidden_dim=512

Every run has the same global configuration (``config_quick`` on FetchReach unless overridden): the same
global batch, frames and number of updates, split over the processes. The machine's cores are split
evenly between the processes (OMP_NUM_THREADS). Prints one row per process count with the ratio to one
process, and writes the table as JSON (``--output``).

Its figures: docs/performance.md, "Data-parallel training on this CPU".
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.learning_curve import ROOT, read_scalar  # noqa: E402
from benchmarks.reporting import RESULTS, write_json  # noqa: E402


def run(processes: int, frames: int, overrides: list[str], run_dir: Path) -> dict[str, float]:
    command = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
        str(ROOT / "stable_contrastive_rl.py"), "--config-name", "config_quick",
        f"collector.total_frames={frames}", "collector.init_random_frames=1000", "logger.backend=csv",
        f"logger.eval_interval={frames}", f"hydra.run.dir={run_dir}", *overrides,
    ]
    threads = max(1, (os.cpu_count() or 1) // processes)
    result = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
    if result.returncode:
        raise RuntimeError(f"{processes} processes failed:\n{result.stderr[-3000:]}")
    last = {name: values[max(values)] for name, values in (
        (name, read_scalar(run_dir, f"train/{name}"))
        for name in ("updates_per_second", "frames_per_second", "num_updates", "elapsed_seconds")
    )}
    return last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--frames", type=int, default=6000)
    parser.add_argument("--repeats", type=int, default=1, help="runs per process count; the median is shown")
    parser.add_argument("--output", type=Path, default=RESULTS / "data_parallel.json", help="the table as JSON")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, after --")
    args = parser.parse_args()

    runs = {}
    jobs = [(repeat, processes) for repeat in range(args.repeats) for processes in args.processes]
    with tempfile.TemporaryDirectory() as tmp:
        for repeat, processes in tqdm.tqdm(jobs, desc="training runs", unit="run"):
            result = run(processes, args.frames, args.overrides, Path(tmp) / f"p{processes}_r{repeat}")
            runs.setdefault(processes, []).append(result)
    print(f"{os.cpu_count()} cores, {args.frames} global frames, overrides: {' '.join(args.overrides) or '-'}")
    print(f"{'processes':>9} {'updates':>8} {'updates/s':>10} {'frames/s':>9} {'wall s':>7} {'ratio updates/s':>16}")
    base = None
    rows = []
    for processes, results in runs.items():
        median = {key: sorted(r[key] for r in results)[len(results) // 2] for key in results[0]}
        base = base or median["updates_per_second"]
        print(f"{processes:>9} {median['num_updates']:>8.0f} {median['updates_per_second']:>10.1f} "
              f"{median['frames_per_second']:>9.1f} {median['elapsed_seconds']:>7.1f} "
              f"{median['updates_per_second'] / base:>16.2f}")
        rows.append({"processes": processes, "updates": int(median["num_updates"]),
                     "updates_per_s": median["updates_per_second"], "frames_per_s": median["frames_per_second"],
                     "wall_s": median["elapsed_seconds"], "updates_per_s_ratio": median["updates_per_second"] / base})
    where = write_json(args.output, {
        "cores": os.cpu_count(), "global_frames": args.frames, "repeats": args.repeats, "overrides": args.overrides,
        "rows": rows,
    })
    print(f"wrote {where} (the table above as JSON)")


if __name__ == "__main__":
    main()
