"""Checkpoints: a run killed mid-way and resumed equals the run that was never interrupted."""
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, TINY_OVERRIDES
from test_smoke import read_scalar

RUN = [*TINY_OVERRIDES, "collector.total_frames=1000", "buffer.size=2000", "model.cold_init=false",
       "optim.utd_ratio=0.2", "checkpoint.interval=300"]
COMPARED = ("train/loss_critic", "train/loss_actor", "eval/final_goal_distance", "eval/success_any")


def script(*overrides):
    return [sys.executable, str(ROOT / "stable_contrastive_rl.py"), *overrides]


def curves(run_dir):
    # A resumed run logs again the steps after its checkpoint: the later line of a step wins.
    return {name: dict(read_scalar(run_dir, name)) for name in COMPARED}


def test_killed_and_resumed_run_equals_the_uninterrupted_one(tmp_path):
    uninterrupted = subprocess.run(script(*RUN, f"hydra.run.dir={tmp_path / 'a'}"), capture_output=True, text=True)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]

    killed_dir = tmp_path / "b"
    process = subprocess.Popen(script(*RUN, f"hydra.run.dir={killed_dir}"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed_dir / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    saved = torch.load(killed_dir / "checkpoint.pt", weights_only=False)
    assert saved["counters"]["collected_frames"] in (300, 600, 900)  # killed before the end

    resumed = subprocess.run(script(*RUN, "checkpoint.resume=auto", f"hydra.run.dir={killed_dir}"),
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected, found = curves(tmp_path / "a"), curves(killed_dir)
    assert found == expected  # bit-exact on CPU
    assert max(expected["train/loss_critic"]) == 1000


def test_resume_refuses_a_missing_or_foreign_checkpoint(tmp_path):
    missing = subprocess.run(script(*RUN, f"checkpoint.resume={tmp_path / 'nowhere'}",
                                    f"hydra.run.dir={tmp_path / 'x'}"), capture_output=True, text=True)
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert f"error: checkpoint.resume='{tmp_path / 'nowhere'}' is not allowed: " \
           f"{tmp_path / 'nowhere' / 'checkpoint.pt'} does not exist" in missing.stderr.splitlines()

    first = subprocess.run(script(*RUN, "collector.total_frames=300", f"hydra.run.dir={tmp_path / 'first'}"),
                           capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-3000:]
    before = (tmp_path / "first" / "checkpoint.pt").read_bytes()
    foreign = subprocess.run(script(*RUN, "loss.gamma=0.9", f"checkpoint.resume={tmp_path / 'first'}",
                                    f"hydra.run.dir={tmp_path / 'second'}"), capture_output=True, text=True)
    assert foreign.returncode != 0 and "Traceback" not in foreign.stderr
    [line] = [line for line in foreign.stderr.splitlines() if line.startswith("error:")]
    assert line.endswith("belongs to another configuration (it differs in loss.gamma)")
    assert (tmp_path / "first" / "checkpoint.pt").read_bytes() == before
    assert not (tmp_path / "second" / "logs").exists()


def filled_buffer():
    """A replay buffer of about 60 MB with fixed contents, so a save takes a while to kill."""
    from tensordict import TensorDict

    from contrastive_rl.replay import FutureGoalReplayBuffer

    generator = torch.Generator().manual_seed(0)
    buffer = FutureGoalReplayBuffer(capacity=60_000, num_envs=2, batch_size=8, gamma=0.9)
    data = TensorDict({
        "observation": torch.randn(2, 30_000, 256, generator=generator),
        "desired_goal": torch.randn(2, 30_000, 2, generator=generator),
        "next": {"achieved_goal": torch.randn(2, 30_000, 2, generator=generator),
                 "done": torch.rand(2, 30_000, 1, generator=generator) < 0.02},
    }, [2, 30_000])
    buffer.extend(data)
    return buffer


SAVE_FOREVER = f"""
import sys
from pathlib import Path
sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / "tests")!r}]
from test_checkpoint import filled_buffer
from utils import save_checkpoint
buffer, step = filled_buffer(), 0
while True:
    step += 1
    save_checkpoint(Path(sys.argv[1]), {{"step": step}}, buffer)
    print(step, flush=True)
"""


@pytest.mark.parametrize("delay", [0.0, 0.15, 0.3, 0.45])
def test_a_kill_during_a_save_leaves_the_last_complete_checkpoint(tmp_path, delay):
    from utils import load_replay_buffer

    path = tmp_path / "checkpoint.pt"
    saver = subprocess.Popen([sys.executable, "-c", SAVE_FOREVER, str(path)], stdout=subprocess.PIPE, text=True)
    while saver.stdout.readline().strip() != "1":  # torchrl logs to stdout too
        assert saver.poll() is None, "the saving process died"
    time.sleep(delay)  # one complete checkpoint; the next save is under way
    saver.send_signal(signal.SIGKILL)
    saver.wait()

    state = torch.load(path, weights_only=False)
    assert state["step"] >= 1
    expected = filled_buffer()
    restored = filled_buffer()
    restored.empty()
    load_replay_buffer(restored, path, state)
    assert len(restored) == len(expected) and restored._newest_time == expected._newest_time
    assert (restored.storage[:] == expected.storage[:]).all()


@pytest.mark.parametrize("override,pattern", [
    ("checkpoint.interval=-1", "checkpoint.interval=-1 is not allowed"),
])
def test_bad_checkpoint_config_is_named(make_cfg, override, pattern):
    from contrastive_rl.envs import ConfigError
    from utils import validate_config

    with pytest.raises(ConfigError, match=pattern):
        validate_config(make_cfg(override))
