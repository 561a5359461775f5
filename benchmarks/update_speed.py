"""Offline updates per second of a preset (config_ogbench_crl by default), as the training script runs
them, at several sizes.

    python benchmarks/update_speed.py [--preset config_ogbench_tmd] [--sizes small mid recipe]
        [--modes eager compiled] [--threads 1] [--alongside "COMMAND with {batch} {hidden} {layers} {latent}"]

Each update is the script's own: a batch sampled from the replay buffer holding a regenerated OGBench
dataset (geometric future goals for the critic, uniform ones for the actor), the critic and actor
losses, backward, the non-finite guard, fused Adam (``GradientUpdate``). Sizes (batch / hidden layers
/ latent): small 256 / 2 x 256 / 64, mid 256 / 3 x 512 / 512, recipe 1024 / 3 x 512 / 512 (the
preset's own), paper 2048 / 4 x 1024 / 64 (the paper's network and batch). Modes: ``eager``,
``compiled`` (``compile.compile=true``), ``bf16`` (compiled, ``precision.autocast=bfloat16``), and on
CUDA ``tf32`` (compiled) and ``cudagraphs`` (compiled, captured).

The modes of a size are timed in alternation, round after round, and each figure is the median over
rounds. With ``--alongside``, a second command (another implementation, pinned to another core) is
started as this size's timing starts, rounds go on until it has finished, and when it prints a line
``UPDATES_PER_S <rate>`` the ratio of each mode's rate to that rate is printed: both measured over the
same stretch of time on the same machine. The rows are also written as JSON (``--json``).
"""
from __future__ import annotations

import argparse
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
from contrastive_rl.envs import DataKeys, env_maker, resolve_goal_env  # noqa: E402
from contrastive_rl.locomaze import OGBENCH_ROOT, write_locomaze_dataset  # noqa: E402
from contrastive_rl.offline import load_offline_data  # noqa: E402
from contrastive_rl.runtime import tune_runtime  # noqa: E402
from contrastive_rl.update import GradientUpdate, set_matmul_precision  # noqa: E402
from utils import make_agent, make_loss_module, make_optimizer, make_replay_buffer, make_target_updater  # noqa: E402

SIZES = {  # batch, hidden units, hidden layers, latent
    "small": (256, 256, 2, 64),
    "mid": (256, 512, 3, 512),
    "recipe": (1024, 512, 3, 512),
    "paper": (2048, 1024, 4, 64),
}
MODES = {
    "eager": [],
    "compiled": ["compile.compile=true"],
    "bf16": ["compile.compile=true", "precision.autocast=bfloat16"],
    "tf32": ["compile.compile=true", "precision.tf32=true"],
    "cudagraphs": ["compile.compile=true", "compile.cudagraphs=true"],
}
CUDA_ONLY_MODES = ("tf32", "cudagraphs")
REFERENCE_RATE = re.compile(r"UPDATES_PER_S\s+([0-9.]+)")


def size_overrides(size: str) -> list[str]:
    batch, hidden, layers, latent = SIZES[size]
    return [f"buffer.batch_size={batch}", f"model.hidden_dim={hidden}", f"model.num_layers={layers}",
            f"model.embed_dim={latent}"]


def build_update(overrides: list[str], dataset: str, root: Path, device: torch.device, offline_data,
                 preset: str = "config_ogbench_crl"):
    """One update of the training script, on a batch of its replay buffer, for ``preset`` with
    ``overrides``."""
    with initialize_config_dir(config_dir=str(ROOT), version_base="1.1"):
        cfg = compose(config_name=preset,
                      overrides=[f"env.env_name={dataset}", f"offline.root={root}", f"device={device}", *overrides])
    set_matmul_precision(cfg)
    keys = DataKeys.from_config(cfg)
    env = env_maker(dataset, cfg.env.max_steps)
    actor, critic = make_agent(cfg, env, keys, device)
    env.close()
    loss_module = make_loss_module(cfg, actor, critic, keys)
    optimizer = make_optimizer(cfg, loss_module)
    update = GradientUpdate(cfg, loss_module, optimizer, make_target_updater(cfg, loss_module), device)
    replay_buffer = make_replay_buffer(cfg, keys, device, offline_data)

    def step() -> None:
        update(replay_buffer.sample(), "in the benchmark")

    return step


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_modes(steps: dict, updates: int, rounds: int, device, reference: subprocess.Popen | None) -> dict:
    """ms per update of each step over ``rounds`` rounds at least, and while ``reference`` runs."""
    times = {name: [] for name in steps}
    while len(next(iter(times.values()))) < rounds or (reference is not None and reference.poll() is None):
        for name, step in steps.items():
            synchronize(device)
            start = time.perf_counter()
            for _ in range(updates):
                step()
            synchronize(device)
            times[name].append((time.perf_counter() - start) / updates * 1000)
    return times


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
    parser.add_argument("--warmup", type=int, default=20, help="untimed updates per mode (compilation included)")
    parser.add_argument("--alongside", default="",
                        help="a command run side by side, per size; {batch} {hidden} {layers} {latent} are filled in")
    parser.add_argument("--json", type=Path, default=RESULTS / "update_speed.json", help="the rows as JSON")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    tune_runtime()
    device = torch.device(args.device)
    modes = [mode for mode in args.modes if device.type == "cuda" or mode not in CUDA_ONLY_MODES]
    if len(modes) < len(args.modes):
        print(f"skipped on {device.type}: {', '.join(sorted(set(args.modes) - set(modes)))} (CUDA only)")
    if not (args.root / f"{args.dataset}.npz").is_file():
        print(f"regenerating {args.dataset} under {args.root}")
        write_locomaze_dataset(args.dataset, args.root, progress=True)
    with initialize_config_dir(config_dir=str(ROOT), version_base="1.1"):
        data_cfg = compose(config_name="config_ogbench_crl",
                           overrides=[f"env.env_name={args.dataset}", f"offline.root={args.root}"])
    offline_data = load_offline_data(data_cfg, resolve_goal_env(data_cfg))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU thread(s)"
    print(f"{args.preset} on {args.dataset}, {len(offline_data):,} transitions; torch {torch.__version__} on {name}")

    results = []
    for size in tqdm.tqdm(args.sizes, desc="update speed", unit="size"):
        batch, hidden, layers, latent = SIZES[size]
        updates = args.updates or max(2, 16384 // batch)
        steps, compile_seconds = {}, {}
        for mode in modes:
            step = build_update([*size_overrides(size), *MODES[mode]], args.dataset, args.root, device, offline_data,
                                args.preset)
            start = time.perf_counter()
            for _ in range(args.warmup):
                step()
            synchronize(device)
            compile_seconds[mode] = time.perf_counter() - start
            steps[mode] = step
        reference = None
        if args.alongside:
            command = args.alongside.format(batch=batch, hidden=hidden, layers=layers, latent=latent)
            reference = subprocess.Popen(shlex.split(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         text=True)
        times = time_modes(steps, updates, args.rounds, device, reference)
        reference_rate = None
        if reference is not None:
            output = reference.communicate()[0]
            found = REFERENCE_RATE.findall(output)
            reference_rate = float(found[-1]) if found else None
            if reference_rate is None:
                say(f"  the command alongside printed no UPDATES_PER_S line; its output ends:\n{output[-2000:]}")
        for mode in modes:
            ms = statistics.median(times[mode])
            row = {"size": size, "batch": batch, "hidden": f"{layers} x {hidden}", "latent": latent, "mode": mode,
                   "ms_per_update": ms, "updates_per_s": 1000 / ms, "rounds": len(times[mode]),
                   "warmup_s": compile_seconds[mode], "reference_updates_per_s": reference_rate}
            results.append(row)
            ratio = f"  {row['updates_per_s'] / reference_rate:5.2f}x the command alongside ({reference_rate:.1f}/s)" \
                if reference_rate else ""
            say(f"{size:<7} batch {batch:>4}  {layers} x {hidden:<4} latent {latent:<4} {mode:<10} "
                f"{ms:8.2f} ms/update {1000 / ms:8.1f} updates/s  ({len(times[mode])} rounds of {updates}, "
                f"warm-up {compile_seconds[mode]:.0f} s){ratio}")
    print(f"wrote {write_json(args.json, results)} (the rows above as JSON)")


if __name__ == "__main__":
    main()
