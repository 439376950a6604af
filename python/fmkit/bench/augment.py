"""Stain colour jitter benchmark: fmkit.ops.stain_jitter on a whole batch against what users run instead.

Anchors (same inputs, same process):
* the release's code path (i-gao/targeted-augs, spec §1.2.3) as users run it: one image at a time
  through torch ops, log(255 P) -> @ M^-1 -> affine -> @ M -> exp -> clip, in a Python loop;
* albumentations' HEStain (method="preset", preset="ruifrok", the same alpha/beta ranges), per
  image on HWC numpy arrays, as its pipelines call it. It draws its own alpha/beta, so its output
  is not comparable: its 'exact' cell stays empty.
fmkit runs mode="release" with the same alpha/beta as the loop. 'exact' = within 1/255 of the
float64 reference (fmkit.reference.stain_jitter). The op moves bytes; "flops" counts pixels * 3
channels * 2 (read + write), so GFLOP/s reads as G element transfers per second.
"""
from __future__ import annotations

import importlib.util

import numpy as np
import torch

from fmkit.bench import unavailable
from fmkit.bench._shapes import embedded_shapes
from fmkit.ops.stain_jitter import stain_jitter
from fmkit.reference.stain_jitter import HED_MATRIX, stain_jitter_reference

SHAPES = {  # (B, H, W, dtype)
    ("cpu", "quick"): [(256, 96, 96, torch.uint8), (256, 96, 96, torch.float32)],
    ("cpu", "full"): [(256, 96, 96, torch.uint8), (256, 96, 96, torch.float32), (64, 224, 224, torch.float32)],
    ("cuda", "quick"): [(256, 96, 96, torch.uint8), (256, 96, 96, torch.float32)],
    ("cuda", "full"): [(1024, 96, 96, torch.uint8), (1024, 96, 96, torch.float32), (256, 224, 224, torch.float32)],
}
SIGMA = 0.1
EPS = 1e-6


def release_loop(images: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """The release's per-image chain (fp32 torch ops, log of 255 P), one image per iteration.

    At its strongest setting on the CPU: one torch thread, as in a DataLoader worker. With two, each
    of the ~12 small ops per image waits for the other thread (25-40x slower on a loaded 2-core machine).
    """
    m = torch.tensor(HED_MATRIX, device=images.device)
    m_inv = torch.linalg.inv(m)
    out = torch.empty_like(images)
    threads = torch.get_num_threads()
    if images.device.type == "cpu":
        torch.set_num_threads(1)
    try:
        for i in range(images.shape[0]):
            p = images[i].float() / 255.0 if images.dtype == torch.uint8 else images[i]
            s = -torch.log(255.0 * p.permute(1, 2, 0) + EPS) @ m_inv
            s = alpha[i] * s + beta[i]
            q = ((torch.exp(-s @ m) - EPS) / 255.0).clamp(0.0, 1.0).permute(2, 0, 1)
            out[i] = torch.round(q * 255.0).to(torch.uint8) if images.dtype == torch.uint8 else q
    finally:
        torch.set_num_threads(threads)
    return out


def _albumentations_loop(hwc: list[np.ndarray]):
    made = []

    def run():
        if not made:  # imported on the untimed warm-up call: the import takes seconds
            import albumentations as A

            made.append(A.HEStain(method="preset", preset="ruifrok", intensity_scale_range=(1 - SIGMA, 1 + SIGMA),
                                  intensity_shift_range=(-SIGMA, SIGMA), augment_background=True, p=1.0))
        return [made[0](image=im)["image"] for im in hwc]

    return run


def _within(out: torch.Tensor, ref: torch.Tensor, dtype) -> bool:
    scale = 1.0 if dtype == torch.uint8 else 255.0
    return float((out.double() - ref.double()).abs().max()) * scale <= 1.0 + 1e-9


def cases(device: torch.device, quick: bool, shapes=None):
    shapes = embedded_shapes(SHAPES, device, quick, shapes)
    return [_case(*s, device, quick) for s in shapes]


def _case(B, H, W, dtype, device, quick=False):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(B, 3, H, W, generator=g)
    x = (x * 255).round().to(torch.uint8) if dtype == torch.uint8 else x
    alpha = 1 + (torch.rand(B, 3, generator=g) * 2 - 1) * SIGMA
    beta = (torch.rand(B, 3, generator=g) * 2 - 1) * SIGMA
    x, alpha, beta = x.to(device), alpha.to(device), beta.to(device)
    ref = stain_jitter_reference(x, alpha, beta, "release")
    fused = lambda: stain_jitter(x, alpha, beta, mode="release", validate=False)  # noqa: E731
    loop = lambda: release_loop(x, alpha, beta)  # noqa: E731
    name = "fmkit stain_jitter (" + ("triton" if device.type == "cuda" else "cpu") + ")"
    contenders = [(name, fused, False)]
    if not quick:  # the float64 oracle: seconds on a CPU, so only in the full run
        contenders.append(("torch reference (batched, float64)",
                           lambda: stain_jitter_reference(x, alpha, beta, "release"), False))
    contenders.append(("release code path, per-image loop", loop, True))
    # The loop's correctness on its first 8 images (it treats each image alone): a whole extra run costs seconds.
    exact = {name: _within(fused(), ref, dtype),
             "release code path, per-image loop": _within(release_loop(x[:8], alpha[:8], beta[:8]), ref[:8], dtype),
             "torch reference (batched, float64)": True}
    if device.type == "cpu":
        if importlib.util.find_spec("albumentations") is None:
            alb = unavailable("albumentations not installed (pip install albumentations)")
        else:
            alb = _albumentations_loop([np.ascontiguousarray(im.permute(1, 2, 0).numpy()) for im in x])
        contenders.append(("albumentations HEStain, per image", alb, True))
    return {
        "shape": f"{B}x3x{H}x{W} {str(dtype).replace('torch.', '')} release",
        "flops": 2.0 * x.numel(),
        "contenders": contenders,
        "exact": exact,
        "repeats": 2 if quick else 7,
        "inputs": (x, alpha, beta),
    }
