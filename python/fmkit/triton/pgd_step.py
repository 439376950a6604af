"""Triton kernels of the fused PGD step (contract in csrc/ops/pgd_step.h).

x, g, x0: [B, N] contiguous (fp32 / fp16 / bf16), x updated in place; eps, alpha: fp32 [B];
active: bool [B] or None. Grid (B, chunks); program (b, c) owns CHUNK = BLOCK * ITERS elements.
  linf: one kernel (x' = x + a sign(g); d = clamp(x' - x0, -eps, eps); x = clamp(x0 + d, lo, hi)),
        op by op in fp32, so fp32 results equal the torchattacks formula bitwise.
  l2:   three kernels, no atomics: per-program partial |g|^2; partial |(x + s g) - x0|^2 with
        s = a / (|g| + 1e-10) (every program re-sums its sample's partials); the write pass
        with factor min(1, eps / |d|). Partials: fp32 [B, chunks] scratch allocated here (no host sync).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _linf_kernel(x_ptr, g_ptr, z_ptr, eps_ptr, alpha_ptr, act_ptr, lo, hi, N,
                 HAS_ACTIVE: tl.constexpr, BLOCK: tl.constexpr, ITERS: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1).to(tl.int64)
    run = True
    if HAS_ACTIVE:
        run = tl.load(act_ptr + b).to(tl.int1)
    if run:
        e = tl.load(eps_ptr + b)
        a = tl.load(alpha_ptr + b)
        base = b * N
        for it in range(ITERS):
            idx = (c * ITERS + it) * BLOCK + tl.arange(0, BLOCK)
            m = idx < N
            xv = tl.load(x_ptr + base + idx, mask=m, other=0.0).to(tl.float32)
            gv = tl.load(g_ptr + base + idx, mask=m, other=0.0).to(tl.float32)
            zv = tl.load(z_ptr + base + idx, mask=m, other=0.0).to(tl.float32)
            sg = tl.where(gv > 0, 1.0, tl.where(gv < 0, -1.0, 0.0))
            xp = xv + a * sg
            d = xp - zv
            d = tl.where(d < -e, -e, d)
            d = tl.where(d > e, e, d)
            v = zv + d
            v = tl.where(v < lo, lo, v)
            v = tl.where(v > hi, hi, v)
            tl.store(x_ptr + base + idx, v.to(x_ptr.dtype.element_ty), mask=m)


@triton.jit
def _sum_partials(p_ptr, b, NCH, NCH_P2: tl.constexpr):
    k = tl.arange(0, NCH_P2)
    return tl.sum(tl.load(p_ptr + b * NCH + k, mask=k < NCH, other=0.0), axis=0)


@triton.jit
def _l2_gsq_kernel(g_ptr, act_ptr, gpart_ptr, N, HAS_ACTIVE: tl.constexpr, BLOCK: tl.constexpr, ITERS: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1).to(tl.int64)
    run = True
    if HAS_ACTIVE:
        run = tl.load(act_ptr + b).to(tl.int1)
    if run:
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for it in range(ITERS):
            idx = (c * ITERS + it) * BLOCK + tl.arange(0, BLOCK)
            gv = tl.load(g_ptr + b * N + idx, mask=idx < N, other=0.0).to(tl.float32)
            acc += gv * gv
        tl.store(gpart_ptr + b * tl.num_programs(1) + c, tl.sum(acc, axis=0))


@triton.jit
def _l2_dsq_kernel(x_ptr, g_ptr, z_ptr, alpha_ptr, act_ptr, gpart_ptr, dpart_ptr, N,
                   HAS_ACTIVE: tl.constexpr, BLOCK: tl.constexpr, ITERS: tl.constexpr, NCH_P2: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1).to(tl.int64)
    nch = tl.num_programs(1)
    run = True
    if HAS_ACTIVE:
        run = tl.load(act_ptr + b).to(tl.int1)
    if run:
        s = tl.load(alpha_ptr + b) / (tl.sqrt(_sum_partials(gpart_ptr, b, nch, NCH_P2)) + 1e-10)
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for it in range(ITERS):
            idx = (c * ITERS + it) * BLOCK + tl.arange(0, BLOCK)
            m = idx < N
            xv = tl.load(x_ptr + b * N + idx, mask=m, other=0.0).to(tl.float32)
            gv = tl.load(g_ptr + b * N + idx, mask=m, other=0.0).to(tl.float32)
            zv = tl.load(z_ptr + b * N + idx, mask=m, other=0.0).to(tl.float32)
            d = (xv + s * gv) - zv
            acc += d * d
        tl.store(dpart_ptr + b * nch + c, tl.sum(acc, axis=0))


@triton.jit
def _l2_write_kernel(x_ptr, g_ptr, z_ptr, eps_ptr, alpha_ptr, act_ptr, gpart_ptr, dpart_ptr, lo, hi, N,
                     HAS_ACTIVE: tl.constexpr, BLOCK: tl.constexpr, ITERS: tl.constexpr, NCH_P2: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1).to(tl.int64)
    nch = tl.num_programs(1)
    run = True
    if HAS_ACTIVE:
        run = tl.load(act_ptr + b).to(tl.int1)
    if run:
        s = tl.load(alpha_ptr + b) / (tl.sqrt(_sum_partials(gpart_ptr, b, nch, NCH_P2)) + 1e-10)
        q = tl.load(eps_ptr + b) / tl.sqrt(_sum_partials(dpart_ptr, b, nch, NCH_P2))  # inf: no projection
        f = tl.minimum(q, 1.0)
        for it in range(ITERS):
            idx = (c * ITERS + it) * BLOCK + tl.arange(0, BLOCK)
            m = idx < N
            xv = tl.load(x_ptr + b * N + idx, mask=m, other=0.0).to(tl.float32)
            gv = tl.load(g_ptr + b * N + idx, mask=m, other=0.0).to(tl.float32)
            zv = tl.load(z_ptr + b * N + idx, mask=m, other=0.0).to(tl.float32)
            v = zv + ((xv + s * gv) - zv) * f
            v = tl.where(v < lo, lo, v)
            v = tl.where(v > hi, hi, v)
            tl.store(x_ptr + b * N + idx, v.to(x_ptr.dtype.element_ty), mask=m)


def _config(device, N):
    if device.type == "cpu":  # interpreter: few, wide programs
        block, iters = 1024, 4
    else:
        block, iters = 1024, 4
    chunk = block * iters
    while triton.cdiv(N, chunk) > 1024:
        iters *= 2
        chunk = block * iters
    return block, iters, triton.cdiv(N, chunk)


def pgd_step_(x, g, x0, eps, alpha, active, norm, lo, hi):
    """x, g, x0: contiguous [B, N]; eps, alpha: fp32 [B]; active: bool [B] or None. In place on x."""
    B, N = x.shape
    if B == 0 or N == 0:
        return x
    block, iters, nch = _config(x.device, N)
    has_active = active is not None
    act = active if has_active else eps  # unused pointer when HAS_ACTIVE is False
    grid = (B, nch)
    if norm == "linf":
        _linf_kernel[grid](x, g, x0, eps, alpha, act, lo, hi, N, HAS_ACTIVE=has_active, BLOCK=block, ITERS=iters)
        return x
    if norm != "l2":
        raise ValueError(f"norm: the triton kernels support 'linf' and 'l2', got {norm!r}")
    part = torch.empty(2, B, nch, dtype=torch.float32, device=x.device)
    nch_p2 = max(2, triton.next_power_of_2(nch))
    _l2_gsq_kernel[grid](g, act, part[0], N, HAS_ACTIVE=has_active, BLOCK=block, ITERS=iters)
    _l2_dsq_kernel[grid](x, g, x0, alpha, act, part[0], part[1], N, HAS_ACTIVE=has_active, BLOCK=block,
                         ITERS=iters, NCH_P2=nch_p2)
    _l2_write_kernel[grid](x, g, x0, eps, alpha, act, part[0], part[1], lo, hi, N, HAS_ACTIVE=has_active,
                           BLOCK=block, ITERS=iters, NCH_P2=nch_p2)
    return x
