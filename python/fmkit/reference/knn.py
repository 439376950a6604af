"""Exact k-nearest-neighbour search in plain PyTorch: the test oracle and the fallback.

Every distance is computed directly as sum((x - y)^2) (or <x, y>) in float64, summed over
the coordinates in index order (`pair_scores`), so there is no cancellation, identical
vectors are at distance exactly 0 and have exactly equal scores against any query (a GEMM
does not promise that: its edge tiles sum in another order), and ties are broken by the
lower database index. Work is chunked over queries and database rows, so memory stays
bounded (under 1 MB of float64 temporaries) whatever Q and N are. It is slow by design.
"""
from __future__ import annotations

import torch

# (query, database row) pairs per chunk: 256 KB of float64 per temporary, below torch's
# parallel grain, so the d small ops per chunk stay single-threaded (no OpenMP barrier each).
_CHUNK_PAIRS = 1 << 15


def pair_scores(x: torch.Tensor, y: torch.Tensor, metric: str) -> torch.Tensor:
    """sum_j (x_j - y_j)^2 (l2) or sum_j x_j y_j (ip) over the last dim of broadcastable x, y.

    One fixed order for every pair: coordinate 0, 1, ..., d-1, each term rounded before it is
    added (separate ops, so no fused multiply-add can apply to some positions and not to
    others). The result of a pair therefore depends only on the two vectors, never on where
    they sit in the batch. x and y must already be in the accumulation dtype (float64).
    """
    xs, ys = x.movedim(-1, 0).contiguous(), y.movedim(-1, 0).contiguous()
    acc = None
    for xj, yj in zip(xs, ys):
        term = xj - yj if metric == "l2" else xj * yj
        if metric == "l2":
            term = term * term
        acc = term if acc is None else acc.add_(term)
    return acc


def sort_by_distance_then_index(dist: torch.Tensor, idx: torch.Tensor, descending: bool):
    """Sorts each row by (distance, index): by index first, then stably by distance."""
    idx, order = torch.sort(idx, dim=1)
    dist = torch.gather(dist, 1, order)
    dist, order = torch.sort(dist, dim=1, stable=True, descending=descending)
    return dist, torch.gather(idx, 1, order)


def knn_reference(
    queries: torch.Tensor,
    database: torch.Tensor,
    k: int,
    metric: str = "l2",
    self_index: torch.Tensor | None = None,
):
    """Exact top-k of `database` rows for each query row, in float64.

    `self_index[i]` (int64, optional) is a database row excluded for query i.
    Returns float64 distances [Q, k] (squared L2 ascending, or inner product descending)
    and int64 indices [Q, k].
    """
    Q = queries.shape[0]
    N = database.shape[0]
    descending = metric == "ip"
    worst = float("-inf") if descending else float("inf")
    device = queries.device
    best_d = torch.full((Q, 0), worst, dtype=torch.float64, device=device)
    best_i = torch.zeros((Q, 0), dtype=torch.int64, device=device)
    q_chunk = max(1, min(Q, 256))
    n_chunk = max(1, _CHUNK_PAIRS // q_chunk)
    out_d, out_i = [], []
    for q0 in range(0, Q, q_chunk):
        x = queries[q0 : q0 + q_chunk].to(torch.float64)[:, None, :]
        rows = torch.arange(q0, q0 + x.shape[0], device=device)
        bd, bi = best_d[q0 : q0 + x.shape[0]], best_i[q0 : q0 + x.shape[0]]
        for n0 in range(0, N, n_chunk):
            y = database[n0 : n0 + n_chunk].to(torch.float64)
            dist = pair_scores(x, y[None], metric)
            cols = torch.arange(n0, n0 + y.shape[0], device=device)
            if self_index is not None:
                dist = dist.masked_fill(cols[None, :] == self_index[rows][:, None], worst)
            dist = torch.cat([bd, dist], dim=1)
            idx = torch.cat([bi, cols.expand(x.shape[0], -1)], dim=1)
            dist, idx = sort_by_distance_then_index(dist, idx, descending)
            bd, bi = dist[:, :k], idx[:, :k]
        out_d.append(bd)
        out_i.append(bi)
    return torch.cat(out_d), torch.cat(out_i)
