"""Where a run stands (what a checkpoint saves), and what the console tells of it while it runs."""
from __future__ import annotations

import dataclasses
import logging
import random
import time

import numpy as np
import torch
import tqdm

from contrastive_rl.trainers.config import trains_online

log = logging.getLogger(__name__)
PAPER_HIDDEN_DIM = 1024
REFRESH_SECONDS = 0.5
TIMED_UPDATES = 3  # updates timed before the rate is told


def offline_steps(cfg) -> int:
    """The gradient steps of the offline phase: none without a dataset."""
    return cfg.offline.gradient_steps if cfg.offline.dataset else 0


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


@dataclasses.dataclass
class RunProgress:
    """The run's counters and, in its state dict, the random state: all a resumed run needs besides
    the networks, the optimizer and the replay buffer.

    Frame counts are global (over data-parallel ranks), as the config's; ``num_updates`` counts the
    offline gradient steps first, then the online ones; checkpoints fall due by env steps online
    (``next_checkpoint``) and by gradient steps offline (``next_offline_checkpoint``);
    ``update_credit`` carries the fraction of an update that ``optim.utd_ratio`` owes the frames
    collected so far.
    """

    next_eval: int
    next_checkpoint: int
    next_offline_checkpoint: int
    collected_frames: int = 0
    num_updates: int = 0
    skipped_updates: int = 0
    update_credit: float = 0.0
    evaluations: int = 0
    _saved_rng: dict | None = dataclasses.field(default=None, repr=False)

    @classmethod
    def start(cls, cfg) -> RunProgress:
        interval = cfg.checkpoint.interval
        return cls(next_eval=cfg.logger.eval_interval, next_checkpoint=interval, next_offline_checkpoint=interval)

    def credit_updates(self, frames: int, utd_ratio: float) -> int:
        """Updates owed to ``frames`` new frames at ``utd_ratio``; the fraction left carries over."""
        self.update_credit += frames * utd_ratio
        updates = int(self.update_credit)
        self.update_credit -= updates
        return updates

    def checkpoint_due(self, count: int, interval: int, offline: bool) -> bool:
        """Whether ``count`` (gradient steps offline, env steps online) reached the next checkpoint of
        every ``interval``; moves that on when it did."""
        name = "next_offline_checkpoint" if offline else "next_checkpoint"
        if not interval or count < getattr(self, name):
            return False
        setattr(self, name, getattr(self, name) + interval)
        return True

    def is_complete(self, cfg) -> bool:
        """Whether the run of ``cfg`` has nothing left to train."""
        online_left = trains_online(cfg) and self.collected_frames < cfg.collector.total_frames
        return self.num_updates >= offline_steps(cfg) and not online_left

    def rates(self, elapsed_seconds: float) -> dict[str, float]:
        return {
            "train/updates_per_second": self.num_updates / elapsed_seconds,
            "train/num_updates": self.num_updates,
            "train/elapsed_seconds": elapsed_seconds,
        }

    def state_dict(self) -> dict:
        counters = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        counters.pop("_saved_rng")
        return {**counters, "rng": rng_state()}

    def load_state_dict(self, state: dict) -> None:
        """Take the counters now; the random state waits for ``restore_rng``."""
        state = dict(state)
        self._saved_rng = state.pop("rng")
        for name, value in state.items():
            setattr(self, name, value)

    def restore_rng(self) -> None:
        """Continue the saved random stream. Called once the envs and the collector exist, since the
        collector's construction runs the policy once and draws from the torch generator."""
        if self._saved_rng is not None:
            set_rng_state(self._saved_rng)
            self._saved_rng = None


def planned_updates(cfg) -> int:
    """Gradient updates the whole run makes: the offline steps, then ``optim.utd_ratio`` per frame
    collected after ``collector.init_random_frames``, counted as the training loop credits them."""
    total = offline_steps(cfg)
    if trains_online(cfg):
        counter = RunProgress(next_eval=0, next_checkpoint=0, next_offline_checkpoint=0)
        frames_per_batch = cfg.collector.frames_per_batch
        while counter.collected_frames < cfg.collector.total_frames:
            counter.collected_frames += frames_per_batch
            if counter.collected_frames >= cfg.collector.init_random_frames:
                total += counter.credit_updates(frames_per_batch, cfg.optim.utd_ratio)
    return total


def describe_plan(cfg, device, num_updates: int, speed_plan=None) -> str:
    """The run's plan in one line: env, device, steps, updates, sizes, and the speed options chosen."""
    online = f"{cfg.collector.total_frames:,} env steps" if trains_online(cfg) else "no env steps"
    offline = f" ({cfg.offline.gradient_steps:,} offline)" if cfg.offline.dataset else ""
    return (
        f"{cfg.env.env_name} on {device}: {online} and {num_updates:,} gradient updates{offline} of batch "
        f"{cfg.buffer.batch_size}, networks {cfg.model.num_layers} x {cfg.model.hidden_dim}"
        + (f"; {speed_plan.describe()}" if speed_plan is not None else "")
    )


def format_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class ProgressBar(tqdm.tqdm):
    """tqdm over env steps (gradient steps offline), with the updates done beside them.

    During a round of updates the bar moves with them (at most every half second). Once a few updates
    are timed (the ``warmup_updates`` first ones, which allocate, compile and capture, are left out, and
    on CUDA each timed one is waited for), one line tells the
    seconds per update and what the rest of the run takes at that rate, naming the quick preset on a
    CPU at the paper's network size.
    """

    def __init__(self, cfg, device, total_updates: int, warmup_updates: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        self.counts_updates = kwargs.get("unit") == "updates"  # the offline bar counts the updates themselves
        self.cfg = cfg
        self.device = device
        self.total_updates = total_updates
        self.warmup_updates = warmup_updates
        self._calls = 0
        self.success: float | None = None
        self._last_refresh = 0.0
        self._previous_update: float | None = None
        self._timed_seconds = 0.0
        self._timed_updates = 0
        self._rate_told = False
        self._frames_left = 0
        self._seconds_per_frame = 0.0

    def start_round(self, num_updates: int, frames_left: int, seconds_per_frame: float) -> None:
        """Updates follow; ``frames_left`` env steps remain, collected at ``seconds_per_frame``."""
        self._previous_update = time.perf_counter() if num_updates else None
        self._frames_left, self._seconds_per_frame = frames_left, seconds_per_frame

    def updated(self, num_updates: int) -> None:
        self._calls += 1  # this process's updates: a resumed run compiles again
        if not self._rate_told and self._calls >= self.warmup_updates and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        if self._previous_update is not None and self._calls > self.warmup_updates:
            self._timed_seconds += now - self._previous_update
            self._timed_updates += 1
        self._previous_update = now
        if self._timed_updates == TIMED_UPDATES and not self._rate_told:
            self._tell_rate(num_updates)
        self.show_updates(num_updates)

    def show_success(self, success: float, num_updates: int) -> None:
        self.success = success
        self.show_updates(num_updates, force=True)

    def show_updates(self, num_updates: int, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_refresh >= REFRESH_SECONDS:
            if self.counts_updates:
                self.n = num_updates
            postfix = {"updates": f"{num_updates}/{self.total_updates}"}
            if self.success is not None:
                postfix["success"] = f"{self.success:.2f}"
            self.set_postfix(postfix)
            self._last_refresh = now

    def _tell_rate(self, num_updates: int) -> None:
        self._rate_told = True
        if self.disable:
            return
        per_update = self._timed_seconds / self._timed_updates
        updates_left = self.total_updates - num_updates
        left = per_update * updates_left + self._seconds_per_frame * self._frames_left
        hint = ""
        if self.device.type == "cpu" and self.cfg.model.hidden_dim >= PAPER_HIDDEN_DIM:
            hint = "; the paper-size networks are slow on a CPU: for a run of minutes use --config-name config_quick"
        log.info(
            "%.3f s per update: about %s left at this rate (%d updates, %d env steps)%s",
            per_update, format_duration(left), updates_left, self._frames_left, hint,
        )
