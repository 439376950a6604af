"""Stain Color Jitter (Camelyon17; spec §1.2.3): per image and per HED stain, alpha ~ U(1 - sigma, 1 + sigma),
beta ~ U(-sigma, sigma), applied by the fused op `fmkit.ops.stain_jitter` to the whole batch."""
from __future__ import annotations

import torch

from fmkit.augment import _common as C
from fmkit.ops.stain_jitter import stain_jitter
from fmkit.reference.stain_jitter import MODES


class StainColorJitter:
    """StainColorJitter(sigma=0.1, mode="od", eps=1e-6, p=0.5, backend="auto").

    sigma = 0.1 is the paper's and the README command's value (the release's class default is
    0.05). mode="od" is the standard optical density; "release" reproduces log(255 P). Each image is
    jittered with probability p (one Bernoulli draw per image); the others are returned unchanged.
    Images: [B, 3, H, W] uint8 or float in [0, 1], on any device; the output has their dtype.
    """

    def __init__(self, sigma: float = 0.1, mode: str = "od", eps: float = 1e-6, p: float = 0.5,
                 backend: str = "auto"):
        self.sigma = C.check_positive(sigma, "sigma")
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
        self.mode, self.eps, self.p, self.backend = mode, C.check_positive(eps, "eps"), C.check_probability(p), backend

    def sample(self, B: int, generator=None, device="cpu") -> C.Params:
        g = C.generator_from(generator)
        applied = C.gate(B, self.p, g, device)
        alpha = C.uniform((B, 3), 1 - self.sigma, 1 + self.sigma, g, device)
        beta = C.uniform((B, 3), -self.sigma, self.sigma, g, device)
        return {"applied": applied, "alpha": alpha, "beta": beta}

    def __call__(self, images, *, generator=None, params=None, return_params=False):
        images = C.check_images(images)
        B = images.shape[0]
        params = self.sample(B, generator, images.device) if params is None else \
            C.check_params(params, ("applied", "alpha", "beta"), B)
        on = params["applied"].to(images.device)
        # Unapplied images get alpha = 1, beta = 0 and are then copied through unchanged (the kernel's
        # identity is exact only to ~1e-6), so one kernel call serves the whole batch.
        alpha = torch.where(on[:, None], params["alpha"].to(images.device), 1.0)
        beta = torch.where(on[:, None], params["beta"].to(images.device), 0.0)
        out = stain_jitter(images, alpha, beta, mode=self.mode, eps=self.eps, backend=self.backend)
        out = torch.where(on[:, None, None, None], out, images)
        return (out, params) if return_params else out
