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

Design (memory O((M + N) d) plus bounded scratch; nothing M x N is ever allocated):
* `_fwd_kernel`: one program per BLOCK_M x BLOCK_N logit tile (grouped launch order so that
  neighbouring programs share X / Y tiles in L2), <x, y> by `tl.dot` over BLOCK_D chunks of d,
  i.e. a plain GEMM main loop that Triton pipelines well (wgmma on Hopper). Each tile writes its
  per-row partial (max + log sum exp over its columns, or the softplus sum) into a
  [column blocks, rows] scratch and its per-column partial into [row blocks, N]; torch.logsumexp
  / sum merge them. Rows go in launches that keep both scratches under `_SCRATCH_ELEMS` floats.
  A 2-D tile grid fills the GPU for any M, N (no split heuristics).
* backward, per chunk of rows (chunk * N <= `_G_SCRATCH_ELEMS`): `_grad_kernel` recomputes the
  chunk's logit tiles exactly as the forward did (same tiles, same d order), forms G, reduces
  the stats partials per tile, and writes scale * G (rounded to the input dtype, as an autocast
  backward would) into a [chunk, N] scratch. Then two plain GEMMs with fp32 accumulation:
      dx[chunk] = G_c @ Y,    dy += G_c^T @ X[chunk]      (dy stays fp32 across chunks).
  For 16-bit inputs these are cuBLAS GEMMs with fp32 output (torch.mm / addmm out_dtype);
  fp32 inputs (exact IEEE products wanted, independent of torch's global TF32 switch), torch
  builds without out_dtype, and `_GEMM = "triton"` use `_mm_kernel`, a Triton GEMM.
  Cost: 1 (forward) + 3 (recompute, two products) N^2 d matmuls, all at GEMM efficiency,
  plus writing and twice reading G (6 bytes per logit in 16-bit). Deterministic: no atomics.
  G is pre-multiplied by a power of two that brings its bound |scale| (max|w_row| + max|w_col|)
  into [1, 2) and divided out after the fp32 products: exact, and in fp16 the entries then use
  the format's range from its top; unscaled, |scale| w p with w = 1/(2N) underflows to 0 for
  most p at large N.

Predicted for an H100 (SXM, ~780 TFLOP/s bf16 dense, 3 TB/s), N = 32768, d = 768, bf16:
forward 2 N^2 d = 1.65 TFLOP at ~550 TFLOP/s ~3-3.5 ms; G kernel (same GEMM + 2 GB of G
stores) ~3.5-4.5 ms; two cuBLAS products ~5 ms; total ~12-14 ms.
Measured on an H100 80GB HBM3 (2026-11-26, benchmarks/results/h100-2026-11-26-contrastive-
profile.txt): forward 5.6 ms, backward 11.0 ms, forward + backward 18.5 ms (CLIP) / 19.6 ms
(SigLIP) against 55.3 / 40.9 ms for the naive bf16-logits loss; N = 262144: 2.99 s. The
Triton tile loops run at ~300 TFLOP/s, not the 550 assumed; a 128x256 backward tile measured
10.2 ms (bf16 only: in fp32 it exceeds shared memory) and is the default of the G kernel for
16-bit inputs on sm_90 (`_GRAD_CONFIG`; fp32 and other GPUs keep 128x128, `_GRAD_CONFIG_SMALL`).

Precision: 16-bit inputs go to the tensor cores in their own dtype with fp32 accumulation.
fp32 inputs use input_precision="ieee" (exact fp32 products, slower than TF32, chosen for
correctness). Padded rows / columns / d lanes load as 0 and are masked out of every reduction
(-inf in LSEs, 0 in G). scale and bias are 0-d fp32 tensors read inside the kernels (no host
sync; CUDA-graph friendly given fixed shapes).
Tile configs (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) are module constants so that
benchmarks/profile_contrastive_gpu.py can compare them; CPU (interpreter, TRITON_INTERPRET=1,
tests) uses 32x32 tiles with BLOCK_K 16.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ._common import FLOAT_DTYPES, dot_flags, mma, tile_range

# Forward row / column partials budget (fp32 elements) per launch; tests lower it to exercise
# the row chunking.
_SCRATCH_ELEMS = 1 << 26
# Backward G chunk budget (elements of the input dtype): 512 MiB in bf16, N = 256k -> 1024 rows.
_G_SCRATCH_ELEMS = 1 << 28
# Gradient products: "auto" (cuBLAS for 16-bit inputs where torch has fp32-output GEMMs, else
# the Triton GEMM), "cublas" (16-bit only) or "triton".
_GEMM = "auto"
# CUDA tile configs: (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages). 128x128x64 bf16 with
# 3 stages is 96 KiB of shared memory and 64 fp32 accumulator registers per thread at 8 warps,
# so two programs fit an SM and one's exp epilogue overlaps the other's main loop.
_FWD_CONFIG = (128, 128, 64, 8, 3)
# The backward's G kernel for 16-bit inputs on sm_90 (Hopper): 128x256 tiles, measured on an H100
# (benchmarks/results/h100-2026-11-26-contrastive-profile.txt, N = 32768, d = 768, bf16) at 10.2 /
# 9.8 ms against 12.4 / 13.0 ms for 128x128 in the same sweep (CLIP / SigLIP; the profile's main
# table has 11.0 ms for the 128x128 CLIP backward). Its 3 stages of X and Y tiles take
# 144 KiB of shared memory in 16-bit: fp32 inputs (twice that) and other GPUs (not measured; most
# have less shared memory per block) use _GRAD_CONFIG_SMALL.
_GRAD_CONFIG = (128, 256, 64, 8, 3)
_GRAD_CONFIG_SMALL = (128, 128, 64, 8, 3)
_MM_CONFIG = (128, 128, 64, 8, 3)
# Interpreter: small tiles keep the numpy work per program low.
_CPU_CONFIG = (32, 32, 16, 4, 1)
# Row blocks that sweep the column tiles together (L2 reuse of the Y tiles).
_GROUP_M = 8


@triton.jit
def _tile_coords(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(row block, column block) of program pid in grouped order: GROUP_M row blocks walk the
    column blocks together, so a Y tile is read from DRAM once per group instead of once per row block."""
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    width = GROUP_M * grid_n
    first_m = (pid // width) * GROUP_M
    size_m = tl.minimum(grid_m - first_m, GROUP_M)
    return first_m + (pid % width) % size_m, (pid % width) // size_m


@triton.jit
def _dot_strided(a_ptr, b_ptr, rm, m_ok, rn, n_ok, K, sam, sak, sbk, sbn,
                 PREC: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr):
    """A[rm, :] @ B[:, rn] in fp32 for A [., K] (strides sam, sak) and B [K, .] (strides sbk, sbn);
    padded rows / cols / k lanes load as 0. Pointers advance by increments (no per-step index
    math); EVEN_K (K % BLOCK_K == 0) drops the k mask."""
    rk = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + rm[:, None] * sam + rk[None, :] * sak
    b_ptrs = b_ptr + rk[:, None] * sbk + rn[None, :] * sbn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:
            a = tl.load(a_ptrs, mask=m_ok[:, None], other=0.0)
            b = tl.load(b_ptrs, mask=n_ok[None, :], other=0.0)
        else:
            a = tl.load(a_ptrs, mask=m_ok[:, None] & (rk[None, :] < K - k0), other=0.0)
            b = tl.load(b_ptrs, mask=(rk[:, None] < K - k0) & n_ok[None, :], other=0.0)
        acc = mma(a, b, acc, PREC, UPCAST)
        a_ptrs += BLOCK_K * sak
        b_ptrs += BLOCK_K * sbk
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
def _load_stats(stat_ptr, w_ptr, idx, ok):
    """(LSE statistic, weight) of rows / columns idx; padding loads stat = +inf and weight 0."""
    return tl.load(stat_ptr + idx, mask=ok, other=float("inf")), tl.load(w_ptr + idx, mask=ok, other=0.0)


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
def _fwd_kernel(x_ptr, y_ptr, scale_ptr, bias_ptr, row_part_ptr, col_part_ptr,
                M, N, D, sxm, sxd, syn, syd,
                IS_SOFTMAX: tl.constexpr, NEED_COL: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_K: tl.constexpr,
                GROUP_M: tl.constexpr):
    pid_m, pid_n = _tile_coords(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rm, row_ok = tile_range(pid_m * BLOCK_M, BLOCK_M, M)
    rn, col_ok = tile_range(pid_n * BLOCK_N, BLOCK_N, N)
    # Y read as [d, N] through its strides: the dot needs no explicit transpose.
    z = _dot_strided(x_ptr, y_ptr, rm, row_ok, rn, col_ok, D, sxm, sxd, syd, syn,
                     PREC, UPCAST, BLOCK_M, BLOCK_N, BLOCK_D, EVEN_K) * tl.load(scale_ptr) + tl.load(bias_ptr)
    if IS_SOFTMAX:
        # A tile holds >= 1 real column and >= 1 real row, so both maxima are finite.
        zr = tl.where(col_ok[None, :], z, float("-inf"))
        rmax = tl.max(zr, axis=1)
        part = rmax + tl.log(tl.sum(tl.exp(zr - rmax[:, None]), axis=1))
        if NEED_COL:
            zc = tl.where(row_ok[:, None], z, float("-inf"))
            cmax = tl.max(zc, axis=0)
            cpart = cmax + tl.log(tl.sum(tl.exp(zc - cmax[None, :]), axis=0))
            tl.store(col_part_ptr + pid_m.to(tl.int64) * N + rn, cpart, mask=col_ok)
    else:
        part = tl.sum(tl.where(col_ok[None, :], _softplus(z), 0.0), axis=1)
    tl.store(row_part_ptr + pid_n.to(tl.int64) * M + rm, part, mask=row_ok)


@triton.jit
def _grad_kernel(x_ptr, y_ptr, scale_ptr, bias_ptr, gmul_ptr, row_ptr, col_ptr, wr_ptr, wc_ptr,
                 g_ptr, stats_ptr, M, N, D, sxm, sxd, syn, syd,
                 IS_SOFTMAX: tl.constexpr, HAS_COL: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_K: tl.constexpr,
                 GROUP_M: tl.constexpr):
    """G tiles of rows [0, M) of x (a chunk) into g [M, N] (input dtype, scale * gmul * G) and
    per-tile (sum G S, sum G) into stats[program]."""
    pid = tl.program_id(0)
    pid_m, pid_n = _tile_coords(pid, M, N, BLOCK_M, BLOCK_N, GROUP_M)
    scale = tl.load(scale_ptr)
    rm, row_ok = tile_range(pid_m * BLOCK_M, BLOCK_M, M)
    rn, col_ok = tile_range(pid_n * BLOCK_N, BLOCK_N, N)
    # Same tiles and d order as _fwd_kernel, so G agrees with the forward's statistics to fp32
    # rounding (exp(L - row) stays <= ~1).
    s = _dot_strided(x_ptr, y_ptr, rm, row_ok, rn, col_ok, D, sxm, sxd, syd, syn,
                     PREC, UPCAST, BLOCK_M, BLOCK_N, BLOCK_D, EVEN_K)
    r, wr = _load_stats(row_ptr, wr_ptr, rm, row_ok)
    c = tl.zeros((BLOCK_N,), dtype=tl.float32)
    wc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    if HAS_COL:
        c, wc = _load_stats(col_ptr, wc_ptr, rn, col_ok)
    g = _grad_tile(s * scale + tl.load(bias_ptr), r, wr, c, wc, row_ok, col_ok, IS_SOFTMAX, HAS_COL)
    tl.store(stats_ptr + 2 * pid, tl.sum(tl.sum(g * s, axis=1), axis=0))
    tl.store(stats_ptr + 2 * pid + 1, tl.sum(tl.sum(g, axis=1), axis=0))
    gq = (g * (scale * tl.load(gmul_ptr))).to(g_ptr.dtype.element_ty)
    tl.store(g_ptr + rm[:, None] * N + rn[None, :], gq, mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _mm_kernel(a_ptr, b_ptr, c_ptr, M, N, K, sam, sak, sbk, sbn, scm,
               ACCUMULATE: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr,
               GROUP_M: tl.constexpr):
    """C (+)= A @ B with fp32 accumulation; C is fp32 with unit column stride. Each program owns
    its C tile, so the read-modify-write of ACCUMULATE is race-free."""
    pid_m, pid_n = _tile_coords(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rm, m_ok = tile_range(pid_m * BLOCK_M, BLOCK_M, M)
    rn, n_ok = tile_range(pid_n * BLOCK_N, BLOCK_N, N)
    acc = _dot_strided(a_ptr, b_ptr, rm, m_ok, rn, n_ok, K, sam, sak, sbk, sbn,
                       PREC, UPCAST, BLOCK_M, BLOCK_N, BLOCK_K, EVEN_K)
    ptrs = c_ptr + rm[:, None] * scm + rn[None, :]
    mask = m_ok[:, None] & n_ok[None, :]
    if ACCUMULATE:
        acc += tl.load(ptrs, mask=mask, other=0.0)
    tl.store(ptrs, acc, mask=mask)


# ---- host side ----

def _config(kind, device, dtype=None):
    if device.type == "cpu":
        return _CPU_CONFIG
    if kind == "grad":
        big = dtype in (torch.float16, torch.bfloat16) and _capability(device) == (9, 0)
        return _GRAD_CONFIG if big else _GRAD_CONFIG_SMALL
    return {"fwd": _FWD_CONFIG, "mm": _MM_CONFIG}[kind]


def _capability(device):
    return _cuda_capability(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _cuda_capability(index):
    return tuple(torch.cuda.get_device_capability(index))


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


def _row_chunk(row_blocks, bm, total):
    """Rows per launch: row_blocks (the budget's worth, at least 1) blocks of bm rows."""
    return min(total, max(1, row_blocks) * bm)


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
    bm, bn, bd, warps, stages = _config("fwd", dev)
    n_blocks = triton.cdiv(N, bn)
    # Both scratches ([n_blocks, chunk] rows, [chunk / bm, N] columns) stay ~ under _SCRATCH_ELEMS
    # (e.g. N = 256k: 32768 rows a launch, 2 x 256 MiB).
    chunk = _row_chunk(_SCRATCH_ELEMS // (n_blocks * max(bm, bn)), bm, M)
    for r0 in range(0, M, chunk):
        xc = x[r0:r0 + chunk]
        mc = xc.shape[0]
        m_blocks = triton.cdiv(mc, bm)
        row_part = torch.empty((n_blocks, mc), dtype=torch.float32, device=dev)
        col_part = torch.empty((m_blocks, N), dtype=torch.float32, device=dev) if need_col else row_part
        _fwd_kernel[(m_blocks * n_blocks,)](
            xc, y, scale, bias, row_part, col_part, mc, N, D,
            xc.stride(0), xc.stride(1), y.stride(0), y.stride(1),
            IS_SOFTMAX=softmax, NEED_COL=need_col, **flags,
            BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, EVEN_K=D % bd == 0, GROUP_M=_GROUP_M,
            num_warps=warps, num_stages=stages,
        )
        if n_blocks == 1:
            row[r0:r0 + mc] = row_part[0]
        elif softmax:
            row[r0:r0 + mc] = torch.logsumexp(row_part, 0)
        else:
            row[r0:r0 + mc] = row_part.sum(0)
        if need_col:
            part = col_part[0] if m_blocks == 1 else torch.logsumexp(col_part, 0)
            col = part.clone() if r0 == 0 else torch.logaddexp(col, part)
    return row, col


@functools.cache
def _cublas_fp32_out(device):
    """How torch's cuBLAS GEMMs return fp32 from 16-bit operands on this device: "addmm" (mm and
    addmm take out_dtype, torch >= 2.8 on CUDA), "mm" (mm only) or None. Checked once on a tiny
    product that is exact in fp32."""
    a = torch.arange(-6, 6, device=device, dtype=torch.float32).reshape(3, 4) / 4
    b = a.T.contiguous()
    ref = a @ b

    def works(f, want):
        try:
            got = f()
            return got.dtype == torch.float32 and torch.equal(got, want)
        except (TypeError, RuntimeError, NotImplementedError):
            return False

    if not works(lambda: torch.mm(a.bfloat16(), b.bfloat16(), out_dtype=torch.float32), ref):
        return None
    acc = torch.ones(3, 3, device=device)
    return "addmm" if works(lambda: torch.addmm(acc, a.half(), b.half(), out_dtype=torch.float32), ref + 1) else "mm"


def _cublas_mode(x):
    """How `_cublas_product` runs for these inputs, or None for the Triton GEMM."""
    if _GEMM == "triton" or x.dtype == torch.float32:
        return None  # fp32: exact products whatever torch's TF32 setting
    if x.device.type == "cpu":
        return "cpu"  # tests: the chunk / accumulation logic the GPU runs, with a CPU GEMM
    mode = _cublas_fp32_out(x.device)
    if _GEMM == "cublas" and mode is None:
        raise RuntimeError("_GEMM='cublas' needs torch.mm(..., out_dtype=torch.float32) (torch >= 2.8, CUDA)")
    return mode


def _cublas_product(a, b, acc, mode):
    """acc + a @ b (acc None: a @ b) in fp32 from 16-bit operands; may reuse acc's storage."""
    if mode == "cpu":  # interpreter tests: exact widening + an fp32 GEMM stand in for cuBLAS
        out = a.float() @ b.float()
    elif acc is not None and mode == "addmm":  # the accumulation rides in cuBLAS's epilogue
        return torch.addmm(acc, a, b, out_dtype=torch.float32)
    else:
        out = torch.mm(a, b, out_dtype=torch.float32)
    return out if acc is None else acc.add_(out)


def _triton_product(a, b, out, accumulate, flags):
    """out (+)= a @ b with the Triton GEMM; out is fp32 [M, N] with unit column stride."""
    M, K = a.shape
    N = b.shape[1]
    bm, bn, bk, warps, stages = _config("mm", a.device)
    _mm_kernel[(triton.cdiv(M, bm) * triton.cdiv(N, bn),)](
        a, b, out, M, N, K, a.stride(0), a.stride(1), b.stride(0), b.stride(1), out.stride(0),
        ACCUMULATE=accumulate, **flags, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, EVEN_K=K % bk == 0,
        GROUP_M=_GROUP_M, num_warps=warps, num_stages=stages,
    )
    return out


def _g_multiplier(scale, w_row, w_col):
    """2^-e with 2^e <= |scale| (max|w_row| + max|w_col|) < 2^(e+1): the bound of |scale G|
    maps into [1, 2). Device-side (no sync); e clamped so that fp32 never overflows."""
    bound = scale.abs() * (w_row.abs().amax() + (w_col.abs().amax() if w_col is not None else 0.0))
    e = torch.clamp(torch.floor(torch.log2(bound)), -100.0, 100.0)
    return torch.where(torch.isnan(e), torch.zeros_like(e), e).neg().exp2().reshape(())


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
    gmul = _g_multiplier(scale, w_row, w_col if has_col else None)
    bm, bn, bd, warps, stages = _config("grad", dev, x.dtype)
    n_blocks = triton.cdiv(N, bn)
    chunk = _row_chunk(_G_SCRATCH_ELEMS // (n_blocks * bn * bm), bm, M)
    g_buf = torch.empty((chunk, N), dtype=x.dtype, device=dev)
    # Chunks start on row-block boundaries, so chunk r0 owns programs from (r0 / bm) * n_blocks on.
    stats = torch.empty((triton.cdiv(M, bm) * n_blocks, 2), **f32)
    cublas = _cublas_mode(x)
    # cuBLAS wants one unit stride; copy doubly strided operands once rather than per chunk.
    x_mm = x if 1 in x.stride() else x.contiguous()
    y_mm = y if 1 in y.stride() else y.contiguous()
    dx = torch.empty((M, D), **f32)
    dy = None if cublas else torch.empty((N, D), **f32)
    for r0 in range(0, M, chunk):
        xc = x[r0:r0 + chunk]
        mc = xc.shape[0]
        g = g_buf[:mc]
        _grad_kernel[(triton.cdiv(mc, bm) * n_blocks,)](
            xc, y, scale, bias, gmul, row[r0:], col, w_row[r0:], w_col, g, stats[(r0 // bm) * n_blocks:],
            mc, N, D, xc.stride(0), xc.stride(1), y.stride(0), y.stride(1),
            IS_SOFTMAX=softmax, HAS_COL=has_col, **flags,
            BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, EVEN_K=D % bd == 0, GROUP_M=_GROUP_M,
            num_warps=warps, num_stages=stages,
        )
        if cublas:
            dx[r0:r0 + mc] = _cublas_product(g, y_mm, None, cublas)
            dy = _cublas_product(g.T, x_mm[r0:r0 + mc], dy, cublas)
        else:
            _triton_product(g, y, dx[r0:r0 + mc], False, flags)
            _triton_product(g.T, xc, dy, r0 > 0, flags)
    inv = 1.0 / gmul
    return dx.mul_(inv), dy.mul_(inv), stats.to(torch.float64).sum(0)
