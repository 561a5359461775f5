"""Checkpoints: a run killed mid-way and resumed equals the run that was never interrupted, and a kill
inside a save leaves the last complete checkpoint and its replay buffer whole."""
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from conftest import ROOT, TINY_OVERRIDES, check_config, filled_buffer, read_scalar, script
from contrastive_rl.checkpoint import CHECKPOINT_FILE, REPLAY_BUFFER_PREFIX, load_replay_buffer

RUN = [*TINY_OVERRIDES, "collector.total_frames=1000", "buffer.size=2000", "model.cold_init=false",
       "optim.utd_ratio=0.2", "checkpoint.interval=300"]
COMPARED = ("train/loss_critic", "train/loss_actor", "eval/final_goal_distance", "eval/success_any")


def curves(run_dir):
    # A resumed run logs again the steps after its checkpoint: the later line of a step wins.
    return {name: dict(read_scalar(run_dir, name)) for name in COMPARED}


@pytest.mark.slow
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
    assert saved["progress"]["collected_frames"] in (300, 600, 900)  # killed before the end

    resumed = subprocess.run(script(*RUN, "checkpoint.resume=auto", f"hydra.run.dir={killed_dir}"),
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected, found = curves(tmp_path / "a"), curves(killed_dir)
    assert found == expected  # bit-exact on CPU
    assert max(expected["train/loss_critic"]) == 1000


@pytest.mark.slow
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


# A process saving checkpoints in a loop: the replay buffer of about 60 MB and, in the checkpoint file
# itself, 20 MB of "weights" as a run's networks and optimizer state would be, so that each phase of a
# save lasts long enough to be caught.
WEIGHTS = 5_000_000
SAVE_FOREVER = f"""
import sys
from pathlib import Path
sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / "tests")!r}]
import torch
from conftest import filled_buffer
from contrastive_rl.checkpoint import save_checkpoint
buffer, step = filled_buffer(), 0
weights = torch.randn({WEIGHTS}, generator=torch.Generator().manual_seed(1))
while True:
    step += 1
    save_checkpoint(Path(sys.argv[1]), {{"step": step, "weights": weights}}, buffer)
    print(step, flush=True)
"""
TEMPORARY_FILE = Path(CHECKPOINT_FILE).with_suffix(".tmp").name  # what save_checkpoint renames


def dump_complete(buffer_dir: Path) -> bool:
    """TorchRL's buffer dump writes buffer_metadata.json after the storage, sampler and writer."""
    return (buffer_dir / "buffer_metadata.json").exists()


def storage_files(buffer_dir: Path) -> int:
    """Files the dump has started so far under its storage/ (memory-mapped entries, metadata)."""
    return sum(len(files) for _, _, files in os.walk(buffer_dir / "storage"))


def modified_ns(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return -1


class SaveWatch:
    """The checkpoint directory of a saving process, seen from outside: the replay buffer directories
    in the order in which they appeared (each save dumps to a fresh one) and whether the temporary
    checkpoint file exists."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.first_seen: dict[str, int] = {}
        self.looks = 0

    def look(self) -> tuple[list[Path], bool]:
        self.looks += 1
        names = os.listdir(self.directory)
        buffers = [name for name in names if name.startswith(REPLAY_BUFFER_PREFIX)]
        for name in buffers:
            self.first_seen.setdefault(name, self.looks)
        buffers.sort(key=self.first_seen.__getitem__)
        return [self.directory / name for name in buffers], TEMPORARY_FILE in names


@dataclass
class SavePhase:
    """Where a save stands, read from the disk while the saver is stopped or dead: the buffer
    directory that checkpoint.pt names, those that appeared before it (an older dump not yet removed)
    and after it (the dump of the save under way), and whether checkpoint.tmp exists."""

    state: dict
    named: Path
    older: list[Path]
    newer: list[Path]
    temporary: bool

    @classmethod
    def read(cls, watch: SaveWatch) -> "SavePhase | None":
        """None when the order in which two buffer directories appeared is unknown."""
        state = torch.load(watch.directory / CHECKPOINT_FILE, weights_only=False)
        buffers, temporary = watch.look()
        seen = [watch.first_seen[path.name] for path in buffers]
        if len(set(seen)) < len(seen):
            return None
        names = [path.name for path in buffers]
        assert state["replay_buffer_dir"] in names, f"checkpoint.pt names a missing {state['replay_buffer_dir']}"
        index = names.index(state["replay_buffer_dir"])
        return cls(state, buffers[index], buffers[:index], buffers[index + 1:], temporary)

    def dumping(self) -> bool:
        """The save under way is dumping the buffer to its own directory, not finished yet."""
        return not self.older and len(self.newer) == 1 and not dump_complete(self.newer[0]) and not self.temporary


# Each moment of a save to kill it in: a cheap test on the directory listing that the watcher polls, and
# the exact test on where the save stands, made once the saver is stopped (and again once it is dead).
MOMENTS = {
    "buffer-dump-started": (
        lambda buffers, temporary: len(buffers) >= 2 and not dump_complete(buffers[-1]),
        SavePhase.dumping,
    ),
    "buffer-dump-writing-its-first-file": (
        lambda buffers, temporary: len(buffers) >= 2 and not dump_complete(buffers[-1])
        and storage_files(buffers[-1]) >= 1,
        lambda phase: phase.dumping() and storage_files(phase.newer[0]) >= 1,
    ),
    "buffer-dump-with-5-files-written": (
        lambda buffers, temporary: len(buffers) >= 2 and not dump_complete(buffers[-1])
        and storage_files(buffers[-1]) >= 5,
        lambda phase: phase.dumping() and storage_files(phase.newer[0]) >= 5,
    ),
    "checkpoint-tmp-being-written": (
        lambda buffers, temporary: temporary,
        lambda phase: phase.temporary and not phase.older and len(phase.newer) == 1 and dump_complete(phase.newer[0]),
    ),
    "older-buffer-being-removed": (
        lambda buffers, temporary: len(buffers) >= 2 and not temporary and dump_complete(buffers[-1])
        and modified_ns(buffers[-1].parent / CHECKPOINT_FILE) >= modified_ns(buffers[-1] / "buffer_metadata.json"),
        lambda phase: len(phase.older) == 1 and not phase.newer and not phase.temporary,
    ),
}


def stop(process: subprocess.Popen) -> None:
    """SIGSTOP, and return once the process is stopped: nothing it does changes the disk after that."""
    process.send_signal(signal.SIGSTOP)
    _, status = os.waitpid(process.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), f"the saving process ended (wait status {status})"


@pytest.fixture(scope="module")
def expected_buffer():
    return filled_buffer()


@pytest.mark.parametrize("moment", MOMENTS)
def test_a_kill_during_a_save_leaves_the_last_complete_checkpoint(tmp_path, expected_buffer, moment):
    """SIGKILL the saving process at a given moment of a save, proven by what the save itself has left
    on disk at the kill, and reload: the last complete checkpoint and the buffer it names are whole."""
    polled, reached = MOMENTS[moment]
    directory = tmp_path / "run"
    directory.mkdir()
    log = tmp_path / "saver.log"
    with open(log, "w") as output:
        saver = subprocess.Popen([sys.executable, "-c", SAVE_FOREVER, str(directory / CHECKPOINT_FILE)],
                                 stdout=output, stderr=subprocess.STDOUT)
    try:
        watch = SaveWatch(directory)
        deadline = time.monotonic() + 60
        while not (directory / CHECKPOINT_FILE).exists():  # one complete checkpoint
            assert saver.poll() is None, f"the saving process died: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "no first checkpoint"
            time.sleep(0.01)
        attempts = 0
        while True:
            assert time.monotonic() < deadline, f"{attempts} stops, none at {moment}"
            assert saver.poll() is None, f"the saving process died: {log.read_text()[-3000:]}"
            if not polled(*watch.look()):
                continue
            stop(saver)
            attempts += 1
            phase = SavePhase.read(watch)
            if phase is not None and reached(phase):
                break
            saver.send_signal(signal.SIGCONT)  # the save went past the moment: catch the next one
        saver.send_signal(signal.SIGKILL)
        saver.wait()
    finally:
        if saver.poll() is None:
            saver.kill()
            saver.wait()

    # The kill happened inside a save, at the moment chosen: the save left a second buffer directory
    # beside the one that checkpoint.pt names (its own dump, or the older dump it had yet to remove).
    phase = SavePhase.read(watch)
    assert phase is not None and reached(phase), phase
    assert len(phase.older) + len(phase.newer) == 1, phase
    state = torch.load(directory / CHECKPOINT_FILE, weights_only=False)
    assert state["step"] >= 1
    assert torch.equal(state["weights"], torch.randn(WEIGHTS, generator=torch.Generator().manual_seed(1)))
    assert (directory / state["replay_buffer_dir"]).is_dir() and dump_complete(directory / state["replay_buffer_dir"])
    restored = filled_buffer()
    restored.empty()
    load_replay_buffer(restored, directory / CHECKPOINT_FILE, state)
    assert len(restored) == len(expected_buffer)
    assert restored.sampler.newest_time == expected_buffer.sampler.newest_time
    assert (restored.storage[:] == expected_buffer.storage[:]).all()


@pytest.mark.parametrize("override,pattern", [
    ("checkpoint.interval=-1", "checkpoint.interval=-1 is not allowed"),
])
def test_bad_checkpoint_config_is_named(make_cfg, override, pattern):
    from contrastive_rl.config import ConfigError

    with pytest.raises(ConfigError, match=pattern):
        check_config(make_cfg(override))
