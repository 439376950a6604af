"""Product-Gaussian kernel density estimate in plain PyTorch (float64, chunked): the oracle."""
from __future__ import annotations

import math

import torch

_CHUNK_ELEMENTS = 1 << 22  # pairs per chunk: 32 MB of float64


def gaussian_kde_reference(points: torch.Tensor, bandwidth: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """f(x) = 1/n sum_i prod_j N(x_j - p_ij; 0, h_j^2) at each row of `queries` [m, q]."""
    n, q = points.shape
    m = queries.shape[0]
    points = points.to(torch.float64)
    queries = queries.to(torch.float64)
    h = bandwidth.to(torch.float64)
    out = torch.zeros(m, dtype=torch.float64, device=queries.device)
    if n == 0:
        return out
    q_chunk = max(1, min(m, 4096))
    n_chunk = max(1, _CHUNK_ELEMENTS // q_chunk)
    for q0 in range(0, m, q_chunk):
        acc = torch.zeros(min(q_chunk, m - q0), dtype=torch.float64, device=queries.device)
        for n0 in range(0, n, n_chunk):
            z = (queries[q0 : q0 + q_chunk, None, :] - points[None, n0 : n0 + n_chunk, :]) / h
            acc += torch.exp(-0.5 * (z * z).sum(-1)).sum(dim=1)
        out[q0 : q0 + q_chunk] = acc
    return out / (n * (2 * math.pi) ** (q / 2) * torch.prod(h))
