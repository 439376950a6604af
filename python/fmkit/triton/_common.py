"""Helpers shared by the fmkit Triton kernels (clip_loss, perceiver_attention,
media_cross_attention).

The @triton.jit helpers are ordinary jit functions: kernels in the other modules import and call
them, the compiler inlines them, and constexpr arguments stay constexpr through the call.
The host-side helpers pick dot precision flags and attention tile configs.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

LOG2E = 1.4426950408889634
# Attention kernels keep the q / dq / acc tiles in registers as [BLOCK_L, BLOCK_D].
MAX_HEAD_DIM = 256


# ---- jit helpers ----

@triton.jit
def mma(a, b, acc, PREC: tl.constexpr, UPCAST: tl.constexpr):
    """acc + a @ b with fp32 accumulation (tl.dot with input_precision=PREC).

    UPCAST: the interpreter's tl.dot mishandles bf16 operands (reads them as raw bits), so under
    TRITON_INTERPRET bf16 tiles are widened first (exact: bf16 -> fp32 is lossless).
    """
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PREC)


@triton.jit
def tile_range(start, BLOCK: tl.constexpr, n):
    """(int64 indices start .. start + BLOCK - 1, mask of those < n)."""
    idx = (start + tl.arange(0, BLOCK)).to(tl.int64)
    return idx, idx < n


@triton.jit
def attn_query_block(H, L, D, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
    """Coordinates of an attention program on grid (query blocks, B*H):
    (bh, b, h, query rows rl, rl < L, d lanes rd, rd < D); bh and rl are int64."""
    pid_l = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    rl, l_ok = tile_range(pid_l * BLOCK_L, BLOCK_L, L)
    rd = tl.arange(0, BLOCK_D)
    return bh, b, h, rl, l_ok, rd, rd < D


@triton.jit
def attn_scores(q, kt, qk_scale, PREC: tl.constexpr, UPCAST: tl.constexpr,
                BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr):
    """Base-2 attention scores q @ kt * qk_scale [BLOCK_Q, BLOCK_N] in fp32 (kt is [BLOCK_D, BLOCK_N],
    qk_scale = scale * log2(e)); the caller masks them."""
    return mma(q, kt, tl.zeros((BLOCK_Q, BLOCK_N), dtype=tl.float32), PREC, UPCAST) * qk_scale


@triton.jit
def online_softmax_update(s, m_i, m_ref, l_i, acc, v_ptrs, v_mask, PREC: tl.constexpr, UPCAST: tl.constexpr):
    """One flash-attention step over a key tile: rescales the running sum l_i and P @ V
    accumulator acc from max m_i to m_ref, then adds p = exp2(s - m_ref) and p @ v.

    s: base-2 scores [BLOCK_Q, BLOCK_N] (-inf where masked); m_ref: the new running max (or a
    finite stand-in for rows that have seen no key yet); v [BLOCK_N, BLOCK_D] is loaded from
    v_ptrs (0 where not v_mask); p is rounded to v's dtype for the product, as an autocast
    forward would. Returns (l_i, acc); the caller updates m_i.
    """
    alpha = tl.exp2(m_i - m_ref)
    p = tl.exp2(s - m_ref[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    v = tl.load(v_ptrs, mask=v_mask, other=0.0)
    acc = mma(p.to(v.dtype), v, acc * alpha[:, None], PREC, UPCAST)
    return l_i, acc


@triton.jit
def store_attn_out(out_ptr, lse_ptr, m_i, l_i, acc, row0, rows, row_ok, rd, d_ok, D):
    """Normalises the online-softmax state and stores out [rows, D] (out dtype) and the natural-log
    lse [rows] (fp32), both contiguous from row row0.

    Rows that saw no key (l_i == 0, acc == 0) get out = 0 exactly and lse = -inf instead of 0/0.
    """
    has = l_i > 0
    out = acc / tl.where(has, l_i, 1.0)[:, None]
    lse = tl.where(has, (m_i + tl.log2(tl.where(has, l_i, 1.0))) * 0.6931471805599453, float("-inf"))
    tl.store(out_ptr + (row0 + rows)[:, None] * D + rd[None, :], out.to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None] & d_ok[None, :])
    tl.store(lse_ptr + row0 + rows, lse, mask=row_ok)


@triton.jit
def attn_delta(do, out_ptr, row0, rows, rd, mask, D):
    """delta_i = sum_d dout_id out_id in fp32, out read from its contiguous rows row0 + rows."""
    o = tl.load(out_ptr + (row0 + rows)[:, None] * D + rd[None, :], mask=mask, other=0.0)
    return tl.sum(do.to(tl.float32) * o.to(tl.float32), axis=1)


@triton.jit
def attn_dscores(p, do, vt, delta, PREC: tl.constexpr, UPCAST: tl.constexpr,
                 BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr):
    """dS = P * (dout @ vt - delta), rounded to the input dtype (do's: dout is cast to it on the host)
    for the dS K and dS^T q products."""
    dp = mma(do, vt, tl.zeros((BLOCK_Q, BLOCK_N), dtype=tl.float32), PREC, UPCAST)
    return (p * (dp - delta[:, None])).to(do.dtype)


# ---- host side ----

def dot_flags(dtype, device):
    """PREC / UPCAST constexpr flags for `mma` given the operands' dtype and device."""
    upcast = device.type == "cpu" and dtype == torch.bfloat16  # see mma
    # "tf32" is ignored for 16-bit operands; fp32 operands get exact IEEE products.
    prec = "ieee" if dtype == torch.float32 or upcast else "tf32"
    return dict(PREC=prec, UPCAST=upcast)


def check_head_dim(D):
    if D > MAX_HEAD_DIM:
        raise ValueError(f"head dim {D} > {MAX_HEAD_DIM} is not supported by these kernels")


def attention_config(device, D, backward=False):
    """(BLOCK_Q, BLOCK_N, BLOCK_D, num_warps, num_stages) of the attention kernels."""
    bd = max(16, triton.next_power_of_2(D))
    if device.type == "cpu":  # interpreter: small tiles keep the numpy work per program low
        return 16, 16, bd, 4, 1
    if backward:
        # The backward's live set (q, dout, dq or dK / dV plus S / P / dP / dS) is about twice the
        # forward's: 32-key tiles and 8 warps are the largest sm_90 config without register spills
        # (ptxas -v at D = 64, bf16).
        return 64, 32, bd, 8, 2
    return 64, 64, bd, 4, 2
