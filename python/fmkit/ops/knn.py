"""Exact k-nearest-neighbour search: `fmkit.ops.knn` and `fmkit.ops.knn_sharded`.

How exactness is obtained at GEMM speed
---------------------------------------
1. A backend kernel (cpu / cuda / triton / torch) returns, per query, kprime > k
   *candidates* ranked by a fast fp32 score computed with the GEMM expansion on centred
   data: |y-c|^2 - 2<x-c, y-c> (L2) or -<x, y-c> (IP; for a fixed query <x, c> shifts every
   score alike, so the ranking is that of <x, y>, and on offset data the rounding error
   scales with |y - c|, not |y|; the CUDA kernel does not centre IP: c = 0 there). The
   kernel guarantees that every database row it did not return has a score >= the largest
   returned score. (The triton backend's tensor-core pass, for small k on large databases,
   scores with split-bf16 products and returns its own threshold and wider error bound:
   fmkit.triton.knn.tc_bucket_candidates.)
2. The candidates are re-ranked with the direct float64 distance sum((x-y)^2) (or <x,y>),
   sorted by (distance, index).
3. A rounding-error bound on the fp32 score, (2d+16) * 2^-24 * (|x-c| + max|y-c|)^2
   (IP: (2d+16) * 2^-24 * |x| max|y-c|), turns the largest candidate score into a lower bound
   on the distance of every non-candidate; for L2 the triangle inequality
   |x-y| >= |y-c| - |x-c| covers the rows far from the centre, whose bound is loose (mixed
   norms). If that bound is above the k-th re-ranked distance, the row is exact;
   otherwise (near-ties at the candidate boundary, rare) the row is searched again with wider
   candidate lists until certified or complete (float64 reference for self-excluded subsets). So results are exact, ties go to the lower index, L2 distances are
   never negative and exactly 0 for identical vectors, and nothing depends on chunking.
4. For k = 1 on the CPU (k-means' assignment step) one pass keeps only the best and the
   second-best score per query: the best row is the single candidate, the second-best score
   the threshold, and step 3 certifies it as is. Rows it cannot certify (near-ties) take
   steps 1-3 with ordinary candidate lists.

Memory: inputs + outputs + O(Q * kprime) candidates + bounded tiles; never Q x N.
"""
from __future__ import annotations

from typing import Any

import torch

from fmkit.ops import _backend
from fmkit.reference.knn import knn_reference, pair_scores, sort_by_distance_then_index

METRICS = ("l2", "ip")
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)  # float64: the torch backend
DTYPE_HINT = ("; integers are not accepted: convert them, e.g. x.astype(numpy.float32) or x.float() "
              "(float64 is accepted as is)")
GPU_BACKEND_ORDER = ("cuda", "triton")
VALUE_LIMIT = 1e15  # |x| above this could overflow float32 squared norms
# Extra candidates beyond k (plus k/16): more make the certificate fail less often, fewer make
# selection and the float64 re-rank cheaper; uncertified rows are recomputed exactly.
CANDIDATE_MARGIN = 4
_RERANK_ELEMENTS = {"cuda": 1 << 26, "cpu": 1 << 23}  # float64 elements per torch re-rank chunk
# Score elements per tile in the tiled (triton / torch) path: 256 MB on a GPU, 16 MB on a CPU.
_TILE_ELEMENTS = {"cuda": 1 << 26, "cpu": 1 << 22}

# Rows the first candidate pass could not certify, since import (exposed for tests and benchmarks).
fallback_rows = 0
# Rows the CPU k = 1 pass (best + second-best score) could not certify and sent to the
# candidate search, since import.
nearest_fallback_rows = 0


def knn(
    queries: Any,
    database: Any,
    k: int,
    *,
    metric: str = "l2",
    exclude_self: bool = False,
    backend: str = "auto",
    validate: bool = True,
    check_finite: bool | None = None,
):
    """Exact k nearest neighbours of each query row among the database rows.

    Args:
        queries: [Q, d] float32 / float16 / bfloat16 / float64 (torch, numpy or cupy). float64
            (numpy's default) is searched in float64 on the torch backend, exact for the
            float64 values (no rounding to float32).
        database: [N, d], same dtype and device as `queries`.
        k: neighbours per query, 1 <= k <= N (N - 1 with `exclude_self`).
        metric: "l2" (squared Euclidean distance, ascending) or "ip" (inner product, descending).
        exclude_self: queries are the database; row i never returns itself (by index, so
            duplicated points still find each other).
        backend: "auto", "cpu", "cuda", "triton" or "torch" (float64: "auto" or "torch").
        validate: reject NaN/inf and values too large for float32 accumulation (one pass
            over the inputs). `check_finite` is its deprecated old name.

    Returns:
        (distances float32 [Q, k] (float64 for float64 inputs), indices int64 [Q, k]) of the
        same array kind as the input.
    """
    q, to_input_kind = _backend.to_torch(queries, "queries")
    db, _ = _backend.to_torch(database, "database")
    check(q, db, k, metric, exclude_self, backend, _backend.deprecated_switch("knn", validate, check_finite=check_finite))
    op = _knn_impl if _backend.plain_eager(q, db) else torch.ops.fmkit.knn
    dist, idx = op(q, db, int(k), metric, bool(exclude_self), backend)
    return to_input_kind(dist), to_input_kind(idx)


def check(q, db, k, metric, exclude_self, backend, finite):
    _backend.check_matrix(q, "queries", DTYPES, DTYPE_HINT)
    _backend.check_matrix(db, "database", DTYPES, DTYPE_HINT)
    if db.dtype != q.dtype:
        raise TypeError(f"database: dtype {_backend.dtype_name(db.dtype)} does not match queries dtype "
                        f"{_backend.dtype_name(q.dtype)}; expected the same dtype")
    if db.device != q.device:
        raise ValueError(f"database: on {db.device}, but queries are on {q.device}; expected the same device")
    if db.shape[1] != q.shape[1]:
        raise ValueError(f"database: dimension {db.shape[1]} does not match queries dimension {q.shape[1]}")
    if metric not in METRICS:
        raise ValueError(f"metric: expected one of {METRICS}, got {metric!r}")
    if db.shape[0] == 0:
        raise ValueError("database: must have at least one row")
    if q.shape[1] == 0:
        raise ValueError("queries: dimension must be at least 1")
    if exclude_self and q.shape[0] != db.shape[0]:
        raise ValueError(
            f"exclude_self: queries must be the database (same number of rows), got {q.shape[0]} and {db.shape[0]}"
        )
    eligible = db.shape[0] - (1 if exclude_self else 0)
    _backend.check_int(k, "k", 1, eligible, f"N - 1 = {eligible} with exclude_self" if exclude_self else f"N = {eligible}")
    _backend.resolve_backend(backend, q.device, "knn", GPU_BACKEND_ORDER)
    _backend.check_float64_backend("queries", q, backend)
    if finite:
        _backend.check_finite(q, "queries", VALUE_LIMIT)
        _backend.check_finite(db, "database", VALUE_LIMIT)


def _knn_impl(
    queries: torch.Tensor, database: torch.Tensor, k: int, metric: str, exclude_self: bool, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    dist, idx = exact_knn(queries, database, k, metric, 0 if exclude_self else None, backend)
    return dist.to(_out_dtype(queries)), idx


def _out_dtype(queries):
    return torch.float64 if queries.dtype == torch.float64 else torch.float32


_knn_op = torch.library.custom_op("fmkit::knn", _knn_impl, mutates_args=())


@_knn_op.register_fake
def _knn_fake(queries, database, k, metric, exclude_self, backend):
    shape = (queries.shape[0], k)
    return queries.new_empty(shape, dtype=_out_dtype(queries)), queries.new_empty(shape, dtype=torch.int64)


def exact_knn(queries, database, k, metric, self_offset, backend):
    """Validated tensors in, float64 distances and int64 indices out.

    `self_offset` (or None): query row i is database row i + self_offset and is excluded.
    """
    global fallback_rows, nearest_fallback_rows
    queries, database = queries.detach(), database.detach()
    Q, d = queries.shape
    N = database.shape[0]
    eligible = N - (1 if self_offset is not None else 0)
    name = _backend.resolve_backend(backend, queries.device, "knn", GPU_BACKEND_ORDER)
    if queries.dtype == torch.float64:  # the float64 tiles: the kernels are fp32 / 16-bit
        name = "torch"
    kprime = min(eligible, k + CANDIDATE_MARGIN + k // 16)
    if backend == "auto" and name == "cuda" and d <= TENSOR_CORE_AUTO_MAX_D and _backend._available("triton", True) \
            and use_tensor_cores("triton", queries, database, kprime):
        name = "triton"  # small k on a large database: the tensor-core candidates are faster
    max_width = eligible
    if name == "cuda":
        max_width = min(eligible, _backend._C.knn_max_kprime_cuda())
        if k > max_width:
            if backend == "cuda":
                raise ValueError(f"k: the cuda backend supports k <= {max_width}, got {k}; use backend='torch'")
            name, max_width = ("triton" if _backend._available("triton", True) else "torch"), eligible
        else:
            kprime = min(kprime, max_width)
    if Q == 0:
        return (queries.new_empty((0, k), dtype=torch.float64), queries.new_empty((0, k), dtype=torch.int64))

    cpu_kernels = name == "cpu"
    center, radius = database_center_and_radius(database, metric, name)

    def search(rows, width, offset=self_offset):
        """(distances, indices, exact) for the query rows `rows` (a slice or an index tensor)
        with `width` candidates each; `offset`: the kernels' self-exclusion, which holds for
        whole row ranges only."""
        rows_q = queries[rows]
        if offset is None and self_offset is not None:
            # A subset of rows loses the offset form of self-exclusion: take one more candidate
            # without it, then drop self (or, where self is not among them, the worst-scored
            # candidate, whose score still bounds every row left out).
            score, cand = CANDIDATES[name](rows_q, database, center, metric, width + 1, None)
            drop = cand == (torch.arange(Q, device=cand.device)[rows] + self_offset)[:, None]
            missing = ~drop.any(1)
            drop[missing.nonzero().flatten(), score[missing].argmax(1)] = True
            score, cand = score[~drop].view(-1, width), cand[~drop].view(-1, width)
            threshold, slack = score.max(dim=1).values, None
        elif use_tensor_cores(name, rows_q, database, width):
            from fmkit.triton.knn import tc_bucket_candidates

            score, cand, threshold, slack = tc_bucket_candidates(rows_q, database, center, metric, width, offset)
        else:
            score, cand = CANDIDATES[name](rows_q, database, center, metric, width, offset)
            threshold, slack = score.max(dim=1).values, None
        dist, idx = rerank(rows_q, database, cand, k, metric, cpu_kernels)
        if width == eligible:  # every eligible row is a candidate: nothing left to miss
            return dist, idx, torch.ones(dist.shape[0], dtype=torch.bool, device=dist.device)
        return dist, idx, certify(rows_q, center, radius, threshold, dist[:, k - 1], metric, slack=slack)

    if cpu_kernels and k == 1 and self_offset is None:
        # k-means assigns with k = 1 over millions of rows: one pass keeping the best and the
        # second-best score certifies almost every row without candidate lists or a re-rank.
        dist, idx, exact = nearest_cpu(queries, database, center, radius, metric)
        pending = (~exact).nonzero().flatten()
        nearest_fallback_rows += int(pending.numel())
        if pending.numel():
            d2, i2, ok = search(pending, kprime)
            dist[pending], idx[pending], exact[pending] = d2, i2, ok
    else:
        dist, idx, exact = search(slice(None), kprime)
    if bool(exact.all()):
        return dist, idx
    # Rows the bound could not certify (near-ties at the candidate boundary): search them again
    # with ever wider candidate lists on the same fast kernels; with every eligible row as a
    # candidate a row is exact by construction. Rows past the CUDA kernel's widest list go to
    # the float64 reference.
    rows = (~exact).nonzero().flatten()
    fallback_rows += int(rows.numel())
    width = kprime
    # A self-excluding subset search takes one candidate more than it keeps.
    widest = max_width if self_offset is None or name != "cuda" else min(eligible, max_width - 1)
    while rows.numel() and width < widest:
        width = min(widest, 4 * width + 64)
        d2, i2, ok = search(rows, width, offset=None)
        dist[rows[ok]], idx[rows[ok]] = d2[ok], i2[ok]
        rows = rows[~ok]
    if rows.numel():
        self_index = None if self_offset is None else rows + self_offset
        dist[rows], idx[rows] = knn_reference(queries[rows], database, k, metric, self_index)
    return dist, idx


def database_center_and_radius(database, metric, backend):
    """Centre c (the database mean in the score dtype; 0 for IP on the CUDA kernel, which does
    not centre) and max_j |y_j - c| (a float)."""
    N, d = database.shape
    if backend == "cpu":
        center = torch.empty(d, dtype=torch.float32)
        radius = torch.empty(1, dtype=torch.float64)
        dl = _backend.dlpack
        _backend._C.knn_center_radius_cpu(dl(database), metric, dl(center), dl(radius), _backend.cpu_threads())
        return center, float(radius) * (1 + 1e-6)
    chunk = max(1, (1 << 22) // d)
    work = score_dtype(database)
    if metric == "l2" or backend != "cuda":
        total = torch.zeros(d, dtype=torch.float64, device=database.device)
        for n0 in range(0, N, chunk):
            total += database[n0 : n0 + chunk].sum(0, dtype=torch.float64)
        center = (total / N).to(work)
    else:
        center = torch.zeros(d, dtype=work, device=database.device)
    radius = torch.zeros((), dtype=torch.float64, device=database.device)
    for n0 in range(0, N, chunk):
        y = database[n0 : n0 + chunk].to(work) - center
        radius = torch.maximum(radius, y.to(torch.float64).norm(dim=1).max())
    return center, float(radius) * (1 + 1e-6)


def score_dtype(x):
    """The dtype of the candidate scores and of the centre: float32, float64 for float64 inputs
    (the certificate's unit roundoff follows it)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def rerank(queries, database, cand, k, metric, cpu_kernels):
    """The best k candidates per row by direct float64 distance, sorted by (distance, index)."""
    Q, kprime = cand.shape
    d = queries.shape[1]
    dist_out = torch.empty((Q, k), dtype=torch.float64, device=queries.device)
    idx_out = torch.empty((Q, k), dtype=torch.int64, device=queries.device)
    if cpu_kernels:
        dl = _backend.dlpack
        _backend._C.knn_rerank_cpu(
            dl(queries), dl(database), dl(cand.contiguous()), metric, dl(dist_out), dl(idx_out), _backend.cpu_threads()
        )
        return dist_out, idx_out
    chunk = max(1, _RERANK_ELEMENTS.get(queries.device.type, 1 << 23) // (kprime * d))
    for q0 in range(0, Q, chunk):
        x64 = queries[q0 : q0 + chunk].to(torch.float64)
        c = cand[q0 : q0 + chunk]
        y = database[c.reshape(-1)].to(torch.float64).view(c.shape[0], kprime, d)
        dist = pair_scores(x64[:, None, :], y, metric)  # the reference's fixed order: duplicates tie exactly
        dist, idx = sort_by_distance_then_index(dist, c, descending=metric == "ip")
        dist_out[q0 : q0 + chunk] = dist[:, :k]
        idx_out[q0 : q0 + chunk] = idx[:, :k]
    return dist_out, idx_out


def nearest_cpu(queries, database, center, radius, metric):
    """k = 1 on the CPU kernels: (dist [Q, 1], idx [Q, 1], certified [Q]).

    The candidate list is the single best-scoring row and the threshold is the second-best
    score, so `certify` applies unchanged; its |x - c| comes from the kernel.
    """
    Q = queries.shape[0]
    idx = torch.empty(Q, dtype=torch.int64)
    second = torch.empty(Q, dtype=torch.float32)
    dist = torch.empty(Q, dtype=torch.float64)
    qnorm = torch.empty(Q, dtype=torch.float64)
    dl = _backend.dlpack
    _backend._C.knn_nearest_cpu(
        dl(queries), dl(database), dl(center), metric, dl(idx), dl(second), dl(dist), dl(qnorm),
        _backend.cpu_threads(),
    )
    exact = certify(queries, center, radius, second, dist, metric, qnorm=qnorm)
    return dist[:, None], idx[:, None], exact


def certify(queries, center, radius, threshold, kth, metric, qnorm=None, slack=None):
    """True where no non-candidate can beat the k-th re-ranked distance `kth`.

    `threshold`: every non-candidate scored at least that much (the largest candidate score,
    or the tensor-core search's bucket bound); a score is within
    slack * (|x-c| + radius)^2 of the truth (IP: slack * |x| * radius), slack defaulting to
    the fp32 kernels' (2d+16) * 2^-24.
    `qnorm`, if given, is |x - c| (IP: |x|) in float64, saving a pass over the queries.
    """
    d = queries.shape[1]
    if slack is None:
        slack = (2 * d + 16) * (2.0**-53 if center.dtype == torch.float64 else 2.0**-24)
    threshold = threshold.to(torch.float64)
    if metric == "ip":
        x64 = queries.to(torch.float64)
        xn = x64.norm(dim=1) if qnorm is None else qnorm
        c64 = center.to(torch.float64)
        shift = x64 @ c64  # the scores are -<x, y - c>
        # Every non-candidate has <x, y> <= <x, c> - threshold + err; it must lose to the k-th.
        # The margin covers float64 rounding of <x, y> and <x, c>, which scales with |y|, not |y - c|.
        margin = 1e-12 * xn * (radius + float(c64.norm()))
        return (shift - threshold + slack * xn * radius) < kth - margin
    xn = (queries.to(center.dtype) - center).to(torch.float64).norm(dim=1) if qnorm is None else qnorm
    kth = kth * (1 + 1e-12)
    # A non-candidate y at r = |y - c| has |x - y|^2 >= |x - c|^2 + threshold - slack (|x - c| + r)^2,
    # which falls as r grows, and (triangle inequality) |x - y|^2 >= (r - |x - c|)^2, which grows.
    # r_max: the largest r the first bound certifies; every r above it is certified by the second
    # when r_max - |x - c| > sqrt(kth). (1 -+ 1e-6: fp32 centring moved r and |x - c| by <= 2^-24.)
    by_score = (xn**2 + threshold - slack * (xn + radius) ** 2) > kth
    r_max = ((xn**2 + threshold - kth).clamp(min=0) / slack).sqrt() - xn
    by_triangle = r_max * (1 - 1e-6) - xn * (1 + 1e-6) > kth.clamp(min=0).sqrt()
    return by_score | by_triangle


# ---- candidate generators: (queries, database, center, metric, kprime, self_offset) -> (score, index) ----

def _cpu_candidates(queries, database, center, metric, kprime, self_offset):
    Q = queries.shape[0]
    score = torch.empty((Q, kprime), dtype=torch.float32)
    index = torch.empty((Q, kprime), dtype=torch.int64)
    dl = _backend.dlpack
    _backend._C.knn_candidates_cpu(
        dl(queries), dl(database), dl(center), metric, kprime, -1 if self_offset is None else self_offset,
        dl(score), dl(index), _backend.cpu_threads(),
    )
    return score, index


def _cuda_candidates(queries, database, center, metric, kprime, self_offset):
    Q, d = queries.shape
    N = database.shape[0]
    dev = queries.device
    score = torch.empty((Q, kprime), dtype=torch.float32, device=dev)
    index = torch.empty((Q, kprime), dtype=torch.int64, device=dev)
    workspace = torch.empty(_backend._C.knn_workspace_bytes_cuda(Q, N, d, kprime), dtype=torch.uint8, device=dev)
    dl = _backend.dlpack
    with torch.cuda.device(dev):
        _backend._C.knn_candidates_cuda(
            dl(queries), dl(database), dl(center), metric, kprime, -1 if self_offset is None else self_offset,
            dl(score), dl(index), dl(workspace), _backend.current_stream(dev),
        )
    return score, index


# Device types on which the triton backend's first candidate pass runs on tensor cores (split
# bf16, fmkit.triton.knn.tc_bucket_candidates); tests add "cpu" to run it in the interpreter.
TENSOR_CORE_DEVICES = {"cuda"}
# backend="auto" takes the tensor-core pass up to this dimension. H200, 2026-12-04: at d = 128
# it took 47 ms against the cuda kernel's 200 ms (Q=16384, N=1M, k=10); at d = 768 1277 ms
# against 1032 ms and at 25k x 25k x 1024 756 ms against 253 ms, where the certificate's wider
# bound sends more rows back to the fp32 path.
TENSOR_CORE_AUTO_MAX_D = 128


def use_tensor_cores(name, queries, database, width):
    """The triton backend's first pass at small widths on large databases; wider searches (the
    re-searches of uncertified rows among them) take the fp32 tiles."""
    if name != "triton" or queries.device.type not in TENSOR_CORE_DEVICES or queries.dtype == torch.float64:
        return False
    from fmkit.triton.knn import tc_eligible

    return tc_eligible(queries.shape[0], database.shape[0], queries.shape[1], width)


def tiled_candidates(queries, database, center, metric, kprime, self_offset, score_tile):
    """Candidates from score tiles [q_chunk, n_chunk] merged with torch.topk (bounded memory)."""
    Q = queries.shape[0]
    N = database.shape[0]
    q_chunk = min(Q, 4096)
    n_chunk = max(kprime, _TILE_ELEMENTS.get(queries.device.type, 1 << 22) // q_chunk)
    scores, indices = [], []
    for q0 in range(0, Q, q_chunk):
        x = queries[q0 : q0 + q_chunk]
        best_s = torch.empty((x.shape[0], 0), dtype=center.dtype, device=x.device)
        best_i = torch.empty((x.shape[0], 0), dtype=torch.int64, device=x.device)
        for n0 in range(0, N, n_chunk):
            y = database[n0 : n0 + n_chunk]
            self_col = None if self_offset is None else q0 + self_offset - n0
            s = score_tile(x, y, center, metric, self_col)
            cols = torch.arange(n0, n0 + y.shape[0], device=x.device).expand(x.shape[0], -1)
            s, i = torch.cat([best_s, s], 1), torch.cat([best_i, cols], 1)
            best_s, pos = torch.topk(s, min(kprime, s.shape[1]), dim=1, largest=False, sorted=False)
            best_i = torch.gather(i, 1, pos)
        scores.append(best_s)
        indices.append(best_i)
    return torch.cat(scores), torch.cat(indices)


def torch_score_tile(x, y, center, metric, self_col):
    """The score of the candidate contract in float64 torch ops (any device, no TF32), rounded
    to the score dtype (float32; float64 for float64 inputs, centred in float64)."""
    if metric == "l2":
        xc = (x.to(center.dtype) - center).to(torch.float64)
        yc = (y.to(center.dtype) - center).to(torch.float64)
        s = (yc * yc).sum(1)[None, :] - 2.0 * (xc @ yc.T)
    else:
        s = -(x.to(torch.float64) @ (y.to(center.dtype) - center).to(torch.float64).T)
    s = s.to(center.dtype)
    if self_col is not None:
        rows = torch.arange(x.shape[0], device=x.device)
        cols = rows + self_col
        keep = (cols >= 0) & (cols < y.shape[0])
        s[rows[keep], cols[keep]] = float("inf")
    return s


def _torch_candidates(queries, database, center, metric, kprime, self_offset):
    return tiled_candidates(queries, database, center, metric, kprime, self_offset, torch_score_tile)


def _triton_candidates(queries, database, center, metric, kprime, self_offset):
    from fmkit.triton.knn import score_tile

    return tiled_candidates(queries, database, center, metric, kprime, self_offset, score_tile)


CANDIDATES = {
    "cpu": _cpu_candidates,
    "cuda": _cuda_candidates,
    "triton": _triton_candidates,
    "torch": _torch_candidates,
}


def knn_sharded(
    queries: torch.Tensor,
    database_shard: torch.Tensor,
    k: int,
    *,
    group=None,
    metric: str = "l2",
    exclude_self: bool = False,
    backend: str = "auto",
    validate: bool = True,
    check_finite: bool | None = None,
):
    """Exact kNN over a database sharded across the ranks of a torch.distributed group.

    Every rank passes the same `queries` and its own shard; shards are concatenated in rank
    order. Each rank searches its shard, the per-rank top-k lists (float64 distances, global
    indices) are all-gathered and merged by (distance, index), so the result on every rank is
    identical to `knn` over the concatenated database. With `exclude_self`, query i is
    global database row i.
    """
    import torch.distributed as dist

    queries, to_input_kind = _backend.to_torch(queries, "queries")
    database_shard, _ = _backend.to_torch(database_shard, "database_shard")
    world = dist.get_world_size(group)
    check(queries, database_shard, 1, metric, False, backend,
          _backend.deprecated_switch("knn_sharded", validate, check_finite=check_finite))
    sizes = [torch.zeros(1, dtype=torch.int64, device=queries.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([database_shard.shape[0]], device=queries.device), group=group)
    sizes = [int(s) for s in sizes]
    total = sum(sizes)
    offset = sum(sizes[: dist.get_rank(group)])
    eligible = total - (1 if exclude_self else 0)
    _backend.check_int(k, "k", 1, eligible, f"{eligible} (global database rows)")
    if exclude_self and queries.shape[0] != total:
        raise ValueError(f"exclude_self: queries must be the whole database ({total} rows), got {queries.shape[0]}")
    # Search one extra neighbour so that dropping self after the merge still leaves k.
    k_local = min(k + (1 if exclude_self else 0), database_shard.shape[0])
    local_d, local_i = exact_knn(queries, database_shard, k_local, metric, None, backend)
    local_i = local_i + offset
    width = min(k + 1, total) if exclude_self else k
    pad = width - k_local
    if pad > 0:  # shards smaller than k: pad with entries that lose every comparison
        worst = float("-inf") if metric == "ip" else float("inf")
        local_d = torch.cat([local_d, local_d.new_full((local_d.shape[0], pad), worst)], 1)
        local_i = torch.cat([local_i, local_i.new_full((local_i.shape[0], pad), total)], 1)
    all_d = [torch.empty_like(local_d) for _ in range(world)]
    all_i = [torch.empty_like(local_i) for _ in range(world)]
    dist.all_gather(all_d, local_d.contiguous(), group=group)
    dist.all_gather(all_i, local_i.contiguous(), group=group)
    d_cat, i_cat = sort_by_distance_then_index(torch.cat(all_d, 1), torch.cat(all_i, 1), descending=metric == "ip")
    if exclude_self:
        rows = torch.arange(queries.shape[0], device=queries.device)[:, None]
        keep = i_cat != rows
        # Stable compaction: the first k kept entries of each row, in order.
        order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
        d_cat, i_cat = torch.gather(d_cat, 1, order), torch.gather(i_cat, 1, order)
    return to_input_kind(d_cat[:, :k].to(_out_dtype(queries))), to_input_kind(i_cat[:, :k])
