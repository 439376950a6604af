"""Triton tiles of the fused contrastive loss (contract in csrc/ops/clip_loss.h).

For X [M, d], Y [N, d] (fp32 / fp16 / bf16, any strides, same dtype) and
    L_ij = scale * <x_i, y_j> + bias        (fp32 accumulation; never stored as M x N)
`forward` returns
    softmax: row[i] = LSE_j L_ij,  col[j] = LSE_i L_ij (if need_col)
    sigmoid: row[i] = sum_j softplus(L_ij)              (col is None)
and `backward`, given those statistics and per-row / per-column weights, forms
    softmax: G_ij = w_row[i] exp(L_ij - row[i]) + w_col[j] exp(L_ij - col[j])
    sigmoid: G_ij = w_row[i] sigmoid(L_ij)
and returns dx = scale G Y [M, d] f32, dy = scale G^T X [N, d] f32 and
stats = (sum G_ij <x_i, y_j>, sum G_ij) f64 (the d/dscale and d/dbias pieces).

Kernels (all tile the logits on the fly; memory is O((M + N) d) plus small scratch):
* `_fwd_kernel`, grid (row blocks, column splits): BLOCK_M rows, a contiguous range of BLOCK_N
  column tiles; <x, y> by `tl.dot` over BLOCK_D chunks of d. Row LSE with an online max/sum
  (the exp argument is always <= 0). Column LSE: each row block writes its per-column partial
  LSE (max + log sum exp, one fp32) into a [row blocks, N] scratch merged by torch.logsumexp;
  rows are processed in chunks so that scratch stays under `_SCRATCH_ELEMS` floats.
  Column splits (partial row LSEs merged the same way) keep the GPU busy when M is small
  (local rows against gathered columns).
* `_bwd_dx_kernel` (row owned) and `_bwd_dy_kernel` (column owned) each recompute the tile and
  G, then add scale*G @ Y (resp. scale*G^T @ X) chunk by chunk of d into the program's own
  fp32 rows of the output: the [rows, d] accumulator lives in global memory (L2) rather than
  registers, so any d (768 included) works with one recompute per tile and no atomics
  (deterministic). Splits along the loop axis write separate [splits, ., d] buffers summed
  by torch. stats: per-program fp32 partials, summed in float64 by torch.
  Cost: forward 1 + backward 4 N^2 d-matmuls (2 recomputes, 2 gradient products).

Precision: 16-bit inputs go to the tensor cores in their own dtype with fp32 accumulation;
G is rounded to the input dtype before the gradient products (as an autocast backward
would). fp32 inputs use input_precision="ieee" (exact fp32 products, slower than TF32,
chosen for correctness). Padded rows / columns / d lanes load as 0 and are masked out of
every reduction (-inf in LSEs, 0 in G).
Tile sizes: CUDA forward 128x128 (BLOCK_D 64), backward 128x64 / 64x128; CPU (interpreter,
TRITON_INTERPRET=1, tests) 32x32 with BLOCK_D 16. scale and bias are 0-d fp32 tensors read
inside the kernels (no host sync; CUDA-graph friendly given fixed shapes).
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ._common import FLOAT_DTYPES, dot_flags, mma, tile_range

# Column-LSE scratch budget (fp32 elements) for one forward launch; tests lower it to exercise
# the row chunking.
_SCRATCH_ELEMS = 1 << 26


@triton.jit
def _dot_tile(x_ptr, y_ptr, rm, rn, M, N, D, sxm, sxd, syn, syd,
              PREC: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              BLOCK_D: tl.constexpr):
    """S[BLOCK_M, BLOCK_N] = <x_rm, y_rn> in fp32; padded rows/cols/d lanes load as 0."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        rd = d0 + tl.arange(0, BLOCK_D)
        x = tl.load(x_ptr + rm[:, None] * sxm + rd[None, :] * sxd,
                    mask=(rm[:, None] < M) & (rd[None, :] < D), other=0.0)
        # Y loaded as [BLOCK_D, BLOCK_N] so the dot needs no explicit transpose.
        yt = tl.load(y_ptr + rn[None, :] * syn + rd[:, None] * syd,
                     mask=(rn[None, :] < N) & (rd[:, None] < D), other=0.0)
        acc = mma(x, yt, acc, PREC, UPCAST)
    return acc


@triton.jit
def _softplus(z):
    # max(z, 0) + log1p(exp(-|z|)); log1p via Kahan's trick (no libdevice, so it also runs in
    # the interpreter): exact where 1 + u rounds, which matters for SigLIP's z ~ -10.
    u = tl.exp(-tl.abs(z))
    w = 1.0 + u
    lp = tl.where(w == 1.0, u, u * tl.log(w) / tl.where(w == 1.0, 1.0, w - 1.0))
    return tl.maximum(z, 0.0) + lp


@triton.jit
def _sigmoid(z):
    e = tl.exp(-tl.abs(z))  # never overflows
    return tl.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def _split_range(pid_s, tiles_per_split, BLOCK: tl.constexpr, n):
    """[start, end) of the loop axis covered by split pid_s (tiles_per_split tiles of BLOCK)."""
    start = pid_s * tiles_per_split * BLOCK
    return start, tl.minimum(n, start + tiles_per_split * BLOCK)


@triton.jit
def _load_stats(stat_ptr, w_ptr, idx, ok):
    """(LSE statistic, weight) of rows / columns idx; padding loads stat = +inf and weight 0."""
    return tl.load(stat_ptr + idx, mask=ok, other=float("inf")), tl.load(w_ptr + idx, mask=ok, other=0.0)


@triton.jit
def _load_col_stats(col_ptr, wc_ptr, rn, col_ok, HAS_COL: tl.constexpr, BLOCK_N: tl.constexpr):
    """(c, wc) of columns rn; zeros (unused by _grad_tile) without a column term."""
    c = tl.zeros((BLOCK_N,), dtype=tl.float32)
    wc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    if HAS_COL:
        c, wc = _load_stats(col_ptr, wc_ptr, rn, col_ok)
    return c, wc


@triton.jit
def _fwd_kernel(x_ptr, y_ptr, scale_ptr, bias_ptr, row_part_ptr, col_part_ptr,
                M, N, D, sxm, sxd, syn, syd, tiles_per_split,
                IS_SOFTMAX: tl.constexpr, NEED_COL: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    scale = tl.load(scale_ptr)
    bias = tl.load(bias_ptr)
    rm, row_ok = tile_range(pid_m * BLOCK_M, BLOCK_M, M)
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    n_start, n_end = _split_range(pid_s, tiles_per_split, BLOCK_N, N)
    # Every split starts on a tile with >= 1 real column, so m_i is finite after one step.
    for n0 in range(n_start, n_end, BLOCK_N):
        rn, col_ok = tile_range(n0, BLOCK_N, N)
        z = _dot_tile(x_ptr, y_ptr, rm, rn, M, N, D, sxm, sxd, syn, syd,
                      PREC, UPCAST, BLOCK_M, BLOCK_N, BLOCK_D) * scale + bias
        if IS_SOFTMAX:
            zr = tl.where(col_ok[None, :], z, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(zr, axis=1))
            l_i = l_i * tl.exp(m_i - m_new) + tl.sum(tl.exp(zr - m_new[:, None]), axis=1)
            m_i = m_new
            if NEED_COL:
                # Padded rows are -inf; a row block always holds >= 1 real row, so cm is finite.
                zc = tl.where(row_ok[:, None], z, float("-inf"))
                cm = tl.max(zc, axis=0)
                cl = tl.sum(tl.exp(zc - cm[None, :]), axis=0)
                tl.store(col_part_ptr + pid_m.to(tl.int64) * N + rn, cm + tl.log(cl), mask=col_ok)
        else:
            l_i += tl.sum(tl.where(col_ok[None, :], _softplus(z), 0.0), axis=1)
    if IS_SOFTMAX:
        out = m_i + tl.log(l_i)
    else:
        out = l_i
    tl.store(row_part_ptr + pid_s.to(tl.int64) * M + rm, out, mask=row_ok)


@triton.jit
def _grad_tile(z, r, wr, c, wc, row_ok, col_ok, IS_SOFTMAX: tl.constexpr, HAS_COL: tl.constexpr):
    """G for one tile (0 on padding). r / c load as +inf on padding, so exp() gives 0, never inf."""
    if IS_SOFTMAX:
        g = wr[:, None] * tl.exp(z - r[:, None])
        if HAS_COL:
            g += wc[None, :] * tl.exp(z - c[None, :])
    else:
        g = wr[:, None] * _sigmoid(z)
    return tl.where(row_ok[:, None] & col_ok[None, :], g, 0.0)


@triton.jit
def _add_product_rows(out_base, out_rows, out_ok, g, src_ptr, src_rows, src_ok, s_row, s_d, D,
                      PREC: tl.constexpr, UPCAST: tl.constexpr, BLOCK_D: tl.constexpr):
    """out[out_rows] += g @ src[src_rows], one chunk of d at a time.

    The output rows belong to the calling program alone, so a read-modify-write in fp32 is
    race-free; a [rows, d] register accumulator would not fit at d = 768.
    """
    for d0 in range(0, D, BLOCK_D):
        rd = d0 + tl.arange(0, BLOCK_D)
        src = tl.load(src_ptr + src_rows[:, None] * s_row + rd[None, :] * s_d,
                      mask=src_ok[:, None] & (rd[None, :] < D), other=0.0)
        ptrs = out_base + out_rows[:, None] * D + rd[None, :]
        msk = out_ok[:, None] & (rd[None, :] < D)
        acc = tl.load(ptrs, mask=msk, other=0.0)
        tl.store(ptrs, mma(g, src, acc, PREC, UPCAST), mask=msk)


@triton.jit
def _bwd_dx_kernel(x_ptr, y_ptr, scale_ptr, bias_ptr, row_ptr, col_ptr, wr_ptr, wc_ptr,
                   dx_ptr, stats_ptr, M, N, D, sxm, sxd, syn, syd, tiles_per_split,
                   IS_SOFTMAX: tl.constexpr, HAS_COL: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    scale = tl.load(scale_ptr)
    bias = tl.load(bias_ptr)
    rm, row_ok = tile_range(pid_m * BLOCK_M, BLOCK_M, M)
    r, wr = _load_stats(row_ptr, wr_ptr, rm, row_ok)
    gs_acc = tl.zeros((BLOCK_M,), dtype=tl.float32)
    g_acc = tl.zeros((BLOCK_M,), dtype=tl.float32)
    dx_base = dx_ptr + pid_s.to(tl.int64) * M * D  # this split's own [M, D] fp32 buffer
    n_start, n_end = _split_range(pid_s, tiles_per_split, BLOCK_N, N)
    for n0 in range(n_start, n_end, BLOCK_N):
        rn, col_ok = tile_range(n0, BLOCK_N, N)
        s = _dot_tile(x_ptr, y_ptr, rm, rn, M, N, D, sxm, sxd, syn, syd, PREC, UPCAST, BLOCK_M, BLOCK_N, BLOCK_D)
        z = s * scale + bias
        c, wc = _load_col_stats(col_ptr, wc_ptr, rn, col_ok, HAS_COL, BLOCK_N)
        g = _grad_tile(z, r, wr, c, wc, row_ok, col_ok, IS_SOFTMAX, HAS_COL)
        gs_acc += tl.sum(g * s, axis=1)
        g_acc += tl.sum(g, axis=1)
        gq = (g * scale).to(y_ptr.dtype.element_ty)
        _add_product_rows(dx_base, rm, row_ok, gq, y_ptr, rn, col_ok, syn, syd, D, PREC, UPCAST, BLOCK_D)
    pid = pid_m * tl.num_programs(1) + pid_s
    tl.store(stats_ptr + 2 * pid, tl.sum(gs_acc, axis=0))
    tl.store(stats_ptr + 2 * pid + 1, tl.sum(g_acc, axis=0))


@triton.jit
def _bwd_dy_kernel(x_ptr, y_ptr, scale_ptr, bias_ptr, row_ptr, col_ptr, wr_ptr, wc_ptr,
                   dy_ptr, M, N, D, sxm, sxd, syn, syd, tiles_per_split,
                   IS_SOFTMAX: tl.constexpr, HAS_COL: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    scale = tl.load(scale_ptr)
    bias = tl.load(bias_ptr)
    rn, col_ok = tile_range(pid_n * BLOCK_N, BLOCK_N, N)
    c, wc = _load_col_stats(col_ptr, wc_ptr, rn, col_ok, HAS_COL, BLOCK_N)
    dy_base = dy_ptr + pid_s.to(tl.int64) * N * D
    m_start, m_end = _split_range(pid_s, tiles_per_split, BLOCK_M, M)
    for m0 in range(m_start, m_end, BLOCK_M):
        rm, row_ok = tile_range(m0, BLOCK_M, M)
        r, wr = _load_stats(row_ptr, wr_ptr, rm, row_ok)
        # Same tile orientation and d-chunk order as the forward / dx pass, so G agrees with them
        # to fp32 rounding (exp(L - row) stays <= ~1).
        s = _dot_tile(x_ptr, y_ptr, rm, rn, M, N, D, sxm, sxd, syn, syd, PREC, UPCAST, BLOCK_M, BLOCK_N, BLOCK_D)
        g = _grad_tile(s * scale + bias, r, wr, c, wc, row_ok, col_ok, IS_SOFTMAX, HAS_COL)
        gq = tl.trans((g * scale).to(x_ptr.dtype.element_ty))
        _add_product_rows(dy_base, rn, col_ok, gq, x_ptr, rm, row_ok, sxm, sxd, D, PREC, UPCAST, BLOCK_D)


# ---- host side ----

def _configs(device):
    """(BLOCK_M, BLOCK_N, BLOCK_D, num_warps, num_stages) for fwd, dx, dy."""
    if device.type == "cpu":  # interpreter: small tiles keep numpy work per program low
        c = (32, 32, 16, 4, 1)
        return c, c, c
    return (128, 128, 64, 8, 3), (128, 64, 64, 8, 2), (64, 128, 64, 8, 2)


@functools.lru_cache(maxsize=None)
def _sm_count(index):
    return torch.cuda.get_device_properties(index).multi_processor_count


def _splits(blocks, tiles, device):
    """Split the loop axis (tiles) so that blocks * splits fills the device; returns
    (splits, tiles_per_split) with no empty split."""
    if tiles == 0:
        return 1, 0
    if device.type == "cpu":
        target = 8  # small, so that the interpreter tests exercise the split paths
    else:
        index = device.index if device.index is not None else torch.cuda.current_device()
        target = 4 * _sm_count(index)
    want = min(tiles, max(1, triton.cdiv(target, max(blocks, 1))))
    per = triton.cdiv(tiles, want)
    return triton.cdiv(tiles, per), per


def _scalar(v, device):
    return torch.as_tensor(v, dtype=torch.float32, device=device).reshape(())


def _prep(x, y, scale, bias, kind):
    if kind not in ("softmax", "sigmoid"):
        raise ValueError(f"kind must be 'softmax' or 'sigmoid', got {kind!r}")
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"x [M, d] and y [N, d] expected, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.dtype != y.dtype or x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"x and y must share a dtype among f32/f16/bf16, got {x.dtype}, {y.dtype}")
    flags = dot_flags(x.dtype, x.device)
    return x.detach(), y.detach(), _scalar(scale, x.device), _scalar(bias, x.device), flags


def forward(x, y, scale, bias, kind, need_col):
    x, y, scale, bias, flags = _prep(x, y, scale, bias, kind)
    softmax = kind == "softmax"
    need_col = bool(need_col) and softmax
    M, D = x.shape
    N = y.shape[0]
    dev = x.device
    empty_val = float("-inf") if softmax else 0.0
    row = torch.full((M,), empty_val, dtype=torch.float32, device=dev)
    col = torch.full((N,), float("-inf"), dtype=torch.float32, device=dev) if need_col else None
    if M == 0 or N == 0:
        return row, col
    bm, bn, bd, warps, stages = _configs(dev)[0]
    # Row chunks bound the [row blocks, N] column scratch (e.g. N = 256k: 32768 rows a launch).
    chunk = max(1, _SCRATCH_ELEMS // N) * bm if need_col else M
    for r0 in range(0, M, chunk):
        xc = x[r0:r0 + chunk]
        mc = xc.shape[0]
        blocks = triton.cdiv(mc, bm)
        splits, per = _splits(blocks, triton.cdiv(N, bn), dev)
        row_part = torch.empty((splits, mc), dtype=torch.float32, device=dev)
        col_part = torch.empty((blocks, N), dtype=torch.float32, device=dev) if need_col else row_part
        _fwd_kernel[(blocks, splits)](
            xc, y, scale, bias, row_part, col_part, mc, N, D,
            xc.stride(0), xc.stride(1), y.stride(0), y.stride(1), per,
            IS_SOFTMAX=softmax, NEED_COL=need_col, **flags,
            BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, num_warps=warps, num_stages=stages,
        )
        if splits == 1:
            row[r0:r0 + mc] = row_part[0]
        elif softmax:
            row[r0:r0 + mc] = torch.logsumexp(row_part, 0)
        else:
            row[r0:r0 + mc] = row_part.sum(0)
        if need_col:
            part = torch.logsumexp(col_part, 0)
            col = part if r0 == 0 else torch.logaddexp(col, part)
    return row, col


def backward(x, y, scale, bias, kind, row, col, w_row, w_col):
    x, y, scale, bias, flags = _prep(x, y, scale, bias, kind)
    softmax = kind == "softmax"
    has_col = softmax and w_col is not None
    if has_col and col is None:
        raise ValueError("w_col given without col statistics")
    M, D = x.shape
    N = y.shape[0]
    dev = x.device
    f32 = dict(dtype=torch.float32, device=dev)
    row = row.detach().to(**f32).contiguous()
    w_row = w_row.detach().to(**f32).contiguous()
    col = col.detach().to(**f32).contiguous() if has_col else row
    w_col = w_col.detach().to(**f32).contiguous() if has_col else w_row
    if M == 0 or N == 0:
        return (torch.zeros((M, D), **f32), torch.zeros((N, D), **f32),
                torch.zeros(2, dtype=torch.float64, device=dev))
    cfg_dx, cfg_dy = _configs(dev)[1:]
    common = dict(IS_SOFTMAX=softmax, HAS_COL=has_col, **flags)

    bm, bn, bd, warps, stages = cfg_dx
    blocks = triton.cdiv(M, bm)
    splits, per = _splits(blocks, triton.cdiv(N, bn), dev)
    dx = torch.zeros((splits, M, D), **f32)
    stats = torch.empty((blocks * splits, 2), **f32)
    _bwd_dx_kernel[(blocks, splits)](
        x, y, scale, bias, row, col, w_row, w_col, dx, stats, M, N, D,
        x.stride(0), x.stride(1), y.stride(0), y.stride(1), per, **common,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, num_warps=warps, num_stages=stages,
    )

    bm, bn, bd, warps, stages = cfg_dy
    blocks = triton.cdiv(N, bn)
    splits_y, per = _splits(blocks, triton.cdiv(M, bm), dev)
    dy = torch.zeros((splits_y, N, D), **f32)
    _bwd_dy_kernel[(blocks, splits_y)](
        x, y, scale, bias, row, col, w_row, w_col, dy, M, N, D,
        x.stride(0), x.stride(1), y.stride(0), y.stride(1), per, **common,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, num_warps=warps, num_stages=stages,
    )
    dx = dx[0] if splits == 1 else dx.sum(0)
    dy = dy[0] if splits_y == 1 else dy.sum(0)
    return dx, dy, stats.to(torch.float64).sum(0)
