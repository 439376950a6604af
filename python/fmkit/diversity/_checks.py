"""Argument checks shared by the diversity modules: each error names the argument."""
from __future__ import annotations

import numbers

import numpy as np
import torch


def as_labels(labels, name: str = "labels", device=None) -> torch.Tensor:
    """Integer class labels as a 1-D int64 tensor; floats, bools and strings are refused."""
    if isinstance(labels, torch.Tensor):
        t = labels
    else:
        try:
            arr = np.asarray(labels)
        except Exception as exc:  # ragged lists and the like
            raise TypeError(f"{name}: expected a 1-D sequence of integer class labels ({exc})") from None
        if arr.dtype == object or arr.dtype.kind in "USfcb":
            raise TypeError(f"{name}: expected integer class labels, got {arr.dtype} values "
                            "(map names or floats to integer ids first)")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise TypeError(f"{name}: expected integer class labels, got {t.dtype} "
                        "(map names or floats to integer ids first)")
    if t.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of labels, got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError(f"{name}: is empty")
    return t.to(device=device if device is not None else t.device, dtype=torch.long)


def check_q(q):
    """vendi-score's order q: a number > 0, or "inf"."""
    if isinstance(q, str):
        if q.lower() in ("inf", "infinity"):
            return "inf"
        raise ValueError(f"q: expected a number > 0 or 'inf', got {q!r}")
    if isinstance(q, bool) or not isinstance(q, numbers.Real):
        raise TypeError(f"q: expected a number > 0 or 'inf', got {type(q).__name__}")
    if not q > 0:
        raise ValueError(f"q: expected a number > 0 or 'inf', got {q} (q = 0 counts eigenvalues above zero, "
                         "which round-off decides)")
    if q == float("inf"):
        return "inf"
    return float(q)


def positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name}: expected an integer >= 1, got {value}")
    return int(value)
