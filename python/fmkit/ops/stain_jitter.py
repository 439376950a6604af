"""Fused HED stain colour jitter: `fmkit.ops.stain_jitter` (spec: shared/specs/augment_diversity_equity.md
§1.2.3; Tellez et al. 2018, appendix B). Per image b and pixel p (rgb row vector in [0, 1]):

    S = -ln(s p + eps) M^-1;   S' = alpha_b * S + beta_b;   p' = clip((exp(-S' M) - eps) / s, 0, 1)

M is the Ruifrok-style stain matrix (`fmkit.reference.stain_jitter.HED_MATRIX`); s = 1 for
mode="od" (standard optical density: white has zero density and stays white when beta = 0) and
s = 255 for mode="release" (the released code's log(255 P): alpha also rescales white, to 255^(alpha-1)).

Backends: "cpu" (C++/OpenMP, one pass over the batch), "triton" (CUDA tensors, or the CPU under
TRITON_INTERPRET=1), "torch" (fmkit.reference.stain_jitter, float64, the oracle). The compiled and
Triton kernels fold the two 3x3 products and the per-image affine into one matrix A = M^-1 diag(alpha) M
and bias b = beta M, computed in float64 per image, and run in fp32 (~1e-6 from the reference;
uint8 results may differ from it by one code where 255 p' lies within ~1e-4 of a rounding tie).

Gradients: float inputs are differentiable through the torch reference only. backend="auto" (or
"torch") runs it when images, alpha or beta require grad, or for float64 input; the compiled kernels
carry no gradient, so naming one for such inputs is a ValueError.
"""
from __future__ import annotations

import math
from numbers import Real

import torch

from fmkit.ops import _backend
from fmkit.reference.stain_jitter import MODES, hed_matrices, mode_scale, stain_jitter_reference

DTYPES = (torch.uint8, torch.float32, torch.float64)
GPU_BACKEND_ORDER = ("triton",)


def stain_jitter(images, alpha, beta, *, mode: str = "od", eps: float = 1e-6, backend: str = "auto",
                 validate: bool = True):
    """Jittered copy of `images` [B, 3, H, W] (uint8, float32 or float64 in [0, 1]; any strides), same dtype.

    alpha, beta: [B, 3] per image and per stain (H, E, DAB) scale and shift of the stain
    concentrations, on images' device (floats, cast to float64). mode: "od" | "release".
    validate: scan float images for NaN/inf and values outside [0, 1] (reads every value).
    torch, numpy or cupy arrays in; the same kind out (a contiguous array).
    """
    images, to_kind = _backend.to_torch(images, "images")
    check_images(images)
    alpha = _coefficients(alpha, "alpha", images)
    beta = _coefficients(beta, "beta", images)
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    if isinstance(eps, bool) or not isinstance(eps, Real) or not (0 < float(eps) < math.inf):
        raise ValueError(f"eps: expected a finite float > 0, got {eps!r}")
    if validate and images.is_floating_point() and images.numel():
        lo, hi = torch.aminmax(images.detach())
        if not (bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))):
            raise ValueError("images: contains NaN or inf (pass validate=False to skip this check)")
        if lo < 0 or hi > 1:
            raise ValueError(f"images: float images must lie in [0, 1], got values in "
                             f"[{lo.item():.4g}, {hi.item():.4g}]")
    grad = any(t.requires_grad for t in (images, alpha, beta))
    if (grad or images.dtype == torch.float64) and backend not in ("auto", "torch"):
        why = "float64 input" if images.dtype == torch.float64 else "inputs that require grad"
        raise ValueError(f"backend={backend!r}: {why} run only on backend='torch' (the differentiable float64 "
                         "reference); the compiled kernels are uint8/float32 without gradients")
    _backend.resolve_backend(backend, images.device, "stain_jitter", GPU_BACKEND_ORDER)
    if grad or images.dtype == torch.float64:
        return to_kind(stain_jitter_reference(images, alpha, beta, mode, float(eps)))
    args = (images, alpha, beta, mode, float(eps), backend)
    op = _stain_jitter_impl if _backend.plain_eager(images, alpha, beta) else torch.ops.fmkit.stain_jitter
    return to_kind(op(*args))


def check_images(images: torch.Tensor) -> None:
    """[B, 3, H, W] of an accepted dtype (ValueError / TypeError naming `images`)."""
    if images.dim() != 4:
        raise ValueError(f"images: expected a 4-D [B, 3, H, W] array, got shape {list(images.shape)}")
    if images.shape[1] != 3:
        raise ValueError(f"images: expected 3 (RGB) channels in dim 1, got shape {list(images.shape)}")
    _backend.check_dtype(images, "images", DTYPES, "; convert first, e.g. x.float() / 255 or x.to(torch.uint8)")


def _coefficients(v, name: str, images: torch.Tensor) -> torch.Tensor:
    v, _ = _backend.to_torch(v, name)
    B = images.shape[0]
    if v.shape != (B, 3):
        raise ValueError(f"{name}: expected shape [{B}, 3] (per image, per stain), got {list(v.shape)}")
    if not v.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point array, got {_backend.dtype_name(v.dtype)}")
    if v.device != images.device:
        raise ValueError(f"{name}: on {v.device}, but images is on {images.device}")
    if v.numel() and not bool(torch.isfinite(v).all()):
        raise ValueError(f"{name}: contains NaN or inf")
    return v if v.requires_grad else v.to(torch.float64)


def folded_coefficients(alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """float32 [B, 12]: A = M^-1 diag(alpha) M (row-major) and b = beta M, computed in float64."""
    m, m_inv = hed_matrices(alpha.device)
    a = (m_inv[None] * alpha.to(torch.float64)[:, None, :]) @ m
    b = beta.to(torch.float64) @ m
    return torch.cat([a.reshape(-1, 9), b], dim=1).to(torch.float32).contiguous()


def _stain_jitter_impl(images: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, mode: str, eps: float,
                       backend: str) -> torch.Tensor:
    name = _backend.resolve_backend(backend, images.device, "stain_jitter", GPU_BACKEND_ORDER)
    if name == "torch" or images.dtype == torch.float64:
        return stain_jitter_reference(images, alpha, beta, mode, eps)
    coef = folded_coefficients(alpha, beta)
    scale = mode_scale(mode)
    if name == "triton":
        from fmkit.triton.stain_jitter import stain_jitter as triton_stain_jitter

        return triton_stain_jitter(images, coef, scale, eps)
    out = torch.empty(images.shape, dtype=images.dtype)
    dl = _backend.dlpack
    _backend._C.stain_jitter_cpu(dl(images), dl(coef), dl(out), scale, eps, _backend.cpu_threads())
    return out


_stain_jitter_op = torch.library.custom_op("fmkit::stain_jitter", _stain_jitter_impl, mutates_args=())


@_stain_jitter_op.register_fake
def _stain_jitter_fake(images, alpha, beta, mode, eps, backend):
    return images.new_empty(images.shape, memory_format=torch.contiguous_format)
