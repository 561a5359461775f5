"""Time one full gradient update (critic + actor) at the quick and the paper configs.

    python benchmarks/update_speed.py [--repeats 5] [--updates 10]

Builds the networks and the loss from the Hydra configs (FetchReach shapes: observation 10, goal 3,
action 4), feeds random batches, and prints the median ms/update over ``--repeats`` rounds of
``--updates`` updates, with the threads torch uses.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from tensordict import TensorDict
from torchrl.data import Bounded, Composite, Unbounded

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from utils import make_agent, make_loss_module, make_optimizer  # noqa: E402

OBSERVATION_DIM, GOAL_DIM, ACTION_DIM = 10, 3, 4
LOSS_KEYS = ("loss_critic", "loss_actor", "loss_alpha")


class FetchReachSpecs:
    observation_spec = Composite(
        observation=Unbounded(OBSERVATION_DIM), desired_goal=Unbounded(GOAL_DIM)
    )
    full_action_spec_unbatched = Composite(action=Bounded(-1.0, 1.0, shape=(ACTION_DIM,)))


def time_updates(config_name: str, overrides: list[str], repeats: int, updates: int) -> tuple[float, int]:
    with initialize_config_dir(config_dir=str(ROOT), version_base="1.1"):
        cfg = compose(config_name=config_name, overrides=overrides)
    torch.manual_seed(0)
    actor, critic = make_agent(cfg, FetchReachSpecs(), "cpu")
    loss_module = make_loss_module(cfg, actor, critic)
    optimizer = make_optimizer(cfg, loss_module)
    batch_size = cfg.buffer.batch_size
    batch = TensorDict(
        observation=torch.randn(batch_size, OBSERVATION_DIM),
        action=torch.rand(batch_size, ACTION_DIM) * 2 - 1,
        desired_goal=torch.randn(batch_size, GOAL_DIM),
        batch_size=[batch_size],
    )

    def update():
        loss_td = loss_module(batch)
        sum(loss_td[key] for key in LOSS_KEYS).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    update()  # warm-up
    rounds = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(updates):
            update()
        rounds.append((time.perf_counter() - start) / updates * 1000)
    return statistics.median(rounds), batch_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--updates", type=int, default=10)
    args = parser.parse_args()
    cases = [
        ("quick", "config_quick", []),
        ("paper, twin critics", "config", []),
        ("paper, one critic", "config", ["model.twin_critics=false"]),
    ]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    print(f"{'config':<22} {'batch':>6} {'ms/update':>10} {'updates/s':>10}")
    for name, config_name, overrides in cases:
        ms, batch_size = time_updates(config_name, overrides, args.repeats, args.updates)
        print(f"{name:<22} {batch_size:>6} {ms:>10.1f} {1000 / ms:>10.1f}")


if __name__ == "__main__":
    main()
