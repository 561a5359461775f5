"""Ending a run on Ctrl-C (SIGINT) or SIGTERM (what Slurm sends before a kill) with a checkpoint of
where it stands, and the command that resumes it."""
from __future__ import annotations

import contextlib
import shlex
import signal
import sys

import torch

SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def exit_quietly_on_interrupt():
    """A Ctrl-C that ``StopOnSignal`` does not take (during the set-up, or a second one) ends the run
    with one line instead of a traceback, and the shell's code for SIGINT."""
    try:
        yield
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the exit's own clean-up is not interrupted again
        print("stopped by SIGINT at once: nothing written since the last checkpoint", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)


class StopOnSignal:
    """While active, the first SIGINT or SIGTERM asks the run to stop (``requested``) at the end of the
    update or evaluation under way; a second one ends it at once (``exit_quietly_on_interrupt``).

    In a data-parallel run the ranks must stop at the same update: ``agreed()``, at the end of a round
    of updates, tells every rank whether any of them was signalled."""

    def __init__(self, world_size: int = 1) -> None:
        self.world_size = world_size
        self.received: signal.Signals | None = None
        self.by_another_rank = False
        self._previous = {}

    def __enter__(self) -> StopOnSignal:
        for number in SIGNALS:
            self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def _handle(self, number: int, frame) -> None:
        self.received = signal.Signals(number)
        for other in SIGNALS:
            signal.signal(other, self._previous[other])
        sys.stderr.write(f"\n{self.received.name} received: the run stops after the update or evaluation under way, "
                         "with a checkpoint (Ctrl-C again: at once, without one)\n")

    @property
    def requested(self) -> bool:
        """Whether this process was signalled; in a data-parallel run the ranks stop on ``agreed()``."""
        return self.received is not None and self.world_size == 1

    def agreed(self, device) -> bool:
        if self.world_size == 1:
            return self.requested
        flag = torch.tensor([float(self.received is not None)], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        stop = bool(flag.item())
        self.by_another_rank = stop and self.received is None
        return stop

    @property
    def signal_name(self) -> str:
        return "a signal to another rank" if self.by_another_rank else self.received.name

    @property
    def exit_code(self) -> int:
        """The shell's code of a process ended by the signal: 128 + its number."""
        return 128 + (self.received or signal.SIGTERM)


def resume_command(run_dir, config_name: str, overrides) -> str:
    """The command line that resumes the run in ``run_dir``: this script, its config and overrides."""
    kept = [item for item in overrides if not item.startswith(("checkpoint.resume=", "hydra.run.dir="))]
    config = [] if config_name == "config" else ["--config-name", config_name]
    words = ["python", sys.argv[0], *config, *kept, "checkpoint.resume=auto",
             f"hydra.run.dir={run_dir}"]
    return shlex.join(words)
