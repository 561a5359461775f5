"""Checkpoints: a run killed mid-way and resumed equals the run that was never interrupted; a kill
inside a save leaves the last complete checkpoint and the replay buffer segments it names whole; a full
disk fails a save with one message, leaves nothing of it, and keeps the previous checkpoint; a checkpoint
keeps its predecessors, an unreadable one falls back to them; a signal writes a checkpoint and names the
command that resumes; a finished run run again says so."""
import errno
import gc
import hashlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from conftest import ROOT, TINY_OVERRIDES, check_config, filled_buffer, read_scalar, script
from contrastive_rl.trainers import checkpoint as checkpoint_module
from contrastive_rl.trainers.checkpoint import (
    CHECKPOINT_FILE,
    SEGMENT_LAYOUT,
    SEGMENT_PREFIX,
    CheckpointError,
    Checkpointer,
)

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
    assert all(segment_complete(killed_dir / segment["directory"]) for segment in saved["replay_buffer"]["segments"])

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


def assert_same_buffer(found, expected) -> None:
    """Same rows in the same slots, same length, write cursor and newest slot of the goal sampler."""
    assert len(found) == len(expected)
    assert found.write_count == expected.write_count
    assert found.writer.state_dict() == expected.writer.state_dict()
    assert found.sampler.newest_time == expected.sampler.newest_time
    found_rows, expected_rows = found.storage[:], expected.storage[:]
    assert set(found_rows.keys(True, True)) == set(expected_rows.keys(True, True))
    assert (found_rows == expected_rows).all()


def segment_complete(segment: Path) -> bool:
    """A segment's layout.json is written after all its entries."""
    return (segment / SEGMENT_LAYOUT).exists()


def segment_files(segment: Path) -> int:
    """Files the segment's writing has started so far (its entries, then layout.json)."""
    return sum(len(files) for _, _, files in os.walk(segment))


def assert_restores(directory: Path, steps, chunk_length: int) -> dict:
    """checkpoint.pt loads, names only complete segments, and refills an empty buffer into the one
    the saver had after the chunks of ``steps``."""
    state = torch.load(directory / CHECKPOINT_FILE, weights_only=False)
    assert state["step"] == steps[-1]
    for segment in state["replay_buffer"]["segments"]:
        assert segment_complete(directory / segment["directory"]), segment
    restored = filled_buffer((), chunk_length=chunk_length)
    Checkpointer(directory, restored, state).restore_replay_buffer()
    assert_same_buffer(restored, filled_buffer(steps, chunk_length=chunk_length))
    return state


def directory_files(directory: Path) -> list[str]:
    return sorted(str(path.relative_to(directory)) for path in directory.rglob("*"))


# A process saving checkpoints in a loop, as a run does: each step adds a chunk of about 42 MB of rows to
# a buffer that holds 2.5 chunks, then saves, with 20 MB of "weights" in checkpoint.pt as a run's
# networks and optimizer would be, so that each phase of a save lasts long enough to be caught. A
# checkpoint names the segments of its last 3 steps; from step 4 on, each save removes the oldest one.
WEIGHTS = 5_000_000
LIVE_SEGMENTS = 3
SAVE_FOREVER = f"""
import sys
from pathlib import Path
sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / "tests")!r}]
import torch
from conftest import filled_buffer
from contrastive_rl.trainers.checkpoint import Checkpointer
buffer, step = filled_buffer(()), 0
checkpointer = Checkpointer(Path(sys.argv[1]), buffer, keep=1)
weights = torch.randn({WEIGHTS}, generator=torch.Generator().manual_seed(1))
while True:
    step += 1
    filled_buffer([step], buffer)
    checkpointer.save({{"step": step, "weights": weights}})
    print("saved", step, flush=True)
"""
TEMPORARY_FILE = Path(CHECKPOINT_FILE).with_suffix(".tmp").name  # what Checkpointer.save renames


class SaveWatch:
    """The checkpoint directory of a saving process, seen from outside: the segment directories in
    the order in which they appeared, and whether the temporary checkpoint file exists."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.first_seen: dict[str, int] = {}
        self.looks = 0

    def look(self) -> tuple[list[Path], bool]:
        self.looks += 1
        names = os.listdir(self.directory)
        segments = [name for name in names if name.startswith(SEGMENT_PREFIX)]
        for name in segments:
            self.first_seen.setdefault(name, self.looks)
        segments.sort(key=self.first_seen.__getitem__)
        return [self.directory / name for name in segments], TEMPORARY_FILE in names


@dataclass
class SavePhase:
    """Where a save stands, read from the disk while the saver is stopped or dead: the segments that
    checkpoint.pt names, the segment directories it does not name that appeared after all of them (the
    segment of the save under way) or before one of them (segments the last rename made dead, not yet
    removed), and whether checkpoint.tmp exists."""

    state: dict
    listed: list[Path]
    new: list[Path]
    dead: list[Path]
    temporary: bool

    @classmethod
    def read(cls, watch: SaveWatch) -> "SavePhase | None":
        """None when the order in which two segment directories appeared is unknown."""
        state = torch.load(watch.directory / CHECKPOINT_FILE, weights_only=False, mmap=True)
        segments, temporary = watch.look()
        names = [segment["directory"] for segment in state["replay_buffer"]["segments"]]
        present = [path.name for path in segments]
        assert all(name in present for name in names), f"checkpoint.pt names missing segments: {names} {present}"
        newest_listed = max(watch.first_seen[name] for name in names)
        unlisted = [path for path in segments if path.name not in names]
        if any(watch.first_seen[path.name] == newest_listed for path in unlisted):
            return None
        return cls(
            state,
            [path for path in segments if path.name in names],
            [path for path in unlisted if watch.first_seen[path.name] > newest_listed],
            [path for path in unlisted if watch.first_seen[path.name] < newest_listed],
            temporary,
        )

    def writing_segment(self) -> bool:
        """The save under way is writing its segment, checkpoint.pt still names the older ones."""
        return len(self.new) == 1 and not segment_complete(self.new[0]) and not self.dead and not self.temporary


# Each moment of a save to kill it in: a cheap test on the directory listing that the watcher polls, and
# the exact test on where the save stands, made once the saver is stopped (and again once it is dead).
# A segment's first file is its observations (20 MB), its fourth the next observations (20 MB).
MOMENTS = {
    "segment-writing-its-first-file": (
        lambda segments, temporary: bool(segments) and not temporary and not segment_complete(segments[-1])
        and segment_files(segments[-1]) == 1,
        lambda phase: phase.writing_segment() and segment_files(phase.new[0]) == 1,
    ),
    "segment-with-4-files-started": (
        lambda segments, temporary: bool(segments) and not temporary and not segment_complete(segments[-1])
        and segment_files(segments[-1]) >= 4,
        lambda phase: phase.writing_segment() and segment_files(phase.new[0]) >= 4,
    ),
    "checkpoint-tmp-being-written": (
        lambda segments, temporary: temporary,
        lambda phase: phase.temporary and len(phase.new) == 1 and segment_complete(phase.new[0]) and not phase.dead,
    ),
    "dead-segment-being-removed": (
        lambda segments, temporary: len(segments) > LIVE_SEGMENTS and not temporary and segment_complete(segments[-1]),
        lambda phase: len(phase.dead) == 1 and not phase.new and not phase.temporary,
    ),
}


def stop(process: subprocess.Popen) -> None:
    """SIGSTOP, and return once the process is stopped: nothing it does changes the disk after that."""
    process.send_signal(signal.SIGSTOP)
    _, status = os.waitpid(process.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), f"the saving process ended (wait status {status})"


@pytest.mark.parametrize("moment", MOMENTS)
def test_a_kill_during_a_save_leaves_the_last_complete_checkpoint(tmp_path, moment):
    """SIGKILL the saving process at a given moment of a save, proven by what the save itself has left
    on disk at the kill, and reload: the last complete checkpoint names only whole segments, and they
    refill an empty buffer into exactly the saver's buffer at that checkpoint's step."""
    polled, reached = MOMENTS[moment]
    directory = tmp_path / "run"
    directory.mkdir()
    log, saved = tmp_path / "saver.log", tmp_path / "saved_steps"
    with open(saved, "w") as output, open(log, "w") as errors:
        saver = subprocess.Popen([sys.executable, "-c", SAVE_FOREVER, str(directory)], stdout=output, stderr=errors)
    try:
        watch = SaveWatch(directory)
        deadline = time.monotonic() + 60
        while not (directory / CHECKPOINT_FILE).exists():  # one complete checkpoint
            assert saver.poll() is None, f"the saving process died: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "no first checkpoint"
            watch.look()
            time.sleep(0.005)
        attempts = 0
        while True:
            assert time.monotonic() < deadline, f"{attempts} stops, none at {moment}"
            assert saver.poll() is None, f"the saving process died: {log.read_text()[-3000:]}"
            if not polled(*watch.look()) or len(watch.first_seen) <= LIVE_SEGMENTS:
                continue
            stop(saver)
            attempts += 1
            phase = SavePhase.read(watch)
            if phase is not None and phase.state["step"] >= LIVE_SEGMENTS and reached(phase):
                break
            saver.send_signal(signal.SIGCONT)  # the save went past the moment: catch the next one
        saver.send_signal(signal.SIGKILL)
        saver.wait()
    finally:
        if saver.poll() is None:
            saver.kill()
            saver.wait()

    # The kill happened inside a save, at the moment chosen: beside the segments that checkpoint.pt
    # names lies the segment of the save under way, or the dead segment it had yet to remove.
    phase = SavePhase.read(watch)
    assert phase is not None and phase.state["step"] >= LIVE_SEGMENTS and reached(phase), phase
    assert len(phase.new) + len(phase.dead) == 1, phase
    step = phase.state["step"]
    # The saver prints each step once saved (torchrl logs on the same stdout).
    saved_steps = [int(line.split()[1]) for line in saved.read_text().splitlines() if line.startswith("saved ")]
    # The killed save is that of the step after the last one printed; it had renamed its checkpoint
    # only if it was removing the segments this made dead.
    assert step == saved_steps[-1] + (1 if phase.dead else 0), (step, saved_steps[-3:])
    state = assert_restores(directory, range(1, step + 1), chunk_length=10_000)
    assert torch.equal(state["weights"], torch.randn(WEIGHTS, generator=torch.Generator().manual_seed(1)))
    assert len(state["replay_buffer"]["segments"]) == min(step, LIVE_SEGMENTS)

    # The run resumes from it: its next save removes what the killed one left, and restores in turn.
    resumed = filled_buffer(())
    checkpointer = Checkpointer(directory, resumed, state, keep=1)
    checkpointer.restore_replay_buffer()
    filled_buffer([step + 1], resumed)
    checkpointer.save({"step": step + 1})
    state = assert_restores(directory, range(1, step + 2), chunk_length=10_000)
    live = [segment["directory"] for segment in state["replay_buffer"]["segments"]]
    assert sorted(os.listdir(directory)) == sorted([CHECKPOINT_FILE, *live])
    shutil.rmtree(directory)  # 200 MB, which pytest would keep with its last three runs' tmp_path


# ====================================================================
# A full disk
# -----------

SMALL = 100  # time slots per env of the chunks of the in-process saves: 0.4 MB a chunk
SMALL_WEIGHTS = 1_000_000  # 4 MB


def small_state(step: int) -> dict:
    return {"step": step, "weights": torch.full((SMALL_WEIGHTS,), float(step))}


def no_room(directory: Path, previous: bool = True) -> str:
    """The pattern of CheckpointError's message."""
    outcome = "the previous checkpoint is intact" if previous else "no earlier checkpoint exists"
    return (rf"checkpoint not written: {re.escape(str(directory))} has (\d+\.\d) MB free and the checkpoint "
            rf"needs about (\d+\.\d) MB; {outcome}")


def enospc(code: int = errno.ENOSPC) -> OSError:
    return OSError(code, os.strerror(code))


def fail_a_write(is_target, number: int = 0, code: int = errno.ENOSPC):
    """The ``number``-th file write of a save that ``is_target`` picks (0: the first) writes part of its
    bytes, then the disk is full (or the quota exceeded)."""

    def inject(patch):
        calls = []

        def write_file(path, data):
            if is_target(Path(path)):
                calls.append(path)
                if len(calls) > number:
                    Path(path).write_bytes(bytes(memoryview(data)[:1000]))
                    raise OSError(code, os.strerror(code), str(path))
            original(path, data)

        original = checkpoint_module.write_file
        patch.setattr(checkpoint_module, "write_file", write_file)

    return inject


def in_a_segment(path: Path) -> bool:
    return path.parent.name.startswith(SEGMENT_PREFIX) and path.name != SEGMENT_LAYOUT


def is_segment_layout(path: Path) -> bool:
    return path.parent.name.startswith(SEGMENT_PREFIX) and path.name == SEGMENT_LAYOUT


def is_checkpoint_file(path: Path) -> bool:
    return path.name == TEMPORARY_FILE


def fail_the_rename(patch):
    def replace(source, destination):
        raise enospc()

    patch.setattr(os, "replace", replace)


def report_no_room(patch):
    """The disk has 1 MB free: the save does not start."""
    patch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(2**30, 2**30 - 2**20, 2**20))


FAILURES = {
    "no-room-before-writing": report_no_room,
    "segment-first-file": fail_a_write(in_a_segment, 0),
    "segment-third-file": fail_a_write(in_a_segment, 2),
    "segment-layout": fail_a_write(is_segment_layout),
    "checkpoint-file": fail_a_write(is_checkpoint_file),
    "checkpoint-file-quota": fail_a_write(is_checkpoint_file, code=errno.EDQUOT),
    "rename": fail_the_rename,
}


@pytest.mark.parametrize("failure", FAILURES)
def test_a_full_disk_fails_the_save_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, failure):
    """A save that finds the disk full raises CheckpointError, removes all it wrote and nothing else,
    and leaves the previous checkpoint as it was; once the disk has room again, the next save writes
    what the failed one did not."""
    buffer = filled_buffer((), chunk_length=SMALL)
    checkpointer = Checkpointer(tmp_path, buffer, keep=1)
    for step in (1, 2, 3):
        filled_buffer([step], buffer, chunk_length=SMALL)
        checkpointer.save(small_state(step))
    before, checkpoint_bytes = directory_files(tmp_path), (tmp_path / CHECKPOINT_FILE).read_bytes()

    filled_buffer([4], buffer, chunk_length=SMALL)  # the save would make the segment of step 1 dead
    with monkeypatch.context() as patch:
        FAILURES[failure](patch)
        with pytest.raises(CheckpointError) as error:
            checkpointer.save(small_state(4))
    found = re.fullmatch(no_room(tmp_path), str(error.value))
    assert found, str(error.value)
    # It needs about the new weights and the new chunk.
    assert float(found[2]) == pytest.approx((SMALL_WEIGHTS * 4 + buffer.written_since(3 * SMALL).bytes())
                                            / 2**20, abs=0.15)
    if failure == "no-room-before-writing":
        assert found[1] == "1.0"
    assert directory_files(tmp_path) == before
    assert (tmp_path / CHECKPOINT_FILE).read_bytes() == checkpoint_bytes
    assert_restores(tmp_path, range(1, 4), chunk_length=SMALL)

    filled_buffer([5], buffer, chunk_length=SMALL)
    checkpointer.save(small_state(5))
    state = assert_restores(tmp_path, range(1, 6), chunk_length=SMALL)
    assert torch.equal(state["weights"], small_state(5)["weights"])
    live = [segment["directory"] for segment in state["replay_buffer"]["segments"]]
    assert sorted(os.listdir(tmp_path)) == sorted([CHECKPOINT_FILE, *live])


@pytest.mark.parametrize("failure", ["no-room-before-writing", "segment-third-file", "checkpoint-file"])
def test_a_full_disk_at_the_first_save_leaves_nothing(tmp_path, monkeypatch, failure):
    buffer = filled_buffer((), chunk_length=SMALL)
    checkpointer = Checkpointer(tmp_path, buffer, keep=1)
    filled_buffer([1], buffer, chunk_length=SMALL)
    with monkeypatch.context() as patch:
        FAILURES[failure](patch)
        with pytest.raises(CheckpointError, match=no_room(tmp_path, previous=False)):
            checkpointer.save(small_state(1))
    assert os.listdir(tmp_path) == []
    filled_buffer([2], buffer, chunk_length=SMALL)
    checkpointer.save(small_state(2))
    assert_restores(tmp_path, [1, 2], chunk_length=SMALL)


class Tmpfs:
    """A tmpfs of a given size mounted on a directory (root only), unmounted by the fixture."""

    def __init__(self, path: Path):
        self.path = path
        self.mounted = False

    def mount(self, size: str) -> None:
        self.path.mkdir(exist_ok=True)
        try:
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(self.path)],
                                  capture_output=True, text=True)
        except FileNotFoundError:
            pytest.skip("cannot mount a tmpfs to fill: no mount command")
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs to fill (mount: {(done.stderr or done.stdout).strip()})")
        self.mounted = True

    def resize(self, size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True)

    def unmount(self) -> None:
        if self.mounted:
            gc.collect()  # memory maps of restored segments
            if subprocess.run(["umount", str(self.path)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "--lazy", str(self.path)], check=True)
            self.mounted = False


@pytest.fixture
def tmpfs(tmp_path):
    disk = Tmpfs(tmp_path / "tmpfs")
    try:
        yield disk
    finally:
        disk.unmount()


# Two saves into a small disk, the second with the check of the free space fooled into finding room: its
# writes meet the full disk. In a process of its own, which a signal may kill.
SAVE_ON_A_FULL_DISK = f"""
import hashlib, shutil, sys
from pathlib import Path
sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / "tests")!r}]
import torch
from conftest import filled_buffer
from contrastive_rl.trainers.checkpoint import Checkpointer, CheckpointError
directory, chunk_length, weights = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
buffer = filled_buffer((), chunk_length=chunk_length)
checkpointer = Checkpointer(directory, buffer, keep=1)
filled_buffer([1], buffer, chunk_length=chunk_length)
checkpointer.save({{"step": 1, "weights": torch.zeros(weights)}})
print(hashlib.sha256((directory / "checkpoint.pt").read_bytes()).hexdigest(), flush=True)
filled_buffer([2], buffer, chunk_length=chunk_length)
shutil.disk_usage = lambda path: shutil._ntuple_diskusage(2**34, 0, 2**34)
try:
    checkpointer.save({{"step": 2, "weights": torch.zeros(weights)}})
except CheckpointError as error:
    print(error)
    sys.exit(3)
"""


@pytest.mark.parametrize("what,chunk_length,weights", [
    ("segment", 1000, 250_000),                 # 1 MB of weights fit, then 4.2 MB of rows do not
    ("checkpoint-file", SMALL, SMALL_WEIGHTS),  # 0.4 MB of rows fit, then 4 MB of weights do not
])
def test_a_disk_that_fills_while_saving_fails_the_save(tmpfs, what, chunk_length, weights):
    """A really full disk, met by the writes themselves (the disk filled after the check of the free
    space): as with the errors injected above, CheckpointError, nothing of the failed save left and the
    previous checkpoint intact; with room again, the next save goes through."""
    tmpfs.mount("8m")
    directory = tmpfs.path
    saver = subprocess.run([sys.executable, "-c", SAVE_ON_A_FULL_DISK, str(directory), str(chunk_length), str(weights)],
                           capture_output=True, text=True)
    outcome = (f"killed by {signal.Signals(-saver.returncode).name}" if saver.returncode < 0
               else f"exit code {saver.returncode}")
    assert saver.returncode == 3, f"{outcome}, not CheckpointError: {saver.stderr[-3000:]}"
    digest, message = saver.stdout.splitlines()[-2:]
    assert re.fullmatch(no_room(directory), message), message
    state = assert_restores(directory, [1], chunk_length=chunk_length)
    assert hashlib.sha256((directory / CHECKPOINT_FILE).read_bytes()).hexdigest() == digest
    live = [segment["directory"] for segment in state["replay_buffer"]["segments"]]
    assert sorted(os.listdir(directory)) == sorted([CHECKPOINT_FILE, *live])

    tmpfs.resize("32m")
    buffer = filled_buffer((), chunk_length=chunk_length)
    checkpointer = Checkpointer(directory, buffer, state, keep=1)
    checkpointer.restore_replay_buffer()
    filled_buffer([2], buffer, chunk_length=chunk_length)
    checkpointer.save({"step": 2, "weights": torch.zeros(weights)})
    assert_restores(directory, [1, 2], chunk_length=chunk_length)


@pytest.mark.slow
def test_a_run_stopped_by_a_full_disk_resumes_once_there_is_room(tmpfs):
    """A run whose second checkpoint (4.4 MB beside the first) does not fit in a 6 MB disk stops with one
    line, its first checkpoint whole; given room, it resumes from it and finishes."""
    tmpfs.mount("6m")
    run_dir = tmpfs.path / "run"
    overrides = [*TINY_OVERRIDES, "model.hidden_dim=256", "optim.utd_ratio=0.01", "checkpoint.interval=200",
                 f"hydra.run.dir={run_dir}"]
    full = subprocess.run(script(*overrides), capture_output=True, text=True)
    assert full.returncode != 0 and "Traceback" not in full.stderr, full.stderr[-3000:]
    [line] = [line for line in full.stderr.splitlines() if line.startswith("error:")]
    found = re.fullmatch(no_room(run_dir), line.removeprefix("error: "))
    assert found and float(found[1]) < float(found[2]), line
    state = torch.load(run_dir / CHECKPOINT_FILE, weights_only=False)
    assert state["progress"]["collected_frames"] == 200
    live = [segment["directory"] for segment in state["replay_buffer"]["segments"]]
    assert live and all(segment_complete(run_dir / name) for name in live)
    assert sorted(name for name in os.listdir(run_dir) if name.startswith(SEGMENT_PREFIX)) == sorted(live)
    assert not (run_dir / TEMPORARY_FILE).exists()

    tmpfs.resize("32m")
    resumed = subprocess.run(script(*overrides, "checkpoint.resume=auto"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert max(frames for _, frames in read_scalar(run_dir, "train/collected_frames")) == 400
    state = torch.load(run_dir / CHECKPOINT_FILE, weights_only=False)
    assert state["progress"]["collected_frames"] == 400


@pytest.mark.parametrize("override,pattern", [
    ("checkpoint.interval=-1", "checkpoint.interval=-1 is not allowed"),
    ("checkpoint.keep=0", "checkpoint.keep=0 is not allowed"),
])
def test_bad_checkpoint_config_is_named(make_cfg, override, pattern):
    from contrastive_rl.errors import ConfigError

    with pytest.raises(ConfigError, match=pattern):
        check_config(make_cfg(override))


# ====================================================================
# Predecessors, unreadable checkpoints, signals and finished runs
# ---------------------------------------------------------------


def restores_from(directory: Path, name: str, steps, chunk_length: int) -> dict:
    """The checkpoint file ``name`` loads and refills an empty buffer into the saver's after ``steps``."""
    state = torch.load(directory / name, weights_only=False)
    assert state["step"] == steps[-1]
    restored = filled_buffer((), chunk_length=chunk_length)
    Checkpointer(directory, restored, state).restore_replay_buffer()
    assert_same_buffer(restored, filled_buffer(steps, chunk_length=chunk_length))
    return state


@pytest.mark.parametrize("keep", [2, 3])
def test_a_checkpoint_keeps_its_predecessors_and_their_segments(tmp_path, keep):
    buffer = filled_buffer((), chunk_length=SMALL)
    checkpointer = Checkpointer(tmp_path, buffer, keep=keep)
    for step in range(1, 7):
        filled_buffer([step], buffer, chunk_length=SMALL)
        checkpointer.save(small_state(step))
    names = [CHECKPOINT_FILE] + [f"checkpoint.{index}.pt" for index in range(1, keep)]
    live = set()
    for age, name in enumerate(names):
        state = restores_from(tmp_path, name, range(1, 7 - age), chunk_length=SMALL)
        live |= {segment["directory"] for segment in state["replay_buffer"]["segments"]}
    # Nothing else: the segments no kept checkpoint names are gone.
    assert sorted(os.listdir(tmp_path)) == sorted([*names, *live])


def test_an_unreadable_latest_falls_back_to_its_predecessor(tmp_path, monkeypatch, make_cfg, caplog):
    from contrastive_rl.trainers.checkpoint import find_checkpoint, read_checkpoint
    from contrastive_rl.errors import ConfigError

    buffer = filled_buffer((), chunk_length=SMALL)
    checkpointer = Checkpointer(tmp_path, buffer, keep=2)
    for step in (1, 2, 3):
        filled_buffer([step], buffer, chunk_length=SMALL)
        checkpointer.save(small_state(step))
    latest = tmp_path / CHECKPOINT_FILE
    cut_short = latest.read_bytes()[: latest.stat().st_size // 2]  # a copy cut short
    latest.write_bytes(cut_short)
    monkeypatch.chdir(tmp_path)
    cfg = make_cfg("checkpoint.resume=auto")

    with caplog.at_level("WARNING"):
        state, path = read_checkpoint(cfg, find_checkpoint(cfg))
    assert state["step"] == 2 and path == latest
    [warning] = [message for message in caplog.messages if "cannot be read" in message]
    assert warning.startswith(f"{latest} cannot be read (checkpoint.pt: ")
    assert "resuming from checkpoint.1.pt" in warning
    assert (tmp_path / "checkpoint.pt.unreadable").read_bytes() == cut_short  # kept, not overwritten
    assert not (tmp_path / "checkpoint.1.pt").exists()
    restores_from(tmp_path, CHECKPOINT_FILE, [1, 2], chunk_length=SMALL)

    # The resumed run's next save keeps the one it resumed from as its predecessor.
    resumed = filled_buffer((), chunk_length=SMALL)
    checkpointer = Checkpointer(tmp_path, resumed, state, keep=2)
    checkpointer.restore_replay_buffer()
    filled_buffer([3], resumed, chunk_length=SMALL)
    checkpointer.save(small_state(3))
    restores_from(tmp_path, CHECKPOINT_FILE, [1, 2, 3], chunk_length=SMALL)
    restores_from(tmp_path, "checkpoint.1.pt", [1, 2], chunk_length=SMALL)

    for name in (CHECKPOINT_FILE, "checkpoint.1.pt"):
        (tmp_path / name).write_bytes(b"not a checkpoint")
    unreadable = (rf"checkpoint.resume='auto' is not allowed: no checkpoint of {re.escape(str(tmp_path))} "
                  r"can be read \(checkpoint.pt: .+; checkpoint.1.pt: .+\)")
    with pytest.raises(ConfigError, match=unreadable):
        read_checkpoint(cfg, find_checkpoint(cfg))
    assert (tmp_path / CHECKPOINT_FILE).read_bytes() == b"not a checkpoint"


def output_of(result) -> str:
    return result.stdout + result.stderr


@pytest.mark.slow
def test_a_run_resumed_from_the_predecessor_of_an_unreadable_checkpoint_equals_the_uninterrupted_one(tmp_path):
    """A run whose last checkpoint was cut short resumes from the one before, with one line, and ends as
    the run never interrupted; run again once finished, it says so and exits 0."""
    run = [*RUN, "collector.total_frames=900"]
    uninterrupted = subprocess.run(script(*run, f"hydra.run.dir={tmp_path / 'a'}"), capture_output=True, text=True)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]

    run_dir = tmp_path / "b"
    first = subprocess.run(script(*RUN, "collector.total_frames=600", f"hydra.run.dir={run_dir}"),
                           capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-3000:]
    assert torch.load(run_dir / "checkpoint.1.pt", weights_only=False)["progress"]["collected_frames"] == 300
    latest = run_dir / CHECKPOINT_FILE
    latest.write_bytes(latest.read_bytes()[:5000])

    resume = script(*run, "checkpoint.resume=auto", f"hydra.run.dir={run_dir}")
    resumed = subprocess.run(resume, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Traceback" not in output_of(resumed)
    [line] = [line for line in output_of(resumed).splitlines() if "cannot be read" in line]
    assert "resuming from checkpoint.1.pt" in line
    assert curves(run_dir) == curves(tmp_path / "a")  # bit-exact on CPU
    assert (run_dir / "checkpoint.pt.unreadable").stat().st_size == 5000

    again = subprocess.run(resume, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"the run in {run_dir} is complete (" in output_of(again)
    assert "Traceback" not in output_of(again)
    assert curves(run_dir) == curves(tmp_path / "a")  # nothing trained or logged again


def start_long_run(run_dir: Path, log_file: Path, started) -> subprocess.Popen:
    """A training run of 50k env steps, its output in ``log_file``, returned once ``started()`` holds."""
    with open(log_file, "w") as output:
        process = subprocess.Popen(script(*RUN, "collector.total_frames=50_000", f"hydra.run.dir={run_dir}"),
                                   stdout=output, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while not started() and time.time() < deadline:
        assert process.poll() is None, log_file.read_text()[-3000:]
        time.sleep(0.01)
    return process


def training_started(run_dir: Path):
    return lambda: bool(list(run_dir.glob("logs/*/scalars/train/loss_critic.csv")))


@pytest.mark.slow
@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_a_signal_writes_a_checkpoint_and_names_the_command_that_resumes(tmp_path, signal_name):
    run_dir = tmp_path / "run"
    log_file = tmp_path / "output"
    process = start_long_run(run_dir, log_file, training_started(run_dir))
    process.send_signal(getattr(signal, signal_name))
    assert process.wait(timeout=120) == 128 + getattr(signal, signal_name)
    output = log_file.read_text()
    assert "Traceback" not in output, output[-3000:]
    assert f"{signal_name} received: the run stops after the update or evaluation under way" in output
    [line] = [line for line in output.splitlines() if "stopped by" in line]
    found = re.search(rf"stopped by {signal_name}: checkpoint of (\d+) gradient updates and (\d+) env steps written "
                      rf"to {re.escape(str(run_dir))}; resume with: (.+)$", line)
    assert found, line
    progress = torch.load(run_dir / CHECKPOINT_FILE, weights_only=False)["progress"]
    assert (progress["num_updates"], progress["collected_frames"]) == (int(found[1]), int(found[2]))
    assert 0 < progress["collected_frames"] < 50_000

    # The command it names resumes the run, here to 300 more env steps.
    words = [word for word in shlex.split(found[3]) if not word.startswith("collector.total_frames=")]
    assert words[:2] == ["python", str(ROOT / "stable_contrastive_rl.py")]
    end = progress["collected_frames"] + 300
    resumed = subprocess.run([sys.executable, *words[1:], f"collector.total_frames={end}"],
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert torch.load(run_dir / CHECKPOINT_FILE, weights_only=False)["progress"]["collected_frames"] == end


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["set-up", "second-ctrl-c"])
def test_a_ctrl_c_in_the_set_up_or_a_second_one_ends_the_run_in_one_line(tmp_path, moment):
    run_dir = tmp_path / "run"
    log_file = tmp_path / "output"
    in_main = lambda: (run_dir / ".hydra" / "config.yaml").exists()  # noqa: E731  (hydra writes it, then calls main)
    process = start_long_run(run_dir, log_file, in_main if moment == "set-up" else training_started(run_dir))
    process.send_signal(signal.SIGINT)
    if moment == "second-ctrl-c":
        time.sleep(0.05)
        process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 130
    output = log_file.read_text()
    assert "Traceback" not in output, output[-3000:]
    assert "stopped by SIGINT" in output
