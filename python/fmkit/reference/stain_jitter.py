"""HED stain colour jitter in plain PyTorch, float64, step by step as the spec writes it: the oracle.

Spec: shared/specs/augment_diversity_equity.md §1.2.3 (Tellez et al. 2018, appendix B).
Per image P [3, H, W] in [0, 1] (rgb as a row vector per pixel), s = 1 ("od") or 255 ("release"):

    S  = -ln(s P + eps) M^-1          optical density -> HED stain concentrations
    S' = alpha * S + beta             alpha, beta: [3] per image, shared by all pixels
    P' = clip((exp(-S' M) - eps) / s, 0, 1)

uint8 images are read as v / 255 and written as round(255 P') (round half to even).
"""
from __future__ import annotations

import torch

# Rows: the H, E and DAB/residual optical-density vectors (Ruifrok-style, not re-normalised).
HED_MATRIX = ((0.65, 0.70, 0.29), (0.07, 0.99, 0.11), (0.27, 0.57, 0.78))
MODES = ("od", "release")


def mode_scale(mode: str) -> float:
    """The factor s applied to P before the log: 1 (standard optical density) or 255 (the release's quirk)."""
    return 255.0 if mode == "release" else 1.0


def hed_matrices(device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, M^-1) in float64."""
    m = torch.tensor(HED_MATRIX, dtype=torch.float64, device=device)
    return m, torch.linalg.inv(m)


def rgb_to_hed(p: torch.Tensor, mode: str = "od", eps: float = 1e-6) -> torch.Tensor:
    """[..., 3, H, W] rgb in [0, 1] -> [..., H, W, 3] stain concentrations S (float64)."""
    m, m_inv = hed_matrices(p.device)
    rgb = p.to(torch.float64).movedim(-3, -1)
    return -torch.log(mode_scale(mode) * rgb + eps) @ m_inv


def hed_to_rgb(s: torch.Tensor, mode: str = "od", eps: float = 1e-6) -> torch.Tensor:
    """[..., H, W, 3] stain concentrations -> [..., 3, H, W] rgb (float64, not clipped)."""
    m, _ = hed_matrices(s.device)
    return ((torch.exp(-(s @ m)) - eps) / mode_scale(mode)).movedim(-1, -3)


def stain_jitter_reference(images: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, mode: str = "od",
                           eps: float = 1e-6) -> torch.Tensor:
    """images [B, 3, H, W] (uint8, or float in [0, 1]); alpha, beta [B, 3] -> images' dtype.

    Differentiable in images, alpha and beta for float inputs (autograd through log / exp / clip).
    """
    uint8 = images.dtype == torch.uint8
    p = images.to(torch.float64) / 255.0 if uint8 else images.to(torch.float64)
    s = rgb_to_hed(p, mode, eps)  # [B, H, W, 3]
    a = alpha.to(torch.float64)[:, None, None, :]
    b = beta.to(torch.float64)[:, None, None, :]
    out = hed_to_rgb(a * s + b, mode, eps).clamp(0.0, 1.0).contiguous()
    if uint8:
        return torch.round(out * 255.0).to(torch.uint8)
    return out.to(images.dtype)
