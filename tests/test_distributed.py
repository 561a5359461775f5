"""Data-parallel training: a 2 x (B/2) step equals a 1 x B step; the script runs under torchrun."""
import os
import re
import signal
import socket
import subprocess
import sys
import time
from unittest.mock import patch

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tensordict import TensorDict
from torchrl.modules import TanhNormal

from conftest import ROOT, TINY_OVERRIDES, build_agent, build_loss_module, check_config, read_scalar

BATCH = 64
LOSSES = ("infonce", "symmetric_infonce", "binary_nce")
OVERRIDES = [*TINY_OVERRIDES, "model.cold_init=false", "model.twin_critics=true", "loss.logsumexp_coef=0.1",
             "loss.auto_alpha=true", "loss.alpha_init=0.1", "loss.random_goal_fraction=0", "loss.bc_coef=0.2"]


def global_batch() -> TensorDict:
    generator = torch.Generator().manual_seed(1)
    return TensorDict({
        "observation": torch.randn(BATCH, 10, generator=generator),
        "desired_goal": torch.randn(BATCH, 3, generator=generator),
        "action": torch.rand(BATCH, 4, generator=generator) * 2 - 1,
    }, [BATCH])


def loss_and_gradients(contrastive: str, rows: slice, world_size: int) -> tuple[dict, list[torch.Tensor]]:
    """One update's losses and the averaged gradients, from the same initial weights."""
    from hydra import compose, initialize_config_dir

    from contrastive_rl.trainers.distributed import average_gradients
    from utils import make_eval_environments, make_optimizer

    with initialize_config_dir(config_dir=str(ROOT), version_base="1.1"):
        cfg = compose(config_name="config", overrides=[*OVERRIDES, f"loss.contrastive={contrastive}"])
    eval_env = make_eval_environments(cfg, check_config(cfg))[None]
    torch.manual_seed(0)
    actor, critic = build_agent(cfg, eval_env)
    loss_module = build_loss_module(cfg, actor, critic, world_size)
    optimizer = make_optimizer(cfg, loss_module)
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    # The policy's sample noise is drawn per process: take its deterministic action to compare.
    with patch.object(TanhNormal, "rsample", lambda self, sample_shape=(): self.deterministic_sample):
        loss_td = loss_module(global_batch()[rows])
    (loss_td["loss_critic"] + loss_td["loss_actor"] + loss_td["loss_alpha"]).backward()
    if world_size > 1:
        average_gradients(parameters, world_size)
    eval_env.close()
    losses = {key: loss_td[key].detach() for key in ("loss_critic", "loss_actor", "loss_alpha")}
    return losses, [p.grad.clone() for p in parameters]


def rank_process(rank: int, port: int, output: str) -> None:
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    half = BATCH // 2
    results = {name: loss_and_gradients(name, slice(rank * half, (rank + 1) * half), 2) for name in LOSSES}
    torch.save(results, f"{output}.{rank}")
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_with_half_batches_equal_one_process_with_the_whole_batch(tmp_path):
    output = str(tmp_path / "ranks")
    mp.spawn(rank_process, args=(free_port(), output), nprocs=2, join=True)
    ranks = [torch.load(f"{output}.{rank}", weights_only=False) for rank in range(2)]
    for name in LOSSES:
        losses, gradients = loss_and_gradients(name, slice(None), 1)
        # The critic loss spans the global batch on every rank; the actor and alpha losses are means
        # over each rank's rows, whose average is the global mean.
        for rank in range(2):
            torch.testing.assert_close(ranks[rank][name][0]["loss_critic"], losses["loss_critic"])
        for key in ("loss_actor", "loss_alpha"):
            mean = (ranks[0][name][0][key] + ranks[1][name][0][key]) / 2
            torch.testing.assert_close(mean, losses[key], rtol=1e-5, atol=1e-6)
        assert len(gradients) == len(ranks[0][name][1]) > 10
        for rank in range(2):
            for distributed, single in zip(ranks[rank][name][1], gradients):
                torch.testing.assert_close(distributed, single, rtol=1e-4, atol=1e-6)
        assert any(g.abs().max() > 1e-3 for g in gradients)  # gradients that could differ, not zeros


@pytest.mark.slow
def test_script_trains_under_torchrun_with_rank_zero_logging(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", str(ROOT / "stable_contrastive_rl.py"),
         *TINY_OVERRIDES, f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list(tmp_path.glob("logs/*/scalars"))) == 1  # rank 0 alone logs
    success = read_scalar(tmp_path, "eval/success_final")
    assert [step for step, _ in success] == [200, 400]  # global env steps
    updates = read_scalar(tmp_path, "train/num_updates")
    assert updates[-1][1] == pytest.approx(0.05 * 400)  # the single-process run's number of updates
    assert (tmp_path / "checkpoint.pt").is_file()


@pytest.mark.parametrize("override,pattern", [
    ("buffer.batch_size=33", "buffer.batch_size=33 is not allowed with 2 processes: .* multiple of the world size"),
    ("collector.frames_per_batch=101", r"collector.frames_per_batch=101 .* world size x collector.num_envs \(2\)"),
    ("checkpoint.resume=auto", "checkpoint.resume='auto' is not allowed with 2 processes"),
])
def test_bad_data_parallel_config_is_named(make_cfg, override, pattern):
    from contrastive_rl.errors import ConfigError
    from contrastive_rl.trainers.config import validate_config

    with pytest.raises(ConfigError, match=pattern):
        validate_config(make_cfg(*TINY_OVERRIDES, override), world_size=2)


@pytest.mark.slow
def test_a_sigterm_to_torchrun_stops_every_rank_together_with_rank_zero_checkpointing(tmp_path):
    """torchrun passes the SIGTERM to its workers: they stop at the same round, rank 0 writes the
    checkpoint and says that a data-parallel run does not resume."""
    process = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", str(ROOT / "stable_contrastive_rl.py"),
         *TINY_OVERRIDES, "collector.total_frames=50_000", "optim.utd_ratio=0.2", f"hydra.run.dir={tmp_path}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.time() + 300
    while not list(tmp_path.glob("logs/*/scalars/train/loss_critic.csv")) and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=300)
    [line] = [line for line in output.splitlines() if "stopped by" in line]  # rank 0 alone reports
    found = re.search(r"stopped by SIGTERM: checkpoint of (\d+) gradient updates and (\d+) env steps written to "
                      rf"{re.escape(str(tmp_path))}; a data-parallel run does not resume$", line)
    assert found, line
    progress = torch.load(tmp_path / "checkpoint.pt", weights_only=False)["progress"]
    assert (progress["num_updates"], progress["collected_frames"]) == (int(found[1]), int(found[2]))
    assert 0 < progress["collected_frames"] < 50_000
    # torchrun's agent reports the signal with a traceback of its own; none comes from the training script.
    assert 'stable_contrastive_rl.py", line' not in output, output[-3000:]
