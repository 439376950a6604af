"""Array plumbing shared by fmkit.calibration: torch or numpy in, the same kind out.

Everything is computed in float64 torch on the input's device (so GPU features stay on the
GPU). `as_tensor` converts and checks with the argument's name; `like` converts a result
back to the kind of a reference input.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch


def as_tensor(x: Any, name: str, *, ndim: int | None = None, dtype=torch.float64, device=None) -> torch.Tensor:
    """x (torch, numpy, list) as a torch tensor of `dtype`; ValueError naming `name` otherwise."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
    elif isinstance(x, (np.ndarray, list, tuple, float, int, np.generic)):
        t = torch.as_tensor(np.ascontiguousarray(x))  # torch cannot view negative strides
    elif hasattr(x, "__dlpack__"):
        t = torch.from_dlpack(x)
    else:
        raise ValueError(f"{name}: expected a torch.Tensor or numpy array, got {type(x).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array, got shape {list(t.shape)}")
    if dtype is not None:
        if t.is_complex():
            raise ValueError(f"{name}: expected real numbers, got {t.dtype}")
        t = t.to(dtype)
    if device is not None:
        t = t.to(device)
    return t


def like(reference: Any, result: torch.Tensor):
    """Returns `result` as numpy if `reference` was not a torch tensor, else as is."""
    if isinstance(reference, torch.Tensor):
        return result
    return result.cpu().numpy()


def check_same_length(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{name_b}: length {b.shape[0]} does not match {name_a} length {a.shape[0]}")


PROB_TOLERANCE = 1e-6  # float32 softmax and MIR's "+ 1e-9 p" step slightly past [0, 1]


def unit_interval(name: str, x: torch.Tensor) -> torch.Tensor:
    """x clamped to [0, 1]; ValueError if it strays further than rounding explains."""
    outside = (x < -PROB_TOLERANCE) | (x > 1 + PROB_TOLERANCE)
    if x.numel() and bool(outside.any()):
        raise ValueError(f"{name}: values must lie in [0, 1], found {x[outside][0].item()}")
    return x.clamp(0.0, 1.0)


def check_finite(name: str, x: torch.Tensor) -> None:
    # A sum is finite iff every element is, unless finite values overflow it; only then (rare)
    # the elementwise test runs. torch.isfinite on a 1000 x 100 float64 array took 1-12 ms
    # (1-2 threads), 50x a sum, and dominated TemperatureScaling.fit at that size; on the CPU
    # numpy sums, since torch's two threads made even the sum take 5 ms on a busy 2-core machine.
    if not x.numel():
        return
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
        with np.errstate(over="ignore", invalid="ignore"):
            total = x.numpy().sum()
    else:
        total = x.sum()
    if not math.isfinite(float(total)) and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: contains NaN or inf")


def check_labels(name: str, labels: torch.Tensor, n_classes: int | None = None) -> torch.Tensor:
    if labels.dtype.is_floating_point:
        if not bool((labels == labels.round()).all()):
            raise ValueError(f"{name}: expected integer class labels")
    labels = labels.to(torch.int64)
    if labels.numel() and int(labels.min()) < 0:
        raise ValueError(f"{name}: labels must be >= 0, found {int(labels.min())}")
    if n_classes is not None and labels.numel() and int(labels.max()) >= n_classes:
        raise ValueError(f"{name}: label {int(labels.max())} out of range for {n_classes} classes")
    return labels
