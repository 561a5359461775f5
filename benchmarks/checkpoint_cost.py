"""Bytes written and seconds per checkpoint against the transitions stored, first and 10k steps later.

    python benchmarks/checkpoint_cost.py
    python benchmarks/checkpoint_cost.py --stored 10000 100000 --pixels 0 --method segments

Fills a replay buffer of the default capacity (``buffer.size``, 1M) with FetchReach-shaped state
transitions, or 48 x 48 image transitions (``config_pixels``), and checkpoints it with config_quick's
networks and optimizer: first, then again after 10k more transitions. ``segments`` is this example's
checkpoint (the transitions added since the previous one); ``dump`` is TorchRL's buffer dump of the
whole preallocated storage, which checkpoints used before. Each save deletes what it replaces only at
its end, so the disk holds the previous checkpoint and the new bytes at once: peak extra disk during a
save is the bytes it writes. Prints a table and writes it as JSON (``--output``).

Its figures: docs/performance.md, "Checkpoint cost".
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import tqdm
from hydra import compose, initialize_config_dir
from tensordict import TensorDict

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.reporting import RESULTS, say, write_json  # noqa: E402
from benchmarks.update_throughput import FetchReachSpecs  # noqa: E402
from contrastive_rl.trainers.checkpoint import Checkpointer  # noqa: E402
from contrastive_rl.envs.goal_envs import DataKeys  # noqa: E402
from contrastive_rl.data.replay import FutureGoalReplayBuffer  # noqa: E402
from utils import make_agent, make_loss_module, make_optimizer  # noqa: E402

CHUNK = 10_000
LATER = 10_000


def transitions(count: int, image_size: int, generator: torch.Generator) -> TensorDict:
    """``[1, count]`` stored transitions: FetchReach's shapes, or images and their goals' positions."""
    if image_size:
        image = (1, count, image_size, image_size, 3)
        data = {"pixels": torch.randint(0, 256, image, dtype=torch.uint8, generator=generator),
                "next": {"pixels": torch.randint(0, 256, image, dtype=torch.uint8, generator=generator)}}
    else:
        data = {"observation": torch.randn(1, count, 10, generator=generator),
                "next": {"observation": torch.randn(1, count, 10, generator=generator),
                         "achieved_goal": torch.randn(1, count, 3, generator=generator)}}
    data["action"] = torch.rand(1, count, 4, generator=generator) * 2 - 1
    data["next"]["done"] = torch.rand(1, count, 1, generator=generator) < 0.02
    return TensorDict(data, [1, count])


def fill(buffer: FutureGoalReplayBuffer, count: int, image_size: int, generator: torch.Generator) -> None:
    for start in range(0, count, CHUNK):
        buffer.extend(transitions(min(CHUNK, count - start), image_size, generator))


def file_versions(path: Path) -> dict[Path, tuple]:
    return {file: (file.stat().st_ino, file.stat().st_mtime_ns, file.stat().st_size)
            for file in path.rglob("*") if file.is_file()}


def bytes_written(before: dict[Path, tuple], after: dict[Path, tuple]) -> int:
    """The sizes of the files that are new or rewritten."""
    return sum(version[2] for file, version in after.items() if before.get(file) != version)


def network_state() -> dict:
    """config_quick's networks and optimizer state (after one step, so Adam's moments exist)."""
    with initialize_config_dir(config_dir=str(ROOT), version_base="1.1"):
        cfg = compose(config_name="config_quick")
    keys = DataKeys.from_config(cfg)
    actor, critic = make_agent(cfg, FetchReachSpecs(), keys, "cpu")
    loss_module = make_loss_module(cfg, actor, critic, keys)
    optimizer = make_optimizer(cfg, loss_module)
    for parameter in loss_module.parameters():
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    return {"loss_module": loss_module.state_dict(), "optimizer": optimizer.state_dict()}


def save_dump(run_dir: Path, buffer: FutureGoalReplayBuffer, state: dict, index: int) -> None:
    """The previous checkpoint: the whole buffer dumped to a fresh directory, then the state file."""
    buffer.dumps(run_dir / f"replay_buffer_{index}")
    torch.save(state, run_dir / "checkpoint.tmp")
    (run_dir / "checkpoint.tmp").replace(run_dir / "checkpoint.pt")
    if index:
        shutil.rmtree(run_dir / f"replay_buffer_{index - 1}")


def measure(method: str, stored: int, image_size: int, capacity: int, state: dict, scratch: Path) -> list[tuple]:
    """(which, bytes written, seconds) for the first checkpoint and one LATER transitions on."""
    generator = torch.Generator().manual_seed(0)
    buffer = FutureGoalReplayBuffer(capacity=capacity, num_envs=1, batch_size=256, gamma=0.99,
                                    goal_key="goal_pixels" if image_size else "desired_goal",
                                    achieved_goal_key=("next", "pixels") if image_size else ("next", "achieved_goal"))
    run_dir = Path(tempfile.mkdtemp(dir=scratch))
    checkpointer = Checkpointer(run_dir, buffer)  # before the buffer is filled: none of it is a dataset
    fill(buffer, stored, image_size, generator)
    rows = []
    for index, which in enumerate(("first", f"+{LATER // 1000}k later")):
        if index:
            fill(buffer, LATER, image_size, generator)
        before = file_versions(run_dir)
        start = time.perf_counter()
        if method == "segments":
            checkpointer.save(state)
        else:
            save_dump(run_dir, buffer, state, index)
        seconds = time.perf_counter() - start
        rows.append((which, bytes_written(before, file_versions(run_dir)), seconds))
    shutil.rmtree(run_dir)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stored", type=int, nargs="+", default=[10_000, 100_000, 1_000_000],
                        help="state transitions stored before the first checkpoint")
    parser.add_argument("--pixels", type=int, default=50_000, help="48 px transitions stored (0: none)")
    parser.add_argument("--capacity", type=int, default=1_000_000, help="buffer.size")
    parser.add_argument("--method", choices=("segments", "dump"), nargs="+", default=["dump", "segments"])
    parser.add_argument("--scratch", type=Path, default=None, help="where the checkpoints are written")
    parser.add_argument("--output", type=Path, default=RESULTS / "checkpoint_cost.json", help="the table as JSON")
    args = parser.parse_args()

    state = network_state()
    weights_mb = sum(t.numel() * t.element_size() for t in state["loss_module"].values()) / 2**20
    cases = [(stored, 0) for stored in args.stored] + ([(args.pixels, 48)] if args.pixels else [])
    measurements = [(stored, image_size, method) for stored, image_size in cases for method in args.method]
    scratch = Path(tempfile.mkdtemp(dir=args.scratch))
    print(f"buffer.size {args.capacity:,}; networks and optimizer: config_quick ({weights_mb:.1f} MB of weights)")
    print(f"{'method':>9} | {'stored':>14} | {'checkpoint':>12} | {'MB written (= peak extra disk)':>31} | {'s':>6}")
    print("-" * 86)
    rows = []
    try:
        for stored, image_size, method in tqdm.tqdm(measurements, desc="checkpoint cost", unit="measurement"):
            kind = f"{stored:,} {'48 px' if image_size else 'state'}"
            for which, written, seconds in measure(method, stored, image_size, args.capacity, state, scratch):
                say(f"{method:>9} | {kind:>14} | {which:>12} | {written / 2**20:>31.1f} | {seconds:>6.2f}")
                rows.append({"method": method, "stored": stored, "transitions": "48 px" if image_size else "state",
                             "checkpoint": which, "mb_written": written / 2**20, "seconds": seconds})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    where = write_json(args.output, {
        "buffer_size": args.capacity, "networks": "config_quick", "weights_mb": weights_mb,
        "torch": torch.__version__, "rows": rows,
    })
    print(f"wrote {where} (the table above as JSON)")


if __name__ == "__main__":
    main()
