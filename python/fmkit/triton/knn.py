"""Triton score tiles for kNN candidate search (contract in csrc/ops/knn.h).

`score_tile` computes, for a block of queries x and database rows y,
    L2: |y - c|^2 - 2 <x - c, y - c>        IP: -<x, y - c>
with `tl.dot` in IEEE fp32 (no TF32: the exactness certificate in ops/knn.py assumes
fp32 rounding). Inputs of any float dtype and any strides are converted on load.
`fmkit.ops.knn.tiled_candidates` merges the tiles with a running top-kprime.
Runs on CUDA, and on the CPU under TRITON_INTERPRET=1 (tests).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _score_tile_kernel(
    x_ptr, y_ptr, c_ptr, out_ptr,
    Q, N, D,
    stride_xq, stride_xd, stride_yn, stride_yd, stride_oq,
    self_col,
    IS_L2: tl.constexpr, HAS_SELF: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_q = tl.program_id(0)
    pid_n = tl.program_id(1)
    rq = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_Q, BLOCK_N), dtype=tl.float32)
    ynorm = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        rd = d0 + tl.arange(0, BLOCK_D)
        x = tl.load(x_ptr + rq[:, None] * stride_xq + rd[None, :] * stride_xd,
                    mask=(rq[:, None] < Q) & (rd[None, :] < D), other=0.0).to(tl.float32)
        y = tl.load(y_ptr + rn[:, None] * stride_yn + rd[None, :] * stride_yd,
                    mask=(rn[:, None] < N) & (rd[None, :] < D), other=0.0).to(tl.float32)
        c = tl.load(c_ptr + rd, mask=rd < D, other=0.0)
        # Padding lanes must stay exactly zero after centring; IP centres the database only.
        y = tl.where(rd[None, :] < D, y - c[None, :], 0.0)
        if IS_L2:
            x = tl.where(rd[None, :] < D, x - c[None, :], 0.0)
            ynorm += tl.sum(y * y, axis=1)
        acc += tl.dot(x, tl.trans(y), input_precision="ieee")
    if IS_L2:
        score = ynorm[None, :] - 2.0 * acc
    else:
        score = -acc
    if HAS_SELF:
        score = tl.where(rn[None, :] == rq[:, None] + self_col, float("inf"), score)
    tl.store(out_ptr + rq[:, None] * stride_oq + rn[None, :], score,
             mask=(rq[:, None] < Q) & (rn[None, :] < N))


def score_tile(x: torch.Tensor, y: torch.Tensor, center: torch.Tensor, metric: str, self_col: int | None):
    """Scores [x.shape[0], y.shape[0]] float32; column (row + self_col) set to +inf if given."""
    Q, D = x.shape
    N = y.shape[0]
    out = torch.empty((Q, N), dtype=torch.float32, device=x.device)
    block_q, block_n, block_d = (32, 32, 16) if x.device.type == "cpu" else (64, 64, 32)
    grid = (triton.cdiv(Q, block_q), triton.cdiv(N, block_n))
    _score_tile_kernel[grid](
        x, y, center, out, Q, N, D,
        x.stride(0), x.stride(1), y.stride(0), y.stride(1), out.stride(0),
        0 if self_col is None else self_col,
        IS_L2=metric == "l2", HAS_SELF=self_col is not None,
        BLOCK_Q=block_q, BLOCK_N=block_n, BLOCK_D=block_d,
    )
    return out
