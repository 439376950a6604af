"""Triton score tiles for kNN candidate search (contract in csrc/ops/knn.h).

`score_tile` computes, for a block of queries x and database rows y,
    L2: |y - c|^2 - 2 <x - c, y - c>        IP: -<x, y - c>
with `tl.dot` in IEEE fp32 (no TF32: the exactness certificate in ops/knn.py assumes
fp32 rounding). Inputs of any float dtype and any strides are converted on load.
`fmkit.ops.knn.tiled_candidates` merges the tiles with a running top-kprime.
Runs on CUDA, and on the CPU under TRITON_INTERPRET=1 (tests).
"""
from __future__ import annotations

import os

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


# ---- tensor-core candidates: split-bf16 scores, per-bucket best and second-best ----
#
# The fp32 FMA floor of a large search (Q=16384, N=1M, d=128: 4.2 TFLOP) is ~80 ms on an H100;
# bf16 tensor cores are ~15x faster, but one bf16 product has 8-bit precision. Each fp32 operand
# a is split into a_hi = bf16(a) and a_lo = bf16(a - a_hi), and <a, b> is taken as
# a_lo.b_hi + a_hi.b_lo + a_hi.b_hi (three bf16 products, fp32 accumulation): the error is
# ~3 * 2^-16 |a||b| plus the accumulation's, which `TC_SLACK` bounds for the certificate.
#
# Selection without sorting: the database columns of one program's range are dealt round-robin
# into BLOCK_N buckets per query, and each bucket keeps only its best score, that row's index
# and its second-best score. The best kprime bucket minima of a query are its candidates;
# every other row scored at least min(the next bucket minimum, the candidates' buckets' second
# best), which is the threshold the certificate needs. Two true neighbours sharing a bucket
# lower that threshold, so the row fails the certificate and is searched again on the exact
# path: with thousands of buckets per query this stays rare for small k.

TC_BUCKETS = 4096  # buckets per query (upper bound; fewer for small databases)
TC_MIN_ROWS_PER_BUCKET = 8
TC_BUCKETS_PER_KPRIME2 = 12  # with fewer buckets, over ~4% of the rows would be searched twice
TC_CHUNK_ELEMENTS = 1 << 25  # database elements split to bf16 per launch (128 MB of hi + lo)


def tc_slack(d: int) -> float:
    """Bound on |score - exact score| / (|x - c| + max|y - c|)^2 for the split-bf16 scores.

    Splitting: each missing term (a_lo b_lo and the parts below a_lo, b_lo) is at most
    ~2^-16 |a_i b_i|, so 3.2 * 2^-16 |a||b| in all. Accumulation: three chained products of d
    terms in fp32 on tensor cores, whose rounding mode is not documented: 3d * 2^-22 |a||b|
    (twice truncation's unit). Both enter the L2 score doubled; the fp32 |y - c|^2, the
    centring and the final subtraction add the fp32 path's (2d + 16) * 2^-24.
    """
    return 2.0 * (3.2 * 2.0**-16 + 3.0 * d * 2.0**-22) + (2 * d + 16) * 2.0**-24


@triton.jit
def _tc_bucket_kernel(
    xh_ptr, xl_ptr, yh_ptr, yl_ptr, yn_ptr,
    best_ptr, second_ptr, index_ptr,
    Q, N, D, row0, tiles_per_program, bucket_stride, bucket0, self_offset,
    IS_L2: tl.constexpr, HAS_SELF: tl.constexpr, X_ONCE: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_q = tl.program_id(0)
    pid_s = tl.program_id(1)
    rq = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    lanes = tl.arange(0, BLOCK_N)
    best = tl.full((BLOCK_Q, BLOCK_N), float("inf"), tl.float32)
    second = tl.full((BLOCK_Q, BLOCK_N), float("inf"), tl.float32)
    index = tl.full((BLOCK_Q, BLOCK_N), -1, tl.int32)
    if X_ONCE:  # the whole query tile fits one d-block: load it once, not once per database tile
        rd = tl.arange(0, BLOCK_D)
        mx = (rq[:, None] < Q) & (rd[None, :] < D)
        xh0 = tl.load(xh_ptr + rq[:, None] * D + rd[None, :], mask=mx, other=0.0)
        xl0 = tl.load(xl_ptr + rq[:, None] * D + rd[None, :], mask=mx, other=0.0)
    for t in range(0, tiles_per_program):
        rn = (pid_s * tiles_per_program + t) * BLOCK_N + lanes
        acc = tl.zeros((BLOCK_Q, BLOCK_N), dtype=tl.float32)
        if X_ONCE:
            my = (rn[:, None] < N) & (rd[None, :] < D)
            yh = tl.load(yh_ptr + rn[:, None] * D + rd[None, :], mask=my, other=0.0)
            yl = tl.load(yl_ptr + rn[:, None] * D + rd[None, :], mask=my, other=0.0)
            # Smallest terms first: they are added while the accumulator is still small.
            acc = tl.dot(xl0, tl.trans(yh), acc)
            acc = tl.dot(xh0, tl.trans(yl), acc)
            acc = tl.dot(xh0, tl.trans(yh), acc)
        else:
            for d0 in range(0, D, BLOCK_D):
                rd = d0 + tl.arange(0, BLOCK_D)
                mx = (rq[:, None] < Q) & (rd[None, :] < D)
                my = (rn[:, None] < N) & (rd[None, :] < D)
                xh = tl.load(xh_ptr + rq[:, None] * D + rd[None, :], mask=mx, other=0.0)
                xl = tl.load(xl_ptr + rq[:, None] * D + rd[None, :], mask=mx, other=0.0)
                yh = tl.load(yh_ptr + rn[:, None] * D + rd[None, :], mask=my, other=0.0)
                yl = tl.load(yl_ptr + rn[:, None] * D + rd[None, :], mask=my, other=0.0)
                acc = tl.dot(xl, tl.trans(yh), acc)
                acc = tl.dot(xh, tl.trans(yl), acc)
                acc = tl.dot(xh, tl.trans(yh), acc)
        if IS_L2:
            yn = tl.load(yn_ptr + rn, mask=rn < N, other=0.0)
            score = yn[None, :] - 2.0 * acc
        else:
            score = -acc
        score = tl.where(rn[None, :] < N, score, float("inf"))
        if HAS_SELF:
            score = tl.where(rn[None, :] + row0 == rq[:, None] + self_offset, float("inf"), score)
        better = score < best
        second = tl.where(better, best, tl.minimum(second, score))
        index = tl.where(better, (rn + row0)[None, :], index)
        best = tl.where(better, score, best)
    out = rq[:, None] * bucket_stride + bucket0 + pid_s * BLOCK_N + lanes[None, :]
    keep = rq[:, None] < Q
    tl.store(best_ptr + out, best, mask=keep)
    tl.store(second_ptr + out, second, mask=keep)
    tl.store(index_ptr + out, index, mask=keep)


def _split_bf16(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """a (fp32) = hi + lo + O(2^-16 |a|), both bf16; a - hi is exact in fp32."""
    hi = a.to(torch.bfloat16)
    lo = (a - hi.to(torch.float32)).to(torch.bfloat16)
    if a.device.type == "cpu":  # the interpreter's bf16 dot is wrong; fp32 holds the same values
        return hi.to(torch.float32), lo.to(torch.float32)
    return hi, lo


def tc_eligible(Q: int, N: int, d: int, kprime: int) -> bool:
    """Whether the bucket search applies: enough buckets that the kprime best rows of a query
    rarely share one (about kprime^2 / (2 * buckets) of the rows do, and are searched again),
    and int32 row indices."""
    buckets = min(TC_BUCKETS, N // TC_MIN_ROWS_PER_BUCKET)
    return buckets >= TC_BUCKETS_PER_KPRIME2 * kprime**2 and N < 2**31 and Q > 0


def _tile_config(device: torch.device, d: int) -> tuple[int, int, int, int, int]:
    """(BLOCK_Q, BLOCK_N, BLOCK_D, num_warps, num_stages); FMKIT_KNN_TC_TILES="q,n,d,warps,stages"
    overrides it (the GPU tile sweep of benchmarks/gpu_knn_tc_sweep.py)."""
    override = os.environ.get("FMKIT_KNN_TC_TILES")
    if override:
        return tuple(int(v) for v in override.split(","))
    if device.type == "cpu":  # the interpreter: small tiles keep the tests fast
        return 16, 16, 16, 1, 1
    # H200, 2026-12-04 (benchmarks/gpu_knn_tc_sweep.py, Q=16384, N=1M, d=128): 128x64 tiles
    # with the whole d = 128 query tile loaded once took 49.9 ms; with 64-wide d-blocks 78.8 ms;
    # 64x64 54 ms, 64x128 85 ms, 128x128 108 ms. Past d = 128 a 128-wide d-block would need
    # 288 KB of shared memory at 3 stages (the limit is 227 KB): 64-wide blocks.
    if d <= 32:
        return 128, 64, 32, 8, 3
    return 128, 64, (64 if d <= 64 else 128) if d <= 128 else 64, 8, 3


def tc_bucket_candidates(queries, database, center, metric, kprime, self_offset):
    """(score [Q, kprime] fp32, index [Q, kprime] int64, threshold [Q] fp32, slack): every
    database row not among a query's candidates scored >= its threshold, within slack *
    (|x - c| + max|y - c|)^2 of its exact score (L2; IP: slack * |x| * max|y - c|)."""
    Q, d = queries.shape
    N = database.shape[0]
    dev = queries.device
    block_q, block_n, block_d, warps, stages = _tile_config(dev, d)
    buckets = max(block_n, min(TC_BUCKETS, N // TC_MIN_ROWS_PER_BUCKET) // block_n * block_n)
    chunk_rows = max(block_n, TC_CHUNK_ELEMENTS // d // block_n * block_n)
    chunks = [(n0, min(N, n0 + chunk_rows)) for n0 in range(0, N, chunk_rows)]
    # Each chunk gets a share of the buckets proportional to its rows (at least one group).
    groups = [max(1, round(buckets / block_n * (n1 - n0) / N)) for n0, n1 in chunks]
    stride = sum(groups) * block_n

    x = queries.to(torch.float32)
    if metric == "l2":
        x = x - center
    xh, xl = _split_bf16(x.contiguous())
    best = torch.empty((Q, stride), dtype=torch.float32, device=dev)
    second = torch.empty_like(best)
    index = torch.empty((Q, stride), dtype=torch.int32, device=dev)
    bucket0 = 0
    for (n0, n1), g in zip(chunks, groups):
        y = database[n0:n1].to(torch.float32) - center
        yn = (y * y).sum(1) if metric == "l2" else y[:, 0]
        yh, yl = _split_bf16(y.contiguous())
        rows = n1 - n0
        tiles = triton.cdiv(triton.cdiv(rows, block_n), g)
        grid = (triton.cdiv(Q, block_q), g)
        args = (xh, xl, yh, yl, yn, best, second, index,
                Q, rows, d, n0, tiles, stride, bucket0, 0 if self_offset is None else self_offset)
        flags = dict(IS_L2=metric == "l2", HAS_SELF=self_offset is not None, BLOCK_Q=block_q, BLOCK_N=block_n)
        try:
            _tc_bucket_kernel[grid](*args, **flags, X_ONCE=d <= block_d, BLOCK_D=block_d,
                                    num_warps=warps, num_stages=stages)
        except triton.runtime.errors.OutOfResources:  # an override or a smaller card: the smallest tile
            block_d, stages = 32, 2
            _tc_bucket_kernel[grid](*args, **flags, X_ONCE=d <= block_d, BLOCK_D=block_d,
                                    num_warps=warps, num_stages=stages)
        bucket0 += g * block_n
    top, pos = torch.topk(best, kprime + 1, dim=1, largest=False, sorted=True)
    score, pos = top[:, :kprime], pos[:, :kprime]
    cand = torch.gather(index, 1, pos).to(torch.int64)
    threshold = torch.minimum(top[:, kprime], torch.gather(second, 1, pos).min(dim=1).values)
    # An empty bucket among the candidates (index -1) means the buckets were too few for this
    # row: a -inf threshold fails the certificate, and the row is searched again.
    empty = (cand < 0).any(dim=1)
    threshold = torch.where(empty, torch.full_like(threshold, float("-inf")), threshold)
    cand = cand.clamp(min=0)
    return score, cand, threshold, tc_slack(d)
