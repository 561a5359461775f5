"""Gradient-update throughput against a matmul roofline and against naive updates, measured in one run.

    python benchmarks/update_throughput.py [--repeats 5] [--updates 5] [--compile] [--sizes paper quick]

For the paper size (batch 2048, 4 x 1024, embed 64) and the quick CPU size, twin critics on and off,
prints: ms per full update (critic + actor + Adam), the FLOPs of that update counted from the layer
shapes, the GFLOP/s achieved, and the ratio to the roofline, a float32 torch.matmul of the dominant
shape (2048 x 1024 by 1024 x 1024) with the same threads. Then the ratio of a naive update's time to
the project's: the same maths in plain eager PyTorch as the released stable-CRL trainer writes it
(separate modules, the twin critics one after the other, the whole critic recomputed for the actor
with its weight gradients computed and dropped, three optimizers), and a careful variant that freezes
the critic's weights for the actor's pass. With ``--compile`` it also times the update with its loss
and backward torch.compile'd (as ``compile.compile=true``), compile time included. Each row times its
candidates in alternation, round after round, so that a slow spell of the machine hits them all; the
figures are medians over rounds. GPU rows are skipped on a machine without CUDA. The table is also
written as JSON (``--output``).

Its figures: docs/performance.md, "Update speed and pipeline" (roofline and naive updates).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
import tqdm
from hydra import compose, initialize_config_dir
from tensordict import TensorDict
from torch import nn
from torchrl.data import Bounded, Composite, Unbounded

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.reporting import RESULTS, say, write_json  # noqa: E402
from contrastive_rl.envs.goal_envs import DataKeys  # noqa: E402
from contrastive_rl.trainers.runtime import keep_freed_heap_memory  # noqa: E402
from utils import make_agent, make_loss_module, make_optimizer  # noqa: E402

OBSERVATION_DIM, GOAL_DIM, ACTION_DIM = 10, 3, 4  # FetchReach


class FetchReachSpecs:
    observation_spec = Composite(observation=Unbounded(OBSERVATION_DIM), desired_goal=Unbounded(GOAL_DIM))
    full_action_spec_unbatched = Composite(action=Bounded(-1.0, 1.0, shape=(ACTION_DIM,)))


def load_cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=str(ROOT), version_base="1.1"):
        return compose(config_name="config", overrides=overrides)


def random_batch(batch_size: int, device) -> TensorDict:
    return TensorDict(
        observation=torch.randn(batch_size, OBSERVATION_DIM),
        action=torch.rand(batch_size, ACTION_DIM) * 2 - 1,
        desired_goal=torch.randn(batch_size, GOAL_DIM),
        batch_size=[batch_size],
    ).to(device)


def median_ms(steps: dict, repeats: int, updates: int, device, warmup_rounds: int = 2) -> dict:
    """Median ms per call of each step, timed in alternation: ``updates`` calls of each step per round,
    after ``warmup_rounds`` untimed rounds (the heap settles: the candidates' activations interleave)."""
    rounds = {name: [] for name in steps}
    for _ in range(warmup_rounds):
        for step in steps.values():
            step()
    for _ in range(repeats):
        for name, step in steps.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(updates):
                step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            rounds[name].append((time.perf_counter() - start) / updates * 1000)
    return {name: statistics.median(times) for name, times in rounds.items()}


def linear_flops(batch: int, widths: list[int]) -> int:
    """Forward multiply-adds (x2) of an MLP with layer widths ``widths``."""
    return sum(2 * batch * fan_in * fan_out for fan_in, fan_out in zip(widths[:-1], widths[1:]))


def update_flops(cfg) -> int:
    """FLOPs of one update from the layer shapes: a layer's backward costs twice its forward (input and
    weight gradients), and once where only the input gradient is needed (the critic in the actor loss)."""
    b, h, n, e = cfg.buffer.batch_size, cfg.model.hidden_dim, cfg.model.num_layers, cfg.model.embed_dim
    critics = 2 if cfg.model.twin_critics else 1
    phi = linear_flops(b, [OBSERVATION_DIM + ACTION_DIM] + [h] * n + [e])
    psi = linear_flops(b, [GOAL_DIM] + [h] * n + [e])
    actor = linear_flops(b, [OBSERVATION_DIM + GOAL_DIM] + [h] * n + [2 * ACTION_DIM])
    logits = 2 * b * b * e
    critic_step = critics * 3 * (phi + psi + logits)
    actor_step = 3 * actor + critics * 2 * phi  # psi(g) is reused from the critic step
    return critic_step + actor_step


class NaiveUpdate:
    """The same maths written plainly, as the released stable-CRL PyTorch trainer does it: separate
    modules, critics in turn, three optimizers, and for the actor the whole critic recomputed (phi and
    psi, the B x B logits' diagonal) with the critic's weights left trainable, so the actor's backward
    also computes critic weight gradients that the critic's zero_grad then drops.

    ``frozen_critic`` is the careful variant: the critic's weights stop requiring gradients during the
    actor's pass and the actor reads paired inner products, not a B x B matrix.
    """

    def __init__(self, cfg, device, frozen_critic: bool = False) -> None:
        h, n, e = cfg.model.hidden_dim, cfg.model.num_layers, cfg.model.embed_dim

        def mlp(fan_in, fan_out, cold):
            layers = []
            for width_in in [fan_in] + [h] * (n - 1):
                layers += [nn.Linear(width_in, h), nn.LayerNorm(h), nn.ReLU()]
            last = nn.Linear(h, fan_out)
            if cold:
                nn.init.uniform_(last.weight, -1e-12, 1e-12)
                nn.init.zeros_(last.bias)
            return nn.Sequential(*layers, last).to(device)

        critics = 2 if cfg.model.twin_critics else 1
        self.frozen_critic = frozen_critic
        self.phis = [mlp(OBSERVATION_DIM + ACTION_DIM, e, True) for _ in range(critics)]
        self.psis = [mlp(GOAL_DIM, e, True) for _ in range(critics)]
        self.actor = mlp(OBSERVATION_DIM + GOAL_DIM, 2 * ACTION_DIM, False)
        self.critic_optimizers = [
            torch.optim.Adam([*phi.parameters(), *psi.parameters()], lr=cfg.optim.lr)
            for phi, psi in zip(self.phis, self.psis)
        ]
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=cfg.optim.lr)

    def __call__(self, batch: TensorDict) -> None:
        obs, action, goal = batch["observation"], batch["action"], batch["desired_goal"]
        loc, scale = self.actor(torch.cat([obs, goal], -1)).chunk(2, -1)
        dist = torch.distributions.Normal(loc, F.softplus(scale) + 1e-4)
        new_action = torch.tanh(dist.rsample())
        values = []
        for phi, psi in zip(self.phis, self.psis):
            critic_params = [*phi.parameters(), *psi.parameters()]
            if self.frozen_critic:
                for p in critic_params:
                    p.requires_grad_(False)
                values.append((phi(torch.cat([obs, new_action], -1)) * psi(goal)).sum(-1))
                for p in critic_params:
                    p.requires_grad_(True)
            else:
                values.append(torch.diag(phi(torch.cat([obs, new_action], -1)) @ psi(goal).T))
        self.actor_optimizer.zero_grad()
        (-torch.stack(values).min(0).values.mean()).backward()
        self.actor_optimizer.step()
        labels = torch.arange(obs.shape[0], device=obs.device)
        for phi, psi, optimizer in zip(self.phis, self.psis, self.critic_optimizers):
            optimizer.zero_grad()
            logits = phi(torch.cat([obs, action], -1)) @ psi(goal).T
            F.cross_entropy(logits, labels).backward()
            optimizer.step()


def project_update(cfg, device, compile_gradients: bool = False):
    """The training script's update; with ``compile_gradients`` its loss and backward are
    torch.compile'd, as ``compile.compile=true`` does (the optimizer step stays eager)."""
    keys = DataKeys.from_config(cfg)
    actor, critic = make_agent(cfg, FetchReachSpecs(), keys, device)
    loss_module = make_loss_module(cfg, actor, critic, keys)
    optimizer = make_optimizer(cfg, loss_module)

    def compute_gradients(batch: TensorDict) -> None:
        loss_td = loss_module(batch)
        sum(loss_td[key] for key in loss_module.loss_keys).backward()

    if compile_gradients:
        compute_gradients = torch.compile(compute_gradients)

    def update(batch: TensorDict) -> None:
        compute_gradients(batch)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return update


def matmul_step(device):
    """The roofline's operation: a 2048 x 1024 by 1024 x 1024 float32 matmul, 2 * 2048 * 1024^2 FLOPs."""
    a = torch.randn(2048, 1024, device=device)
    b = torch.randn(1024, 1024, device=device)
    torch.matmul(a, b)
    return lambda: torch.matmul(a, b)


MATMUL_GFLOP = 2 * 2048 * 1024 * 1024 / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--updates", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also time the torch.compile'd update")
    parser.add_argument("--sizes", nargs="+", choices=("paper", "quick"), default=["paper", "quick"])
    parser.add_argument("--output", type=Path, default=RESULTS / "update_throughput.json", help="the table as JSON")
    args = parser.parse_args()
    keep_freed_heap_memory()  # as the training script does
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    else:
        print("GPU rows skipped: no CUDA device on this machine")
    sizes = {
        "paper": [],
        "quick": ["model.hidden_dim=256", "model.num_layers=2", "buffer.batch_size=256"],
    }
    rows = []
    bar = tqdm.tqdm(total=len(devices) * len(args.sizes) * 2, desc="update throughput", unit="row")
    for device in devices:
        say(f"\n{device.type}: torch {torch.__version__}, {torch.get_num_threads()} threads, float32; "
            f"roofline = matmul 2048x1024x1024, timed in each row")
        header = (f"{'size':<6} {'twin':<5} {'ms/update':>10} {'GFLOP/update':>13} {'GFLOP/s':>8} "
                  f"{'roofline':>8} {'/roofline':>9} {'naive ms':>9} {'naive/ours':>10} "
                  f"{'frozen ms':>9} {'frozen/ours':>11}")
        if args.compile:
            header += f" {'compiled ms':>11} {'compile s':>9} {'naive/compiled':>14}"
        say(header)
        for size in args.sizes:
            for twin in (True, False):
                cfg = load_cfg([*sizes[size], f"model.twin_critics={twin}"])
                torch.manual_seed(0)
                batch = random_batch(cfg.buffer.batch_size, device)
                steps = {"matmul": matmul_step(device)}
                for name, update in (
                    ("ours", project_update(cfg, device)),
                    ("naive", NaiveUpdate(cfg, device)),
                    ("frozen", NaiveUpdate(cfg, device, frozen_critic=True)),
                ):
                    steps[name] = partial(update, batch)
                if args.compile:
                    compiled = project_update(cfg, device, compile_gradients=True)
                    start = time.perf_counter()
                    compiled(batch)
                    compile_seconds = time.perf_counter() - start
                    steps["compiled"] = partial(compiled, batch)
                ms = median_ms(steps, args.repeats, args.updates, device)
                roofline = MATMUL_GFLOP / (ms["matmul"] / 1000)
                gflop = update_flops(cfg) / 1e9
                achieved = gflop / (ms["ours"] / 1000)
                row = (f"{size:<6} {str(twin):<5} {ms['ours']:>10.1f} {gflop:>13.1f} {achieved:>8.0f} "
                       f"{roofline:>8.0f} {achieved / roofline:>9.2f} {ms['naive']:>9.1f} "
                       f"{ms['naive'] / ms['ours']:>10.2f} {ms['frozen']:>9.1f} {ms['frozen'] / ms['ours']:>11.2f}")
                figures = {"device": device.type, "size": size, "twin_critics": twin, "ms_per_update": ms["ours"],
                           "gflop_per_update": gflop, "gflop_per_s": achieved, "roofline_gflop_per_s": roofline,
                           "share_of_roofline": achieved / roofline, "naive_ms": ms["naive"],
                           "naive_over_ours": ms["naive"] / ms["ours"], "frozen_ms": ms["frozen"],
                           "frozen_over_ours": ms["frozen"] / ms["ours"]}
                if args.compile:
                    row += (f" {ms['compiled']:>11.1f} {compile_seconds:>9.0f} "
                            f"{ms['naive'] / ms['compiled']:>14.2f}")
                    figures.update(compiled_ms=ms["compiled"], compile_s=compile_seconds,
                                   naive_over_compiled=ms["naive"] / ms["compiled"])
                say(row)
                rows.append(figures)
                bar.update()
    bar.close()
    where = write_json(args.output, {
        "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__, "dtype": "float32",
        "roofline": "matmul 2048x1024x1024", "repeats": args.repeats, "updates": args.updates, "rows": rows,
    })
    print(f"wrote {where} (the table above as JSON)")


if __name__ == "__main__":
    main()
