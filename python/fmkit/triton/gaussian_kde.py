"""Triton Gaussian kernel sums: out[m] = sum_i exp(-|x_m - p_i|^2) in float64.

One program per BLOCK_M queries loops over the points in BLOCK_N tiles; nothing of size
M x N is stored. Inputs are pre-scaled by 1/(h sqrt 2) (fmkit.ops.gaussian_kde does it).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _kernel_sum(x_ptr, p_ptr, out_ptr, M, N, Q: tl.constexpr, stride_xm, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    acc = tl.zeros((BLOCK_M,), dtype=tl.float64)
    for n0 in range(0, N, BLOCK_N):
        rn = n0 + tl.arange(0, BLOCK_N)
        d2 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float64)
        for j in tl.static_range(Q):
            x = tl.load(x_ptr + rm * stride_xm + j, mask=rm < M, other=0.0)
            p = tl.load(p_ptr + j * N + rn, mask=rn < N, other=0.0)
            diff = x[:, None] - p[None, :]
            d2 += diff * diff
        e = tl.exp(-d2)
        acc += tl.sum(tl.where(rn[None, :] < N, e, 0.0), axis=1)
    tl.store(out_ptr + rm, acc, mask=rm < M)


def gaussian_kernel_sum(queries: torch.Tensor, points_t: torch.Tensor) -> torch.Tensor:
    """queries [M, q] float64 contiguous, points_t [q, N] float64 contiguous -> [M] float64."""
    M, q = queries.shape
    N = points_t.shape[1]
    out = torch.empty(M, dtype=torch.float64, device=queries.device)
    block_m, block_n = (16, 32) if queries.device.type == "cpu" else (64, 128)
    _kernel_sum[(triton.cdiv(M, block_m),)](queries, points_t, out, M, N, q, queries.stride(0),
                                            BLOCK_M=block_m, BLOCK_N=block_n)
    return out
