"""Guard against non-finite data at load, and non-finite losses and gradients before an update is applied."""
from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)
ON_NONFINITE = ("stop", "skip")


def first_nonfinite_row(array) -> tuple[int, float] | None:
    """The first row of ``array`` (indexed along its first axis) holding a NaN or infinity, and that
    value; None when all are finite (integer and boolean arrays always are)."""
    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.floating) or array.size == 0:
        return None
    rows = array.reshape(len(array), -1)
    bad = ~np.isfinite(rows)
    bad_rows = np.flatnonzero(bad.any(axis=1))
    if not len(bad_rows):
        return None
    row = int(bad_rows[0])
    return row, float(rows[row][bad[row]][0])
