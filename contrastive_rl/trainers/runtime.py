"""Process-wide settings that make training faster on this stack, set once at start."""
from __future__ import annotations

import ctypes
import importlib.util
import sys


def keep_freed_heap_memory() -> None:
    """Stop glibc from handing freed heap memory back to the OS between updates.

    An update frees its activations at its end; with glibc's defaults the top of the heap is trimmed,
    and the next update page-faults the same memory back in. A trim threshold of 2 GiB keeps it.
    Setting it turns off glibc's own raising of the mmap threshold, so that is set to its maximum,
    32 MiB, or every activation would be mapped and faulted afresh. A preloaded jemalloc or tcmalloc
    does the same job but has to be installed and set before Python starts. Without glibc (macOS,
    musl) nothing changes.
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 32 * 2**20)
    mallopt(m_trim_threshold, 2**31 - 1)


def skip_missing_pandas_lookups() -> None:
    """Mark pandas as absent in ``sys.modules`` when it is not installed.

    tensordict's ``TensorDict.from_any``, which runs on every output of every TensorDictModule (the
    policy's, at each env step), asks ``importlib.util.find_spec("pandas")``; without pandas that
    searches every ``sys.path`` entry on each call. A None entry in ``sys.modules`` is Python's own
    marker of a module that cannot be imported: find_spec answers at once and ``import pandas`` still
    raises ImportError. Where pandas is installed, nothing changes.
    """
    if importlib.util.find_spec("pandas") is None:
        sys.modules.setdefault("pandas", None)


def tune_runtime() -> None:
    keep_freed_heap_memory()
    skip_missing_pandas_lookups()
