"""Offline updates per second of a preset (config_ogbench_crl by default), as the training script runs
them, at several sizes and in several modes, each mode of each size in a process of its own.

    python benchmarks/update_speed.py [--preset config_ogbench_tmd] [--sizes small mid recipe]
        [--modes eager compiled] [--threads 1] [--alongside "COMMAND with {batch} {hidden} {layers} {latent}"]

Each update is the script's own ``GradientUpdate``: a batch sampled from the replay buffer holding a
regenerated OGBench dataset (geometric future goals for the critic, uniform ones for the actor), the
critic and actor losses, backward, the non-finite guard, fused Adam. Sizes (batch / hidden layers /
latent): small 256 / 2 x 256 / 64, mid 256 / 3 x 512 / 512, recipe 1024 / 3 x 512 / 512 (the preset's
own), paper 2048 / 4 x 1024 / 64 (the paper's network and batch). Modes: ``eager``, ``compiled``
(torch.compile), ``bf16`` (compiled, bf16 autocast), ``auto`` (what a run of the preset gets on this
device with no flag), and on CUDA ``tf32`` (compiled, TF32 matmuls), ``cudagraphs`` (compiled and
captured by tensordict's CudaGraphModule) and ``reduce_overhead`` (torch.compile's own CUDA graphs).

Each mode of each size runs in a child process: one that fails is one line naming it and the error,
and the others are timed all the same. A child warms up (compilation and capture left out), then times
rounds of updates; the figure is the median over rounds. With ``--alongside``, a second command
(another implementation, pinned to another core) is started with each child, whose rounds go on until
it has finished; when it prints a line ``UPDATES_PER_S <rate>`` the ratio of the mode's rate to that
rate is printed: both measured over the same stretch of time on the same machine. The rows are also
written as JSON (``--json``).

Its figures: docs/performance.md, "TMD against its authors' JAX release" and "Offline updates per second
against OGBench's JAX CRL"; the GPU check's updates/s (docs/gpu_check.md).
"""
from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import tqdm
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)  # instead of benchmarks/, whose ogbench.py would shadow the ogbench package

from benchmarks.reporting import RESULTS, say, write_json  # noqa: E402
from contrastive_rl.envs.goal_envs import DataKeys, env_maker, resolve_goal_env  # noqa: E402
from contrastive_rl.data.locomaze import OGBENCH_ROOT, write_locomaze_dataset  # noqa: E402
from contrastive_rl.data.offline import load_offline_data  # noqa: E402
from contrastive_rl.trainers.runtime import tune_runtime  # noqa: E402
from contrastive_rl.trainers.progress import planned_updates  # noqa: E402
from contrastive_rl.trainers.update import GradientUpdate, SpeedPlan, set_matmul_precision  # noqa: E402
from utils import make_agent, make_loss_module, make_optimizer, make_replay_buffer, make_target_updater  # noqa: E402

SIZES = {  # batch, hidden units, hidden layers, latent
    "small": (256, 256, 2, 64),
    "mid": (256, 512, 3, 512),
    "recipe": (1024, 512, 3, 512),
    "paper": (2048, 1024, 4, 64),
}
FLOAT32 = ["precision.tf32=false", "precision.autocast=''"]
MODES = {
    "eager": ["compile.compile=false", "compile.cudagraphs=false", *FLOAT32],
    "compiled": ["compile.compile=true", "compile.cudagraphs=false", *FLOAT32],
    "bf16": ["compile.compile=true", "compile.cudagraphs=false", "precision.tf32=false", "precision.autocast=bfloat16"],
    "auto": [],
    "tf32": ["compile.compile=true", "compile.cudagraphs=false", "precision.tf32=true", "precision.autocast=''"],
    "cudagraphs": ["compile.compile=true", "compile.cudagraphs=true", *FLOAT32],
    "reduce_overhead": ["compile.compile=true", "compile.compile_mode=reduce-overhead", "compile.cudagraphs=false",
                        *FLOAT32],
}
CUDA_ONLY_MODES = ("tf32", "cudagraphs", "reduce_overhead")
REFERENCE_RATE = re.compile(r"UPDATES_PER_S\s+([0-9.]+)")


def size_overrides(size: str) -> list[str]:
    batch, hidden, layers, latent = SIZES[size]
    return [f"buffer.batch_size={batch}", f"model.hidden_dim={hidden}", f"model.num_layers={layers}",
            f"model.embed_dim={latent}"]


def build_update(overrides: list[str], dataset: str, root: Path, device: torch.device, offline_data,
                 preset: str = "config_ogbench_crl"):
    """One update of the training script, on a batch of its replay buffer, for ``preset`` with
    ``overrides``, with the speed options a run of it resolves on ``device``; and that plan."""
    with initialize_config_dir(config_dir=str(ROOT), version_base="1.1"):
        cfg = compose(config_name=preset,
                      overrides=[f"env.env_name={dataset}", f"offline.root={root}", f"device={device}", *overrides])
    plan = SpeedPlan.resolve(cfg, device, planned_updates(cfg))
    set_matmul_precision(plan)
    keys = DataKeys.from_config(cfg)
    env = env_maker(dataset, cfg.env.max_steps)
    actor, critic = make_agent(cfg, env, keys, device)
    env.close()
    loss_module = make_loss_module(cfg, actor, critic, keys)
    optimizer = make_optimizer(cfg, loss_module)
    update = GradientUpdate(cfg, loss_module, optimizer, make_target_updater(cfg, loss_module), device, plan=plan)
    replay_buffer = make_replay_buffer(cfg, keys, device, offline_data)

    def step() -> None:
        update(replay_buffer.sample())

    return step, plan


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def load_dataset(args):
    if not (args.root / f"{args.dataset}.npz").is_file():
        print(f"regenerating {args.dataset} under {args.root}")
        write_locomaze_dataset(args.dataset, args.root, progress=True)
    with initialize_config_dir(config_dir=str(ROOT), version_base="1.1"):
        data_cfg = compose(config_name="config_ogbench_crl",
                           overrides=[f"env.env_name={args.dataset}", f"offline.root={args.root}"])
    return load_offline_data(data_cfg, resolve_goal_env(data_cfg))


def time_one_mode(args) -> None:
    """The child: warm one mode of one size up, time its rounds, print its row as ``ROW {json}``."""
    size, mode = args.child
    device = torch.device(args.device)
    batch, hidden, layers, latent = SIZES[size]
    updates = args.updates or max(2, 16384 // batch)
    step, plan = build_update([*size_overrides(size), *MODES[mode]], args.dataset, args.root, device,
                              load_dataset(args), args.preset)
    start = time.perf_counter()
    for _ in range(max(args.warmup, plan.warmup_updates)):
        step()
    synchronize(device)
    warmup_seconds = time.perf_counter() - start
    times = []
    while len(times) < args.rounds or (args.stop_file and not args.stop_file.exists()):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(updates):
            step()
        synchronize(device)
        times.append((time.perf_counter() - start) / updates * 1000)
    ms = statistics.median(times)
    row = {"size": size, "batch": batch, "hidden": f"{layers} x {hidden}", "latent": latent, "mode": mode,
           "plan": plan.describe(), "ms_per_update": ms, "updates_per_s": 1000 / ms, "rounds": len(times),
           "updates_per_round": updates, "warmup_s": warmup_seconds}
    print("ROW " + json.dumps(row), flush=True)


def run_child(args, size: str, mode: str, command: str) -> tuple[dict | None, str]:
    """Time ``mode`` at ``size`` in a child process, with ``command`` alongside when given: the row
    (None if the child failed) and the last line of what went wrong, or the reference's output."""
    child = [sys.executable, str(Path(__file__).resolve()), "--child", size, mode, "--preset", args.preset,
             "--dataset", args.dataset, "--root", str(args.root), "--device", args.device,
             "--threads", str(args.threads), "--updates", str(args.updates), "--rounds", str(args.rounds),
             "--warmup", str(args.warmup)]
    reference = stop_file = None
    if command:
        stop_file = args.json.with_suffix(f".{size}.{mode}.done")
        stop_file.unlink(missing_ok=True)
        child += ["--stop-file", str(stop_file)]
        reference = subprocess.Popen(shlex.split(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    process = subprocess.Popen(child, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reference_output = ""
    if reference is not None:
        reference_output = reference.communicate()[0]
        stop_file.touch()
    output, errors = process.communicate()
    if stop_file is not None:
        stop_file.unlink(missing_ok=True)
    rows = [json.loads(line[4:]) for line in output.splitlines() if line.startswith("ROW ")]
    if process.returncode or not rows:
        lines = [line for line in errors.splitlines() if line.strip()]
        return None, lines[-1] if lines else f"exit code {process.returncode}, nothing printed"
    return rows[0], reference_output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="config_ogbench_crl", help="the Hydra config whose update is timed")
    parser.add_argument("--sizes", nargs="+", choices=tuple(SIZES), default=["small", "mid", "recipe"])
    parser.add_argument("--modes", nargs="+", choices=tuple(MODES), default=["eager", "compiled"])
    parser.add_argument("--dataset", default="pointmaze-medium-navigate-v0")
    parser.add_argument("--root", type=Path, default=OGBENCH_ROOT.expanduser(),
                        help="where the dataset lies; regenerated there when missing")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--updates", type=int, default=0, help="updates per timed round (0: by size)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds at least, per mode")
    parser.add_argument("--warmup", type=int, default=20,
                        help="untimed updates per mode, at least those of its compilation and capture")
    parser.add_argument("--alongside", default="",
                        help="a command run side by side with each mode; {batch} {hidden} {layers} {latent} are filled in")
    parser.add_argument("--json", type=Path, default=RESULTS / "update_speed.json", help="the rows as JSON")
    parser.add_argument("--child", nargs=2, metavar=("SIZE", "MODE"), help=argparse.SUPPRESS)
    parser.add_argument("--stop-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    tune_runtime()
    if args.child:
        time_one_mode(args)
        return
    device = torch.device(args.device)
    modes = [mode for mode in args.modes if device.type == "cuda" or mode not in CUDA_ONLY_MODES]
    if len(modes) < len(args.modes):
        print(f"skipped on {device.type}: {', '.join(sorted(set(args.modes) - set(modes)))} (CUDA only)")
    offline_data = load_dataset(args)  # regenerated here once, when missing, not by each child
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{args.threads} CPU thread(s)"
    print(f"{args.preset} on {args.dataset}, {len(offline_data):,} transitions; torch {torch.__version__} on {name}")

    results = []
    for size, mode in tqdm.tqdm([(size, mode) for size in args.sizes for mode in modes], desc="update speed",
                                unit="mode"):
        batch, hidden, layers, latent = SIZES[size]
        command = args.alongside.format(batch=batch, hidden=hidden, layers=layers, latent=latent)
        row, output = run_child(args, size, mode, command)
        label = f"{size:<7} batch {batch:>4}  {layers} x {hidden:<4} latent {latent:<4} {mode:<15}"
        if row is None:
            say(f"{label} failed: {output}")
            results.append({"size": size, "mode": mode, "error": output})
            continue
        ratio = ""
        if command:
            found = REFERENCE_RATE.findall(output)
            row["reference_updates_per_s"] = float(found[-1]) if found else None
            if found:
                ratio = f"  {row['updates_per_s'] / float(found[-1]):5.2f}x the command alongside ({found[-1]}/s)"
            else:
                say(f"  the command alongside printed no UPDATES_PER_S line; its output ends:\n{output[-2000:]}")
        results.append(row)
        say(f"{label} {row['ms_per_update']:8.2f} ms/update {row['updates_per_s']:8.1f} updates/s  "
            f"({row['rounds']} rounds of {row['updates_per_round']}, warm-up {row['warmup_s']:.0f} s){ratio}")
    print(f"wrote {write_json(args.json, results)} (the rows above as JSON)")


if __name__ == "__main__":
    main()
