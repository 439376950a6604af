"""Plain-PyTorch oracles of every fmkit kernel; several double as the `torch` backend."""
from __future__ import annotations

import functools

import torch


def without_autocast(fn):
    """Runs `fn` with autocast off on its first argument's device.

    The references promise fp32 (fp64) accumulation; under a caller's autocast their matmuls
    would silently run in 16 bits (and a bf16 -finfo(fp32).max mask fill overflows).
    """
    @functools.wraps(fn)
    def wrapper(first, *args, **kwargs):
        with torch.autocast(device_type=first.device.type, enabled=False):
            return fn(first, *args, **kwargs)

    return wrapper
