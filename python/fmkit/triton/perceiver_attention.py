"""Triton kernels of the Perceiver cross-attention with two-source keys / values
(contract in csrc/ops/perceiver_attention.h).

For q [B, H, L, D], media keys / values km, vm [B, H, M, D] and latent keys / values
kl, vl [B, H, L2, D] (fp32 / fp16 / bf16, all the same dtype, any strides) every query row
attends over the M media keys followed by the L2 latent keys as if they were concatenated:
    S = scale * q [km; kl]^T (fp32),  P = softmax(S),  out = P [vm; vl].
The concatenation is never built: each kernel walks the media key tiles, then the latent key
tiles, with the same loop body (two loops over two base pointers).

`forward` returns out [B, H, L, D] (input dtype, contiguous) and lse [B, H, L] (fp32 natural
log-sum-exp of the S rows). `backward` returns dq, dkm, dvm, dkl, dvl as fp32 contiguous tensors:
    delta_i = sum_d dout_id out_id,  dS = P * (dout [vm; vl]^T - delta),
    dq = scale dS [km; kl],  [dkm; dkl] = scale dS^T q,  [dvm; dvl] = P^T dout.

Kernels
* `_fwd_kernel`, grid (query blocks, B*H): flash-attention-style online softmax. A BLOCK_L x
  BLOCK_D query tile stays in registers; each BLOCK_N key tile gives S in fp32 (tl.dot), the running
  row max / sum are rescaled, and P @ V accumulates in fp32. Exponentials are base 2 with
  scale * log2(e) folded into S (one multiply per score); lse is converted back to natural log.
* `_bwd_kernel`, grid (query blocks, B*H), one launch for everything: each program recomputes
  P = exp(S - lse) for its query rows against every key tile, keeps dq in registers (it owns those
  rows) and writes its own dK / dV contribution for each key tile. In the Perceiver L is the
  number of latents (64), so on CUDA one query block covers all of L and the program is the sole
  writer of the dK / dV rows of its (b, h): the results go straight to the outputs, no atomics, no
  second pass. When L spans several query blocks (CPU tiles, or a large L), each query block
  writes a separate [blocks, B, H, N, D] fp32 partial, summed by torch afterwards — deterministic,
  at the cost of blocks x the dK / dV memory (acceptable because L is small in this op).
  delta is computed in-kernel from the program's own out / dout rows (no extra pass).

Precision: 16-bit inputs go to the tensor cores in their own dtype with fp32 accumulation; P (for
P @ V and P^T dout) and dS (for dS K and dS^T q) are rounded to the input dtype before those
products, as an autocast (or FlashAttention) backward would; S, the softmax statistics and every
accumulator are fp32. fp32 inputs use input_precision="ieee" (exact fp32 products; chosen for
correctness over TF32 speed). Under TRITON_INTERPRET (CPU) bf16 tiles are widened to fp32 before
tl.dot, which the interpreter mishandles for bf16 operands (lossless).

Tiles: BLOCK_D = next power of two >= max(D, 16) (tl.dot needs >= 16 per dimension; padded d lanes
load as 0, so any D <= 256 works, e.g. 8, 24, 64). CUDA: BLOCK_L = 64 (the Perceiver's L = 64
latents fit one block); forward BLOCK_N = 64, 4 warps; backward BLOCK_N = 32, 8 warps (no register
spills on sm_90 per ptxas -v); 2 stages. Not yet timed or tuned on a GPU. CPU (interpreter): 16 x
16, small so that the tests exercise multi-block paths cheaply. Padded query rows / key columns are
masked out of every reduction. dout is read in the input dtype (cast if it differs). Assumptions:
L, M, L2 >= 0, and M + L2 may be 0 (then out = 0, lse = -inf, zero gradients).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (FLOAT_DTYPES, LOG2E, attention_config, attn_delta, attn_dscores, attn_query_block,
                      attn_scores, check_head_dim, dot_flags, mma, online_softmax_update, store_attn_out,
                      tile_range)


@triton.jit
def _fwd_source(q, k_base, v_base, N, skn, skd, svn, svd, rd, d_ok, m_i, l_i, acc, qk_scale,
                PREC: tl.constexpr, UPCAST: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_N: tl.constexpr):
    """Online-softmax update of (m_i, l_i, acc) over the N keys of one source (base-2 scores)."""
    for n0 in range(0, N, BLOCK_N):
        rn, n_ok = tile_range(n0, BLOCK_N, N)
        # K loaded as [BLOCK_D, BLOCK_N] so q @ kt needs no explicit transpose.
        kt = tl.load(k_base + rn[None, :] * skn + rd[:, None] * skd,
                     mask=n_ok[None, :] & d_ok[:, None], other=0.0)
        s = attn_scores(q, kt, qk_scale, PREC, UPCAST, BLOCK_L, BLOCK_N)
        s = tl.where(n_ok[None, :], s, float("-inf"))
        # Every tile holds >= 1 real key, so m_new is finite and exp2(m_i - m_new) is 0 on the
        # first tile (m_i = -inf), never NaN.
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        l_i, acc = online_softmax_update(s, m_i, m_new, l_i, acc,
                                         v_base + rn[:, None] * svn + rd[None, :] * svd,
                                         n_ok[:, None] & d_ok[None, :], PREC, UPCAST)
        m_i = m_new
    return m_i, l_i, acc


@triton.jit
def _fwd_kernel(q_ptr, km_ptr, vm_ptr, kl_ptr, vl_ptr, out_ptr, lse_ptr,
                H, L, M, L2, D, qk_scale,
                sqb, sqh, sql, sqd, skmb, skmh, skmn, skmd, svmb, svmh, svmn, svmd,
                sklb, sklh, skln, skld, svlb, svlh, svln, svld,
                PREC: tl.constexpr, UPCAST: tl.constexpr,
                BLOCK_L: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    bh, b, h, rl, l_ok, rd, d_ok = attn_query_block(H, L, D, BLOCK_L, BLOCK_D)
    q = tl.load(q_ptr + b * sqb + h * sqh + rl[:, None] * sql + rd[None, :] * sqd,
                mask=l_ok[:, None] & d_ok[None, :], other=0.0)
    m_i = tl.full((BLOCK_L,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_L,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_L, BLOCK_D), dtype=tl.float32)
    m_i, l_i, acc = _fwd_source(q, km_ptr + b * skmb + h * skmh, vm_ptr + b * svmb + h * svmh, M,
                                skmn, skmd, svmn, svmd, rd, d_ok, m_i, l_i, acc, qk_scale,
                                PREC, UPCAST, BLOCK_L, BLOCK_N)
    m_i, l_i, acc = _fwd_source(q, kl_ptr + b * sklb + h * sklh, vl_ptr + b * svlb + h * svlh, L2,
                                skln, skld, svln, svld, rd, d_ok, m_i, l_i, acc, qk_scale,
                                PREC, UPCAST, BLOCK_L, BLOCK_N)
    # l_i == 0 only without any key (M + L2 == 0): out = 0, lse = -inf instead of 0/0.
    store_attn_out(out_ptr, lse_ptr, m_i, l_i, acc, bh * L, rl, l_ok, rd, d_ok, D)


@triton.jit
def _bwd_source(q, do, lse2, delta, k_base, v_base, dk_base, dv_base, N, D, skn, skd, svn, svd,
                rd, d_ok, dq, qk_scale, scale,
                PREC: tl.constexpr, UPCAST: tl.constexpr,
                BLOCK_L: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """Gradient of one key source: writes this query block's dK / dV for every key tile of the
    source (dk_base / dv_base: contiguous [N, D] fp32 rows owned by this program) and returns the
    updated dq accumulator."""
    for n0 in range(0, N, BLOCK_N):
        rn, n_ok = tile_range(n0, BLOCK_N, N)
        nd_ok = n_ok[None, :] & d_ok[:, None]
        kt = tl.load(k_base + rn[None, :] * skn + rd[:, None] * skd, mask=nd_ok, other=0.0)
        vt = tl.load(v_base + rn[None, :] * svn + rd[:, None] * svd, mask=nd_ok, other=0.0)
        s = attn_scores(q, kt, qk_scale, PREC, UPCAST, BLOCK_L, BLOCK_N)
        # Padded query rows carry lse2 = +inf and padded keys are forced to 0, so p is the
        # forward's softmax on real entries and exactly 0 elsewhere.
        p = tl.where(n_ok[None, :], tl.exp2(s - lse2[:, None]), 0.0)
        ds = attn_dscores(p, do, vt, delta, PREC, UPCAST, BLOCK_L, BLOCK_N)
        zero_nd = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
        dv = mma(tl.trans(p.to(do.dtype)), do, zero_nd, PREC, UPCAST)
        dk = mma(tl.trans(ds), q, zero_nd, PREC, UPCAST) * scale
        out_off = rn[:, None] * D + rd[None, :]
        out_ok = n_ok[:, None] & d_ok[None, :]
        tl.store(dk_base + out_off, dk, mask=out_ok)
        tl.store(dv_base + out_off, dv, mask=out_ok)
        dq = mma(ds, tl.trans(kt), dq, PREC, UPCAST)
    return dq


@triton.jit
def _bwd_kernel(q_ptr, km_ptr, vm_ptr, kl_ptr, vl_ptr, out_ptr, lse_ptr, do_ptr,
                dq_ptr, dkm_ptr, dvm_ptr, dkl_ptr, dvl_ptr,
                H, L, M, L2, D, qk_scale, scale, part_m, part_l2,
                sqb, sqh, sql, sqd, skmb, skmh, skmn, skmd, svmb, svmh, svmn, svmd,
                sklb, sklh, skln, skld, svlb, svlh, svln, svld, sdob, sdoh, sdol, sdod,
                PREC: tl.constexpr, UPCAST: tl.constexpr,
                BLOCK_L: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    bh, b, h, rl, l_ok, rd, d_ok = attn_query_block(H, L, D, BLOCK_L, BLOCK_D)
    ld_ok = l_ok[:, None] & d_ok[None, :]
    q = tl.load(q_ptr + b * sqb + h * sqh + rl[:, None] * sql + rd[None, :] * sqd, mask=ld_ok, other=0.0)
    do = tl.load(do_ptr + b * sdob + h * sdoh + rl[:, None] * sdol + rd[None, :] * sdod, mask=ld_ok, other=0.0)
    delta = attn_delta(do, out_ptr, bh * L, rl, rd, ld_ok, D)
    lse2 = tl.load(lse_ptr + bh * L + rl, mask=l_ok, other=float("inf")) * 1.4426950408889634
    dq = tl.zeros((BLOCK_L, BLOCK_D), dtype=tl.float32)
    # This query block's own partial slot (offset 0 when one block covers L).
    part = tl.program_id(0).to(tl.int64)
    dq = _bwd_source(q, do, lse2, delta, km_ptr + b * skmb + h * skmh, vm_ptr + b * svmb + h * svmh,
                     dkm_ptr + part * part_m + bh * M * D, dvm_ptr + part * part_m + bh * M * D,
                     M, D, skmn, skmd, svmn, svmd, rd, d_ok, dq, qk_scale, scale,
                     PREC, UPCAST, BLOCK_L, BLOCK_N, BLOCK_D)
    dq = _bwd_source(q, do, lse2, delta, kl_ptr + b * sklb + h * sklh, vl_ptr + b * svlb + h * svlh,
                     dkl_ptr + part * part_l2 + bh * L2 * D, dvl_ptr + part * part_l2 + bh * L2 * D,
                     L2, D, skln, skld, svln, svld, rd, d_ok, dq, qk_scale, scale,
                     PREC, UPCAST, BLOCK_L, BLOCK_N, BLOCK_D)
    tl.store(dq_ptr + (bh * L + rl)[:, None] * D + rd[None, :], dq * scale, mask=ld_ok)


# ---- host side ----

def _strides(t):
    return tuple(t.stride())


def _prep(q, km, vm, kl, vl):
    names = ("q", "km", "vm", "kl", "vl")
    ts = (q, km, vm, kl, vl)
    for n, t in zip(names, ts):
        if t.dim() != 4:
            raise ValueError(f"{n} must be [B, H, N, D], got {tuple(t.shape)}")
    if q.dtype not in FLOAT_DTYPES or any(t.dtype != q.dtype for t in ts):
        raise ValueError(f"q, km, vm, kl, vl must share a dtype among f32/f16/bf16, got {[t.dtype for t in ts]}")
    B, H, L, D = q.shape
    M, L2 = km.shape[2], kl.shape[2]
    if km.shape != (B, H, M, D) or vm.shape != km.shape or kl.shape != (B, H, L2, D) or vl.shape != kl.shape:
        raise ValueError("shape mismatch: q [B,H,L,D], km/vm [B,H,M,D], kl/vl [B,H,L2,D] expected, got "
                         f"{[tuple(t.shape) for t in ts]}")
    check_head_dim(D)
    return [t.detach() for t in ts], dot_flags(q.dtype, q.device)


def forward(q, km, vm, kl, vl, scale):
    (q, km, vm, kl, vl), flags = _prep(q, km, vm, kl, vl)
    B, H, L, D = q.shape
    M, L2 = km.shape[2], kl.shape[2]
    dev = q.device
    out = torch.empty((B, H, L, D), dtype=q.dtype, device=dev)
    lse = torch.empty((B, H, L), dtype=torch.float32, device=dev)
    if out.numel() == 0:
        lse.fill_(float("-inf"))
        return out, lse
    bl, bn, bd, warps, stages = attention_config(dev, D)
    _fwd_kernel[(triton.cdiv(L, bl), B * H)](
        q, km, vm, kl, vl, out, lse, H, L, M, L2, D, float(scale) * LOG2E,
        *_strides(q), *_strides(km), *_strides(vm), *_strides(kl), *_strides(vl), **flags,
        BLOCK_L=bl, BLOCK_N=bn, BLOCK_D=bd, num_warps=warps, num_stages=stages,
    )
    return out, lse


def backward(q, km, vm, kl, vl, out, lse, dout, scale):
    (q, km, vm, kl, vl), flags = _prep(q, km, vm, kl, vl)
    B, H, L, D = q.shape
    M, L2 = km.shape[2], kl.shape[2]
    dev = q.device
    f32 = dict(dtype=torch.float32, device=dev)
    if dout.shape != q.shape or out.shape != q.shape or lse.shape != (B, H, L):
        raise ValueError("out / dout must be [B, H, L, D] and lse [B, H, L]")
    if B * H * L * D == 0:
        return (torch.zeros((B, H, L, D), **f32), torch.zeros((B, H, M, D), **f32),
                torch.zeros((B, H, M, D), **f32), torch.zeros((B, H, L2, D), **f32),
                torch.zeros((B, H, L2, D), **f32))
    out = out.detach().contiguous()
    lse = lse.detach().to(torch.float32).contiguous()
    dout = dout.detach().to(q.dtype)
    bl, bn, bd, warps, stages = attention_config(dev, D, backward=True)
    blocks = triton.cdiv(L, bl)
    dq = torch.empty((B, H, L, D), **f32)
    # Every program writes all key rows of its (b, h) into its own slot: with one query block the
    # slot is the output itself; otherwise per-block partials are summed below (deterministic).
    dkm = torch.empty((blocks, B, H, M, D), **f32)
    dvm = torch.empty((blocks, B, H, M, D), **f32)
    dkl = torch.empty((blocks, B, H, L2, D), **f32)
    dvl = torch.empty((blocks, B, H, L2, D), **f32)
    _bwd_kernel[(blocks, B * H)](
        q, km, vm, kl, vl, out, lse, dout, dq, dkm, dvm, dkl, dvl,
        H, L, M, L2, D, float(scale) * LOG2E, float(scale), B * H * M * D, B * H * L2 * D,
        *_strides(q), *_strides(km), *_strides(vm), *_strides(kl), *_strides(vl), *_strides(dout), **flags,
        BLOCK_L=bl, BLOCK_N=bn, BLOCK_D=bd, num_warps=warps, num_stages=stages,
    )
    if blocks == 1:
        return dq, dkm[0], dvm[0], dkl[0], dvl[0]
    return dq, dkm.sum(0), dvm.sum(0), dkl.sum(0), dvl.sum(0)
