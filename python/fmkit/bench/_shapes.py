"""Helpers every benchmark module shares (kept out of fmkit.bench to avoid a circular import)."""
from __future__ import annotations

import torch

from fmkit.ops import _backend


def embedded_shapes(table: dict, device: torch.device, quick: bool, shapes=None) -> list:
    """`shapes` if given, else the module's embedded sizes for this device kind and mode."""
    if shapes:
        return list(shapes)
    return table[("cuda" if device.type == "cuda" else "cpu", "quick" if quick else "full")]


def knn_backends(device: torch.device) -> list[str]:
    """The fmkit kNN backends worth timing on `device` (GPU: every built one, and the float64 torch tiles, which use the FP64 tensor cores; CPU: the C++ kernel)."""
    if device.type == "cuda":
        return [b for b in ("cuda", "triton", "torch") if _backend._available(b, True)]
    return ["cpu"]
