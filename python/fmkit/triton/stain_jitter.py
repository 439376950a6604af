"""Triton fused HED stain colour jitter (contract: csrc/ops/stain_jitter.h).

One program per (image, BLOCK pixels): reads the three channels at any strides, runs
od = -ln(s p + eps), z = od A + b, out = clip((exp(-z) - eps) / s, 0, 1) in fp32 registers and
writes the contiguous output once; uint8 is read as v / 255 and written as round(255 out).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _stain_jitter(x_ptr, coef_ptr, out_ptr, HW, W, sb, sc, sh, sw, scale, eps,
                  IS_U8: tl.constexpr, BLOCK: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    idx = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < HW
    src = x_ptr + b * sb + (idx // W) * sh + (idx % W) * sw
    r = tl.load(src, mask=mask, other=0).to(tl.float32)
    g = tl.load(src + sc, mask=mask, other=0).to(tl.float32)
    bl = tl.load(src + 2 * sc, mask=mask, other=0).to(tl.float32)
    if IS_U8:
        r, g, bl = r / 255.0, g / 255.0, bl / 255.0
    o0 = -tl.log(r * scale + eps)
    o1 = -tl.log(g * scale + eps)
    o2 = -tl.log(bl * scale + eps)
    k = coef_ptr + b * 12
    dst = out_ptr + b * 3 * HW + idx
    for c in tl.static_range(3):
        z = o0 * tl.load(k + c) + o1 * tl.load(k + 3 + c) + o2 * tl.load(k + 6 + c) + tl.load(k + 9 + c)
        v = (tl.exp(-z) - eps) / scale
        v = tl.minimum(tl.maximum(v, 0.0), 1.0)
        if IS_U8:
            # round half to even like the reference and the C++ kernel: add and subtract 1.5 * 2^23
            v = (v * 255.0 + 12582912.0) - 12582912.0
            tl.store(dst + c * HW, v.to(tl.uint8), mask=mask)
        else:
            tl.store(dst + c * HW, v, mask=mask)


def stain_jitter(images: torch.Tensor, coef: torch.Tensor, scale: float, eps: float) -> torch.Tensor:
    """images [B, 3, H, W] uint8/float32 (any strides), coef float32 [B, 12] -> contiguous output."""
    B, _, H, W = images.shape
    out = torch.empty((B, 3, H, W), dtype=images.dtype, device=images.device)
    if out.numel() == 0:
        return out
    block = 256 if images.device.type == "cpu" else 1024
    grid = (B, triton.cdiv(H * W, block))
    _stain_jitter[grid](images, coef, out, H * W, W, *images.stride(), float(scale), float(eps),
                        IS_U8=images.dtype == torch.uint8, BLOCK=block)
    return out
