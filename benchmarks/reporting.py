"""What the benchmarks share to print their rows beside a progress bar and to say where their figures went."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import tqdm

RESULTS = Path(__file__).resolve().parent / "results"


def say(line: str) -> None:
    """Print ``line`` on stdout above the progress bar, flushed so that a log piped to a file keeps up."""
    tqdm.tqdm.write(line)
    sys.stdout.flush()


def shown(path: Path) -> str:
    """``path`` relative to the current directory when it lies inside it, else absolute."""
    path, here = Path(path).resolve(), Path.cwd().resolve()
    return str(path.relative_to(here) if path.is_relative_to(here) else path)


def write_json(path: Path, figures: dict | list) -> str:
    """Write ``figures`` to ``path`` as indented JSON; return the path as ``shown``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=1) + "\n")
    return shown(path)
