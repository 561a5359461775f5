"""Checkpoints that a kill cannot corrupt, and the resumption of a run from one, bit-exact on CPU."""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import torch
from hydra.utils import to_absolute_path
from omegaconf import OmegaConf
from torchrl.collectors import Collector

from contrastive_rl.config import ConfigError

CHECKPOINT_FILE = "checkpoint.pt"
REPLAY_BUFFER_PREFIX = "replay_buffer_"
# Config entries that may change between a run and its resumption.
RESUMABLE_KEYS = ("checkpoint.", "collector.total_frames", "logger.backend", "logger.mode", "device")


def flat_config(cfg) -> dict:
    """The resolved config as ``{"group.key": value}``, without the entries a resumption may change."""

    def flatten(node: dict, prefix: str = "") -> dict:
        flat = {}
        for key, value in node.items():
            if isinstance(value, dict):
                flat.update(flatten(value, f"{prefix}{key}."))
            else:
                flat[f"{prefix}{key}"] = value
        return flat

    config = flatten(OmegaConf.to_container(cfg, resolve=True))
    return {key: value for key, value in config.items() if not key.startswith(RESUMABLE_KEYS)}


def find_checkpoint(cfg) -> Path | None:
    """The checkpoint to resume from: none, the run directory's own (``auto``), or a given run's."""
    resume = cfg.checkpoint.resume
    if not resume:
        return None
    if resume == "auto":
        path = Path.cwd() / CHECKPOINT_FILE
        return path if path.is_file() else None
    path = Path(to_absolute_path(resume)) / CHECKPOINT_FILE
    if not path.is_file():
        raise ConfigError(f"checkpoint.resume={resume!r} is not allowed: {path} does not exist")
    return path


def load_checkpoint(cfg, path: Path) -> dict:
    """Read a checkpoint and check that it was written by a run of the same configuration."""
    state = torch.load(path, weights_only=False)
    saved, current = state["config"], flat_config(cfg)
    differing = sorted(key for key in saved.keys() | current.keys() if saved.get(key) != current.get(key))
    if differing:
        raise ConfigError(
            f"checkpoint.resume={cfg.checkpoint.resume!r} is not allowed: {path} belongs to another "
            f"configuration (it differs in {', '.join(differing)})"
        )
    if "progress" not in state:
        raise ConfigError(
            f"checkpoint.resume={cfg.checkpoint.resume!r} is not allowed: {path} was written by an older "
            "version of this example, whose checkpoints do not resume"
        )
    return state


def save_checkpoint(path: Path, state: dict, replay_buffer) -> None:
    """Write the replay buffer (TorchRL's dump: memory-mapped files) to a fresh directory, then
    atomically replace the checkpoint file that names it, then remove the older buffer directories: a
    kill at any point leaves the last complete checkpoint and its buffer whole."""
    buffer_dir = f"{REPLAY_BUFFER_PREFIX}{uuid.uuid4().hex[:12]}"
    replay_buffer.dumps(path.parent / buffer_dir)
    temporary = path.with_suffix(".tmp")
    torch.save({**state, "replay_buffer_dir": buffer_dir}, temporary)
    os.replace(temporary, path)
    for old in path.parent.glob(f"{REPLAY_BUFFER_PREFIX}*"):
        if old.name != buffer_dir:
            shutil.rmtree(old)


def load_replay_buffer(replay_buffer, path: Path, state: dict) -> None:
    """Fill the buffer from the dump that the checkpoint at ``path`` names."""
    replay_buffer.loads(path.parent / state["replay_buffer_dir"])


def restart_episodes(cfg, collector: Collector, collected_frames: int) -> None:
    """Reseed and reset the training envs: what they do next depends on the seed and the frame count
    alone, so a run resumed from a checkpoint taken here continues exactly as the original."""
    collector.set_seed(cfg.env.seed + collected_frames)
    collector.reset()
