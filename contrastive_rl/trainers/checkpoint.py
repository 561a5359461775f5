"""Checkpoints whose cost follows the data, that a kill or a full disk cannot corrupt, and the
resumption of a run from one, bit-exact on CPU."""
from __future__ import annotations

import errno
import io
import json
import logging
import math
import os
import shutil
import uuid
from pathlib import Path

import torch
from tensordict import TensorDict
from hydra.utils import to_absolute_path
from torchrl.collectors import Collector

from contrastive_rl.errors import ConfigError
from contrastive_rl.trainers.config import flat_items
from contrastive_rl.envs.goal_envs import TRAIN_SEED_STREAM, stream_seed

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
SEGMENT_PREFIX = "replay_segment_"
LINK_FILE = "checkpoint.1.link"  # the latest's second name, renamed to its predecessor's
# Config entries that may change between a run and its resumption.
RESUMABLE_KEYS = ("checkpoint.", "collector.total_frames", "logger.backend", "logger.mode", "device", "compile.",
                  "precision.tf32")


def flat_config(cfg) -> dict:
    """The resolved config as ``{"group.key": value}``, without the entries a resumption may change."""
    return without_resumable(flat_items(cfg))


def without_resumable(flat: dict) -> dict:
    return {key: value for key, value in flat.items() if not key.startswith(RESUMABLE_KEYS)}


def checkpoint_files(directory: Path, keep: int) -> list[Path]:
    """The names of a run directory's checkpoints, newest first: ``checkpoint.pt``, then its
    predecessors ``checkpoint.1.pt`` ... ``checkpoint.{keep-1}.pt``."""
    return [directory / CHECKPOINT_FILE] + [directory / f"checkpoint.{index}.pt" for index in range(1, keep)]


def find_checkpoint(cfg) -> list[Path]:
    """The checkpoints to resume from, newest first: none, the run directory's own (``auto``), or a
    given run's."""
    resume = cfg.checkpoint.resume
    if not resume:
        return []
    directory = Path.cwd() if resume == "auto" else Path(to_absolute_path(resume))
    found = [path for path in checkpoint_files(directory, cfg.checkpoint.keep) if path.is_file()]
    if not found and resume != "auto":
        raise ConfigError(f"checkpoint.resume={resume!r} is not allowed: {directory / CHECKPOINT_FILE} does not exist")
    return found


def read_checkpoint(cfg, candidates: list[Path]) -> tuple[dict, Path]:
    """The newest of ``candidates`` that can be read, and its path. The unreadable ones before it are kept
    beside it as ``<name>.unreadable`` and the chain renamed so that the one read is ``checkpoint.pt``:
    the run's next save then keeps it as its predecessor."""
    reasons = []
    for path in candidates:
        try:
            state = torch.load(path, weights_only=False)
        except Exception as error:  # torch.load raises many types on a damaged file
            reason = str(error).split(". ")[0].splitlines()[0] if str(error) else type(error).__name__
            reasons.append(f"{path.name}: {reason}")
            continue
        if reasons:
            log.warning("%s cannot be read (%s): resuming from %s, the unreadable kept with the suffix .unreadable",
                        candidates[0], "; ".join(reasons), path.name)
            index = candidates.index(path)
            for unreadable in candidates[:index]:
                os.replace(unreadable, unreadable.with_name(unreadable.name + ".unreadable"))
            for target, source in zip(checkpoint_files(path.parent, len(candidates)), candidates[index:]):
                os.replace(source, target)
            path = path.parent / CHECKPOINT_FILE
        return state, path
    raise ConfigError(f"checkpoint.resume={cfg.checkpoint.resume!r} is not allowed: no checkpoint of "
                      f"{candidates[0].parent} can be read ({'; '.join(reasons)})")


def load_checkpoint(cfg, candidates: list[Path], offline_data=None) -> dict:
    """Read the newest readable checkpoint of ``candidates`` and check that it was written by a run of
    the same configuration and, for an offline run, of a dataset of the same size (``offline_data``,
    loaded again)."""
    state, path = read_checkpoint(cfg, candidates)
    # Checkpoints of earlier versions saved entries that later became resumable: left out on both sides.
    saved, current = without_resumable(state["config"]), flat_config(cfg)
    differing = sorted(key for key in saved.keys() | current.keys() if saved.get(key) != current.get(key))
    if differing:
        raise ConfigError(
            f"checkpoint.resume={cfg.checkpoint.resume!r} is not allowed: {path} belongs to another "
            f"configuration (it differs in {', '.join(differing)})"
        )
    if "progress" not in state or "segments" not in state.get("replay_buffer", {}):
        raise ConfigError(
            f"checkpoint.resume={cfg.checkpoint.resume!r} is not allowed: {path} was written by an older "
            "version of this example, whose checkpoints do not resume"
        )
    dataset_rows = len(offline_data) // cfg.collector.num_envs if offline_data is not None else 0
    if state["replay_buffer"]["dataset_rows"] != dataset_rows:
        raise ConfigError(
            f"checkpoint.resume={cfg.checkpoint.resume!r} is not allowed: offline.dataset={cfg.offline.dataset!r} "
            f"now gives {dataset_rows} time slots per env, {state['replay_buffer']['dataset_rows']} when {path} "
            "was written"
        )
    return state


class CheckpointError(RuntimeError):
    """A checkpoint could not be written (the disk is full); the previous one is intact."""


BLOCK = 4096  # files take whole blocks of the disk
SEGMENT_LAYOUT = "layout.json"  # written last: a segment without it is incomplete


def _megabytes(size: int) -> str:
    return f"{size / 2**20:.1f} MB"


def _on_disk(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def write_file(path: Path, data) -> None:
    """Plain writes, not memory maps: a full disk then fails as an OSError that a save can handle,
    where a write into a memory-mapped file is killed by SIGBUS."""
    with open(path, "wb") as file:
        file.write(data)


def _raw_bytes(tensor: torch.Tensor) -> memoryview:
    return memoryview(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())


def write_segment(directory: Path, rows: TensorDict) -> None:
    """One file of raw bytes per entry of ``rows``, then the layout that names them."""
    directory.mkdir()
    layout = []
    for index, (key, tensor) in enumerate(rows.items(include_nested=True, leaves_only=True)):
        write_file(directory / f"{index}.bin", _raw_bytes(tensor))
        layout.append({"key": list(key) if isinstance(key, tuple) else [key],
                       "dtype": str(tensor.dtype).removeprefix("torch."), "shape": list(tensor.shape)})
    layout = {"batch_size": list(rows.batch_size), "entries": layout}
    write_file(directory / SEGMENT_LAYOUT, json.dumps(layout).encode())


def read_segment(directory: Path) -> TensorDict:
    layout = json.loads((directory / SEGMENT_LAYOUT).read_text())
    rows = TensorDict({}, batch_size=layout["batch_size"])
    for index, entry in enumerate(layout["entries"]):
        dtype = getattr(torch, entry["dtype"])
        size = math.prod(entry["shape"])
        data = torch.from_file(str(directory / f"{index}.bin"), shared=False, size=size, dtype=dtype)
        rows.set(tuple(entry["key"]), data.reshape(entry["shape"]))
    return rows


class Checkpointer:
    """Writes a run's checkpoints into its directory and refills the replay buffer from them.

    ``checkpoint.pt`` holds the networks, the optimizer, the run's progress and the list of the replay
    buffer's segments. A segment (a directory with one raw file per entry) holds what the buffer
    received between two checkpoints, so each checkpoint writes the transitions added since the previous
    one and never the buffer's empty capacity; a segment is deleted once later writes have overwritten
    all of its slots. Rows loaded from an offline dataset are not saved: a resumed run loads the dataset
    again. The ``keep - 1`` checkpoints before the latest stay as ``checkpoint.1.pt`` ... (newest first)
    with the segments they name, for a resumption when the latest cannot be read. Writes are ordered so
    that a kill at any moment leaves the last complete checkpoint: the new segment first, then the
    predecessors shifted (the latest by a hard link), then ``checkpoint.pt`` replaced by a rename, then
    the segments no kept checkpoint names.
    """

    def __init__(self, run_dir: Path, replay_buffer, checkpoint: dict | None = None, keep: int = 2) -> None:
        self.directory = run_dir
        self.path = run_dir / CHECKPOINT_FILE
        self.replay_buffer = replay_buffer
        self.keep = keep
        if checkpoint is None:
            self.dataset_rows = replay_buffer.write_count
            self.saved_rows = self.dataset_rows
            self.segments: list[dict] = []
            self.previous_segments: list[list[dict]] = []
        else:
            self.dataset_rows = checkpoint["replay_buffer"]["dataset_rows"]
            self.saved_rows = checkpoint["replay_buffer"]["saved_rows"]
            self.segments = list(checkpoint["replay_buffer"]["segments"])
            self.previous_segments = list(checkpoint["replay_buffer"].get("previous_segments", []))

    def restore_replay_buffer(self) -> None:
        """Write the checkpoint's segments, oldest first, into the buffer (which holds the offline
        dataset first, if any)."""
        for segment in self.segments:
            rows = read_segment(self.directory / segment["directory"])
            self.replay_buffer.write_from(segment["start"], rows.transpose(0, 1).to(self.replay_buffer.storage.device))

    def save(self, state: dict) -> None:
        """Write a checkpoint of ``state`` and of the buffer's rows added since the last one; raise
        CheckpointError, with nothing of this save left behind, if the disk has no room for it."""
        written = self.replay_buffer.write_count
        segments = list(self.segments)
        new_rows = None
        if written > self.saved_rows:
            new_rows = self.replay_buffer.written_since(self.saved_rows).transpose(0, 1)  # [time, env]: contiguous
            start = written - new_rows.shape[0]
            segments.append({"directory": f"{SEGMENT_PREFIX}{uuid.uuid4().hex[:12]}", "start": start, "end": written})
        capacity = self.replay_buffer.time_capacity
        segments = [segment for segment in segments if segment["end"] + capacity > written]
        previous_segments = [self.segments, *self.previous_segments][: self.keep - 1] if self.path.is_file() else []
        serialized = io.BytesIO()
        torch.save({**state, "replay_buffer": {
            "dataset_rows": self.dataset_rows, "saved_rows": written, "segments": segments,
            "previous_segments": previous_segments,
        }}, serialized)
        needed = _on_disk(serialized.getbuffer().nbytes)
        if new_rows is not None:
            needed += BLOCK + sum(_on_disk(tensor.numel() * tensor.element_size())
                                  for tensor in new_rows.values(include_nested=True, leaves_only=True))
        free = shutil.disk_usage(self.directory).free
        if free < needed:
            raise CheckpointError(self._no_room(needed, free))
        temporary = self.path.with_suffix(".tmp")
        try:
            if new_rows is not None:
                write_segment(self.directory / segments[-1]["directory"], new_rows)
            write_file(temporary, serialized.getbuffer())
            self._shift_predecessors()
            os.replace(temporary, self.path)
        except OSError as error:
            if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            temporary.unlink(missing_ok=True)
            self.path.with_name(LINK_FILE).unlink(missing_ok=True)
            if new_rows is not None:
                shutil.rmtree(self.directory / segments[-1]["directory"], ignore_errors=True)
            raise CheckpointError(self._no_room(needed, shutil.disk_usage(self.directory).free)) from None
        self.segments, self.previous_segments, self.saved_rows = segments, previous_segments, written
        live = {segment["directory"] for kept in (segments, *previous_segments) for segment in kept}
        for old in self.directory.glob(f"{SEGMENT_PREFIX}*"):
            if old.name not in live:
                shutil.rmtree(old)

    def _shift_predecessors(self) -> None:
        """``checkpoint.{k-1}.pt`` becomes ``checkpoint.{k}.pt``, oldest first; the latest is linked, not
        moved, so that ``checkpoint.pt`` exists at every moment."""
        names = checkpoint_files(self.directory, self.keep)
        for index in range(len(names) - 1, 0, -1):
            source = names[index - 1]
            if not source.is_file():
                continue
            if index == 1:
                link = self.directory / LINK_FILE
                link.unlink(missing_ok=True)
                os.link(source, link)
                source = link
            os.replace(source, names[index])

    def _no_room(self, needed: int, free: int) -> str:
        previous = "the previous checkpoint is intact" if self.path.is_file() else "no earlier checkpoint exists"
        return (
            f"checkpoint not written: {self.directory} has {_megabytes(free)} free and the checkpoint needs "
            f"about {_megabytes(needed)}; {previous}"
        )


def restart_episodes(cfg, collector: Collector, collected_frames: int) -> None:
    """Reseed and reset the training envs: what they do next depends on the seed and the frame count
    alone, so a run resumed from a checkpoint taken here continues exactly as the original."""
    collector.set_seed(stream_seed(cfg.env.seed, TRAIN_SEED_STREAM, collected_frames))
    collector.reset()
