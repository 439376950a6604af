"""Triton kernels of the media-masked text-to-image cross-attention, computed block-diagonally
by image index (contract in csrc/ops/media_cross_attention.h).

q [B, H, T, D]; k, v [B, H, n_media * P, D] (P = latents per media; the keys of image m are rows
(m-1)P ... mP-1); media_index int64 [B, T] in 0..n_media (validated by the caller); fp32 / fp16 /
bf16 q / k / v (same dtype), any strides. Query (b, t) with m = media_index[b, t] >= 1 attends only
to the P keys of image m:
    S = scale * q k_m^T (fp32),  P = softmax(S),  out = P v_m;
m == 0 gives out = 0 exactly, lse = -inf and no gradient. `forward` returns out (input dtype,
contiguous) and lse [B, H, T] fp32; `backward` returns dq, dk, dv as fp32 contiguous tensors:
    delta = sum_d dout out,  dS = P * (dout v_m^T - delta),  dq = scale dS k_m,
    dk_m += scale dS^T q,  dv_m += P^T dout  (over every query of image m).
No dense [T, n_media P] mask or score matrix is ever built.

Kernels
* `_fwd_kernel`, grid (query blocks, B*H): loads the BLOCK_T indices of its query block and loops
  only over the images lo..hi present in it (lo = smallest non-zero index, hi = largest); for each
  image, over its P keys in BLOCK_N tiles, with an online softmax in which scores of queries of
  another image are -inf. With cumsum indices a block holds 1-2 images, so the work is about
  P / (n_media P) of dense attention. A block of index-0 queries does no key work at all.
* `_bwd_dq_kernel`, same grid and loop: recomputes P = exp(S - lse), accumulates dq in registers,
  and writes delta (from its own out / dout rows) for the next kernel.
* `_bwd_dkv_kernel`, grid (n_media * key tiles per image, B*H): each program owns one BLOCK_N key
  tile of one image and loops over the query blocks that cover the span [first, last] of tokens
  with that index (first / last per (b, image) come from two scatter_reduce calls over [B, T] on
  the host side, no host sync); queries of other images are masked. dk / dv accumulate in
  registers and are stored once: deterministic, no atomics (the alternative, atomics from the dq
  kernel, saves one recompute of S but makes dk / dv run-to-run nondeterministic). The span is
  exact for monotone (cumsum) indices; arbitrary index orders stay correct but may scan more.

Precision: S, softmax statistics and accumulators fp32; P and dS are rounded to the input dtype
before the P @ V, P^T dout, dS K and dS^T q products of 16-bit inputs (tensor cores, as an
autocast backward would); fp32 inputs use input_precision="ieee". Under TRITON_INTERPRET (CPU) bf16
tiles are widened to fp32 before tl.dot, which the interpreter mishandles for bf16 operands.

Tiles: BLOCK_D = next power of two >= max(D, 16) (tl.dot needs >= 16 per dimension; padded d lanes
load as 0; D <= 256). CUDA: BLOCK_T = 64; forward BLOCK_N = 64 (one key tile per image at P = 64),
4 warps; backward BLOCK_N = 32, 8 warps (no register spills on sm_90 per ptxas -v); 2 stages. Not
yet timed or tuned on a GPU. CPU (interpreter): 16 x 16. P may be any size >= 1 (tiles past P are
masked). The kernels trust media_index <= n_media (an index past it would read out of bounds: the
caller validates, as the contract says); negative indices would behave like 0. The decode path (T =
1, index = last image) is the same code.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (FLOAT_DTYPES, LOG2E, attention_config, attn_delta, attn_dscores, attn_query_block,
                      attn_scores, check_head_dim, dot_flags, mma, online_softmax_update, store_attn_out,
                      tile_range)


@triton.jit
def _image_range(idx):
    """(lo, hi + 1) of the non-zero indices of a block; an empty range when all are 0."""
    lo = tl.min(tl.where(idx > 0, idx, 2147483647), axis=0)
    hi = tl.max(idx, axis=0)
    return lo, tl.maximum(hi + 1, lo)


@triton.jit
def _query_block(mi_ptr, H, T, D, smb, smt, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    """attn_query_block plus the rows x lanes mask and the media_index of the rows:
    (bh, b, h, rt, rt < T, rd, rd < D, td_ok, idx)."""
    bh, b, h, rt, t_ok, rd, d_ok = attn_query_block(H, T, D, BLOCK_T, BLOCK_D)
    td_ok = t_ok[:, None] & d_ok[None, :]
    idx = tl.load(mi_ptr + b * smb + rt * smt, mask=t_ok, other=0).to(tl.int32)
    return bh, b, h, rt, t_ok, rd, d_ok, td_ok, idx


@triton.jit
def _image_keys(m, n0, P, BLOCK_N: tl.constexpr):
    """Key tile n0 .. n0 + BLOCK_N - 1 of image m (1-based): (int64 key rows, mask of tile entries < P)."""
    rn = n0 + tl.arange(0, BLOCK_N)
    n_ok = rn < P
    # (m - 1) * P + rn < n_media * P fits int32; the row offsets are widened.
    return ((m - 1) * P + rn).to(tl.int64), n_ok


@triton.jit
def _fwd_kernel(q_ptr, k_ptr, v_ptr, mi_ptr, out_ptr, lse_ptr,
                H, T, P, D, qk_scale,
                sqb, sqh, sqt, sqd, skb, skh, skn, skd, svb, svh, svn, svd, smb, smt,
                PREC: tl.constexpr, UPCAST: tl.constexpr,
                BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    bh, b, h, rt, t_ok, rd, d_ok, td_ok, idx = _query_block(mi_ptr, H, T, D, smb, smt, BLOCK_T, BLOCK_D)
    q = tl.load(q_ptr + b * sqb + h * sqh + rt[:, None] * sqt + rd[None, :] * sqd, mask=td_ok, other=0.0)
    k_base = k_ptr + b * skb + h * skh
    v_base = v_ptr + b * svb + h * svh
    m_i = tl.full((BLOCK_T,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_T,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
    lo, hi = _image_range(idx)
    for m in range(lo, hi):
        row_m = idx == m
        for n0 in range(0, P, BLOCK_N):
            rk, n_ok = _image_keys(m, n0, P, BLOCK_N)
            kt = tl.load(k_base + rk[None, :] * skn + rd[:, None] * skd,
                         mask=n_ok[None, :] & d_ok[:, None], other=0.0)
            s = attn_scores(q, kt, qk_scale, PREC, UPCAST, BLOCK_T, BLOCK_N)
            s = tl.where(row_m[:, None] & n_ok[None, :], s, float("-inf"))
            # Rows of other images see an all -inf tile: a finite stand-in max keeps
            # exp2(-inf - m) = 0 and avoids -inf - -inf = NaN; their (m_i, l_i, acc) are unchanged.
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
            l_i, acc = online_softmax_update(s, m_i, m_use, l_i, acc,
                                             v_base + rk[:, None] * svn + rd[None, :] * svd,
                                             n_ok[:, None] & d_ok[None, :], PREC, UPCAST)
            m_i = m_new
    # Index-0 rows never got a key: l_i = 0, acc = 0, so out is exactly 0 and lse = -inf.
    store_attn_out(out_ptr, lse_ptr, m_i, l_i, acc, bh * T, rt, t_ok, rd, d_ok, D)


@triton.jit
def _bwd_dq_kernel(q_ptr, k_ptr, v_ptr, mi_ptr, out_ptr, lse_ptr, do_ptr, dq_ptr, delta_ptr,
                   H, T, P, D, qk_scale, scale,
                   sqb, sqh, sqt, sqd, skb, skh, skn, skd, svb, svh, svn, svd, smb, smt,
                   sdob, sdoh, sdot, sdod,
                   PREC: tl.constexpr, UPCAST: tl.constexpr,
                   BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    bh, b, h, rt, t_ok, rd, d_ok, td_ok, idx = _query_block(mi_ptr, H, T, D, smb, smt, BLOCK_T, BLOCK_D)
    q = tl.load(q_ptr + b * sqb + h * sqh + rt[:, None] * sqt + rd[None, :] * sqd, mask=td_ok, other=0.0)
    do = tl.load(do_ptr + b * sdob + h * sdoh + rt[:, None] * sdot + rd[None, :] * sdod, mask=td_ok, other=0.0)
    delta = attn_delta(do, out_ptr, bh * T, rt, rd, td_ok, D)
    tl.store(delta_ptr + bh * T + rt, delta, mask=t_ok)
    # Index-0 rows have lse = -inf; their scores are masked to -inf below, and a finite lse
    # keeps exp2(-inf - lse) = 0 (not NaN).
    lse2 = tl.load(lse_ptr + bh * T + rt, mask=t_ok, other=0.0) * 1.4426950408889634
    lse2 = tl.where(idx > 0, lse2, 0.0)
    k_base = k_ptr + b * skb + h * skh
    v_base = v_ptr + b * svb + h * svh
    dq = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
    lo, hi = _image_range(idx)
    for m in range(lo, hi):
        row_m = idx == m
        for n0 in range(0, P, BLOCK_N):
            rk, n_ok = _image_keys(m, n0, P, BLOCK_N)
            nd_ok = n_ok[None, :] & d_ok[:, None]
            kt = tl.load(k_base + rk[None, :] * skn + rd[:, None] * skd, mask=nd_ok, other=0.0)
            vt = tl.load(v_base + rk[None, :] * svn + rd[:, None] * svd, mask=nd_ok, other=0.0)
            s = attn_scores(q, kt, qk_scale, PREC, UPCAST, BLOCK_T, BLOCK_N)
            s = tl.where(row_m[:, None] & n_ok[None, :], s, float("-inf"))
            p = tl.exp2(s - lse2[:, None])
            ds = attn_dscores(p, do, vt, delta, PREC, UPCAST, BLOCK_T, BLOCK_N)
            dq = mma(ds, tl.trans(kt), dq, PREC, UPCAST)
    tl.store(dq_ptr + (bh * T + rt)[:, None] * D + rd[None, :], dq * scale, mask=td_ok)


@triton.jit
def _bwd_dkv_kernel(q_ptr, k_ptr, v_ptr, mi_ptr, lse_ptr, do_ptr, delta_ptr, first_ptr, last_ptr,
                    dk_ptr, dv_ptr,
                    H, T, P, D, NK, n_ptiles, n_slots, qk_scale, scale,
                    sqb, sqh, sqt, sqd, skb, skh, skn, skd, svb, svh, svn, svd, smb, smt,
                    sdob, sdoh, sdot, sdod,
                    PREC: tl.constexpr, UPCAST: tl.constexpr,
                    BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    m = pid // n_ptiles + 1  # image owned by this program (1-based, as in media_index)
    rk, n_ok = _image_keys(m, (pid % n_ptiles) * BLOCK_N, P, BLOCK_N)
    rd = tl.arange(0, BLOCK_D)
    d_ok = rd < D
    nd_ok = n_ok[None, :] & d_ok[:, None]
    kt = tl.load(k_ptr + b * skb + h * skh + rk[None, :] * skn + rd[:, None] * skd, mask=nd_ok, other=0.0)
    vt = tl.load(v_ptr + b * svb + h * svh + rk[None, :] * svn + rd[:, None] * svd, mask=nd_ok, other=0.0)
    dk = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    # Tokens with index m lie in [first, last] (first = T, last = -1 when the image is unused).
    first = tl.load(first_ptr + b * n_slots + m)
    last = tl.load(last_ptr + b * n_slots + m)
    for t0 in range((first // BLOCK_T) * BLOCK_T, last + 1, BLOCK_T):
        rt, t_ok = tile_range(t0, BLOCK_T, T)
        td_ok = t_ok[:, None] & d_ok[None, :]
        idx = tl.load(mi_ptr + b * smb + rt * smt, mask=t_ok, other=0).to(tl.int32)
        row_m = idx == m
        q = tl.load(q_ptr + b * sqb + h * sqh + rt[:, None] * sqt + rd[None, :] * sqd, mask=td_ok, other=0.0)
        do = tl.load(do_ptr + b * sdob + h * sdoh + rt[:, None] * sdot + rd[None, :] * sdod,
                     mask=td_ok, other=0.0)
        # Rows of other images (or index 0, lse = -inf) are masked; the finite lse avoids NaN.
        lse2 = tl.load(lse_ptr + bh * T + rt, mask=t_ok, other=0.0) * 1.4426950408889634
        lse2 = tl.where(row_m, lse2, 0.0)
        delta = tl.load(delta_ptr + bh * T + rt, mask=t_ok, other=0.0)
        s = attn_scores(q, kt, qk_scale, PREC, UPCAST, BLOCK_T, BLOCK_N)
        s = tl.where(row_m[:, None] & n_ok[None, :], s, float("-inf"))
        p = tl.exp2(s - lse2[:, None])
        ds = attn_dscores(p, do, vt, delta, PREC, UPCAST, BLOCK_T, BLOCK_N)
        dv = mma(tl.trans(p.to(do.dtype)), do, dv, PREC, UPCAST)
        dk = mma(tl.trans(ds), q, dk, PREC, UPCAST)
    off = (bh * NK + rk)[:, None] * D + rd[None, :]
    ok = n_ok[:, None] & d_ok[None, :]
    tl.store(dk_ptr + off, dk * scale, mask=ok)
    tl.store(dv_ptr + off, dv, mask=ok)


# ---- host side ----

def _prep(q, k, v, media_index, latents_per_media):
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be [B, H, N, D], got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.dtype not in FLOAT_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must share a dtype among f32/f16/bf16, got {q.dtype}, {k.dtype}, {v.dtype}")
    B, H, T, D = q.shape
    P = int(latents_per_media)
    NK = k.shape[2]
    if P < 1 or NK % P != 0:
        raise ValueError(f"keys ({NK}) must be a multiple of latents_per_media ({P})")
    if k.shape != (B, H, NK, D) or v.shape != k.shape:
        raise ValueError(f"k, v must be [B, H, n_media*P, D] matching q {tuple(q.shape)}, "
                         f"got {tuple(k.shape)}, {tuple(v.shape)}")
    if media_index.shape != (B, T) or media_index.dtype != torch.int64:
        raise ValueError(f"media_index must be int64 [B, T] = {(B, T)}, got {media_index.dtype} "
                         f"{tuple(media_index.shape)}")
    check_head_dim(D)
    return q.detach(), k.detach(), v.detach(), media_index.detach(), P, dot_flags(q.dtype, q.device)


def forward(q, k, v, media_index, latents_per_media, scale):
    q, k, v, mi, P, flags = _prep(q, k, v, media_index, latents_per_media)
    B, H, T, D = q.shape
    dev = q.device
    out = torch.empty((B, H, T, D), dtype=q.dtype, device=dev)
    lse = torch.empty((B, H, T), dtype=torch.float32, device=dev)
    if B * H * T == 0:
        return out, lse
    bt, bn, bd, warps, stages = attention_config(dev, D)
    _fwd_kernel[(triton.cdiv(T, bt), B * H)](
        q, k, v, mi, out, lse, H, T, P, D, float(scale) * LOG2E,
        *q.stride(), *k.stride(), *v.stride(), *mi.stride(), **flags,
        BLOCK_T=bt, BLOCK_N=bn, BLOCK_D=bd, num_warps=warps, num_stages=stages,
    )
    return out, lse


def backward(q, k, v, media_index, latents_per_media, out, lse, dout, scale):
    q, k, v, mi, P, flags = _prep(q, k, v, media_index, latents_per_media)
    B, H, T, D = q.shape
    NK = k.shape[2]
    n_media = NK // P
    dev = q.device
    f32 = dict(dtype=torch.float32, device=dev)
    if dout.shape != q.shape or out.shape != q.shape or lse.shape != (B, H, T):
        raise ValueError("out / dout must be [B, H, T, D] and lse [B, H, T]")
    dq = torch.empty((B, H, T, D), **f32)
    dk = torch.empty((B, H, NK, D), **f32)
    dv = torch.empty((B, H, NK, D), **f32)
    if B * H * D == 0:
        return dq, dk, dv
    if T == 0 or NK == 0:
        return dq, dk.zero_(), dv.zero_()
    out = out.detach().contiguous()
    lse = lse.detach().to(torch.float32).contiguous()
    dout = dout.detach().to(q.dtype)
    bt, bn, bd, warps, stages = attention_config(dev, D, backward=True)
    scales = (float(scale) * LOG2E, float(scale))
    delta = torch.empty((B, H, T), **f32)
    _bwd_dq_kernel[(triton.cdiv(T, bt), B * H)](
        q, k, v, mi, out, lse, dout, dq, delta, H, T, P, D, *scales,
        *q.stride(), *k.stride(), *v.stride(), *mi.stride(), *dout.stride(), **flags,
        BLOCK_T=bt, BLOCK_N=bn, BLOCK_D=bd, num_warps=warps, num_stages=stages,
    )
    # Token span [first, last] of each (b, image); slot 0 (text before any image) is never read.
    # Stays on the device: no host sync.
    pos = torch.arange(T, device=dev, dtype=torch.int64).expand(B, T)
    first = torch.full((B, n_media + 1), T, dtype=torch.int64, device=dev).scatter_reduce(1, mi, pos, "amin")
    last = torch.full((B, n_media + 1), -1, dtype=torch.int64, device=dev).scatter_reduce(1, mi, pos, "amax")
    first, last = first.to(torch.int32), last.to(torch.int32)
    n_ptiles = triton.cdiv(P, bn)
    _bwd_dkv_kernel[(n_media * n_ptiles, B * H)](
        q, k, v, mi, lse, dout, delta, first, last, dk, dv,
        H, T, P, D, NK, n_ptiles, n_media + 1, *scales,
        *q.stride(), *k.stride(), *v.stride(), *mi.stride(), *dout.stride(), **flags,
        BLOCK_T=bt, BLOCK_N=bn, BLOCK_D=bd, num_warps=warps, num_stages=stages,
    )
    return dq, dk, dv
