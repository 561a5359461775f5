"""Guard against non-finite data at load, and non-finite losses and gradients before an update is applied."""
from __future__ import annotations

import logging

import numpy as np
import torch
from tensordict import TensorDict

log = logging.getLogger(__name__)
ON_NONFINITE = ("stop", "skip")


class NonFiniteError(RuntimeError):
    """A loss or gradient became NaN or infinite; the message names the update and the values."""


def check_finite(loss_td: TensorDict, keys, where: str, on_nonfinite: str) -> bool:
    """True if every entry of ``keys`` is finite. Otherwise raise NonFiniteError (``stop``), before the
    step is applied, or log and return False (``skip``: the caller drops the batch)."""
    values = torch.stack([loss_td[key].float() for key in keys])
    if bool(torch.isfinite(values).all()):
        return True
    message = f"non-finite {where}: " + ", ".join(f"{key}={loss_td[key].item():.4g}" for key in keys)
    if on_nonfinite == "skip":
        log.warning("%s; batch skipped", message)
        return False
    raise NonFiniteError(message)


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
