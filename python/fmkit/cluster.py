"""k-means clustering on fmkit's exact kNN: `fmkit.cluster.kmeans`.

Lloyd's algorithm with the settings DataComp used through faiss (contrastive_datacomp.md §3.5):
random distinct points as initial centroids, a fixed number of iterations, no subsampling
unless asked for, faiss's rule for re-seeding empty clusters.

* Assignment: `fmkit.ops.knn(x, centroids, 1, metric=...)`: exact nearest centroid, ties to
  the lower centroid index, so the partition does not depend on chunking or the backend.
* Update: per-cluster sums accumulated in float64, each cluster's points in index order (a C++
  pass on the CPU; a sort and a segmented sum on CUDA, which is deterministic, unlike
  atomics), centroid = sum / count,
  then rounded to x's dtype (the centroids the next assignment and the caller see).
* Empty clusters (faiss's rule): after each update, empty clusters are visited in index
  order; each picks a cluster j at random with probability proportional to (size_j - 1)
  (clusters of one point cannot be split), copies its centroid and perturbs both copies
  symmetrically: coordinate t of the new centroid is multiplied by 1 + s_t/1024 and that of
  cluster j by 1 - s_t/1024, with s_t = +1 for even t and -1 for odd t; j's size is split
  between the two (the new one gets floor(size_j / 2)). The random draws come from the same
  seeded CPU generator as the initialisation.
* metric="ip" assigns by maximum inner product; centroids are still plain means (not
  normalised) unless spherical=True, as in faiss.Kmeans (spherical=False by default).
  Note: DataComp trained its k-means with an L2 index and used inner product only to
  assign samples to the finished centroids (§3.5 steps 3-5), i.e. metric="l2" here.

Everything random comes from torch.Generator().manual_seed(seed) on the CPU, and every
reduction has a fixed order, so two runs with the same inputs and seed are bitwise equal.
"""
from __future__ import annotations

import sys
import time
from typing import Any

import torch

from fmkit.ops import _backend
from fmkit.ops import knn as _knn

_knn_module = sys.modules["fmkit.ops.knn"]
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
DTYPE_HINT = "; convert first, e.g. x.astype(numpy.float32) or x.float() (k-means runs the fp32 kernels)"
VALUE_LIMIT = _knn_module.VALUE_LIMIT
METRICS = ("l2", "ip")
SPLIT_EPS = 1.0 / 1024.0  # relative perturbation when an empty cluster takes over half of another
_ASSIGN_CHUNK = 1 << 18  # rows per knn call (bounds the kNN candidate buffers)
_SUM_CHUNK = 1 << 16  # rows converted to float64 at a time in the CUDA update


def kmeans(
    x: Any,
    n_clusters: int,
    *,
    iters: int = 20,
    metric: str = "ip",
    seed: int = 0,
    backend: str = "auto",
    max_points_per_centroid: int | None = None,
    spherical: bool = False,
    init: Any = None,
    progress: bool = False,
    validate: bool = True,
):
    """Lloyd k-means with exact assignments.

    Args:
        x: [N, d] float32 / float16 / bfloat16, torch (CPU or CUDA) or numpy.
        n_clusters: number of centroids k, 1 <= k <= N.
        iters: Lloyd iterations (assignment + update), >= 0.
        metric: "ip" (assign to the centroid of maximum inner product) or "l2" (nearest in
            Euclidean distance; what faiss.Kmeans and DataComp's training use).
        seed: seeds the initial centroids, the subsample and empty-cluster re-seeding.
        backend: the `fmkit.ops.knn` backend of the assignment step.
        max_points_per_centroid: if N > k * this, train on k * this points drawn at random
            without replacement (faiss's subsampling); None (default) trains on all N.
        spherical: normalise the centroids to unit L2 norm after each update.
        init: optional [k, d] initial centroids (same array kind as x) instead of k random
            distinct points of x.
        progress: print one line per iteration (objective, re-seeded clusters, time) to stderr.
        validate: reject NaN/inf and values too large for float32 accumulation (one pass).

    Returns:
        (centroids [k, d] in x's dtype, assignments int64 [N]) of the same array kind and
        device as x. assignments[i] is the nearest (metric) returned centroid of x[i] for
        every point, including points left out by subsampling.
    """
    x, to_kind = _backend.to_torch(x, "x")
    _backend.check_matrix(x, "x", DTYPES, DTYPE_HINT)
    N, d = x.shape
    if N == 0 or d == 0:
        raise ValueError(f"x: expected at least one row and one column, got shape {list(x.shape)}")
    _backend.check_int(n_clusters, "n_clusters", 1, N, f"N = {N}")
    _backend.check_int(iters, "iters", 0)
    if metric not in METRICS:
        raise ValueError(f"metric: expected one of {METRICS}, got {metric!r}")
    _backend.check_int(seed, "seed")
    if max_points_per_centroid is not None:
        _backend.check_int(max_points_per_centroid, "max_points_per_centroid", 1)
    _backend.resolve_backend(backend, x.device, "kmeans", _knn_module.GPU_BACKEND_ORDER)
    if validate:
        _backend.check_finite(x, "x", VALUE_LIMIT)
    k = n_clusters
    x = x.detach()
    gen = torch.Generator().manual_seed(seed)

    # Training set: faiss draws k * max_points_per_centroid points when N exceeds that.
    xt = x
    if max_points_per_centroid is not None and N > k * max_points_per_centroid:
        keep = torch.randperm(N, generator=gen)[: k * max_points_per_centroid]
        xt = x[torch.sort(keep).values.to(x.device)]

    if init is None:
        first = torch.randperm(xt.shape[0], generator=gen)[:k]
        centroids = xt[first.to(x.device)].clone()
    else:
        init, _ = _backend.to_torch(init, "init")
        if init.dim() != 2 or tuple(init.shape) != (k, d):
            raise ValueError(f"init: expected shape [{k}, {d}] (n_clusters, dim), got {list(init.shape)}")
        if not init.dtype.is_floating_point:
            raise TypeError(f"init: expected a floating-point array, got {_backend.dtype_name(init.dtype)}")
        init = init.detach().to(device=x.device, dtype=torch.float64)
        if validate:
            _backend.check_finite(init, "init", VALUE_LIMIT)
        centroids = (_normalise(init) if spherical else init).to(x.dtype)
    if spherical and init is None:
        centroids = _normalise(centroids.to(torch.float64)).to(x.dtype)

    for it in range(iters):
        t0 = time.perf_counter()
        assign, objective = _assign(xt, centroids, metric, backend)
        sums, counts = _cluster_sums(xt, assign, k)
        new = sums / counts.clamp(min=1).to(torch.float64)[:, None]
        empty = (counts == 0).nonzero().flatten()
        if empty.numel():
            # An empty cluster keeps nothing of its old centroid: it takes over half of another.
            new, counts = _split_into_empty(new.cpu(), counts.cpu(), empty.cpu(), gen)
            new = new.to(x.device)
        if spherical:
            new = _normalise(new)
        centroids = new.to(x.dtype)
        if progress:
            print(
                f"kmeans: iter {it + 1}/{iters} objective {objective:.6g} ({'sum |x-c|^2' if metric == 'l2' else 'sum <x,c>'})"
                f" re-seeded {int(empty.numel())} empty clusters, {time.perf_counter() - t0:.2f} s",
                file=sys.stderr,
            )
    assignments, _ = _assign(x, centroids, metric, backend)
    return to_kind(centroids), to_kind(assignments)


def _assign(x, centroids, metric, backend):
    """Nearest centroid of every row (exact, ties to the lower index) and the objective."""
    out = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
    objective = 0.0
    for n0 in range(0, x.shape[0], _ASSIGN_CHUNK):
        dist, idx = _knn(x[n0 : n0 + _ASSIGN_CHUNK], centroids, 1, metric=metric, backend=backend, validate=False)
        out[n0 : n0 + _ASSIGN_CHUNK] = idx[:, 0]
        objective += float(dist.sum(dtype=torch.float64))
    return out, objective


def _cluster_sums(x, assign, k, segmented=None):
    """float64 per-cluster sums [k, d] and int64 counts [k], in a fixed summation order.

    `segmented` (default: on CUDA) picks the sort + segmented-sum path over the CPU kernel.
    """
    d = x.shape[1]
    if not (x.device.type != "cpu" if segmented is None else segmented):
        # One C++ pass: each cluster's rows are added in row order, as index_add_ would, but
        # without a float64 copy of x or a separate bincount.
        sums = torch.empty((k, d), dtype=torch.float64)
        counts = torch.empty(k, dtype=torch.int64)
        dl = _backend.dlpack
        _backend._C.kmeans_cluster_sums_cpu(
            dl(x), dl(assign.contiguous()), dl(sums), dl(counts), _backend.cpu_threads()
        )
        return sums, counts
    counts = torch.bincount(assign, minlength=k)
    # GPU: index_add_ uses float atomics (order varies run to run); a stable sort by cluster
    # followed by a segmented sum adds each cluster's points in index order.
    order = torch.argsort(assign, stable=True)
    sums = torch.zeros((k, d), dtype=torch.float64, device=x.device)
    # Segments are summed chunk by chunk so that only _SUM_CHUNK rows are float64 at a time.
    for n0 in range(0, x.shape[0], _SUM_CHUNK):
        rows = order[n0 : n0 + _SUM_CHUNK]
        a = assign[rows]
        lengths = torch.bincount(a, minlength=k)
        sums += torch.segment_reduce(x[rows].to(torch.float64), "sum", lengths=lengths, axis=0, unsafe=True)
    return sums, counts


def _split_into_empty(centroids, counts, empty, gen):
    """faiss's re-seeding: each empty cluster takes over half of a size-weighted random cluster."""
    centroids = centroids.clone()
    counts = counts.clone()
    d = centroids.shape[1]
    sign = torch.ones(d, dtype=torch.float64)
    sign[1::2] = -1.0
    for ci in empty.tolist():
        weights = (counts - 1).clamp(min=0).to(torch.float64)
        if float(weights.sum()) == 0.0:  # no cluster has two points: nothing to split
            break
        cj = int(torch.multinomial(weights, 1, generator=gen))
        base = centroids[cj].clone()
        centroids[ci] = base * (1 + SPLIT_EPS * sign)
        centroids[cj] = base * (1 - SPLIT_EPS * sign)
        counts[ci] = counts[cj] // 2
        counts[cj] -= counts[ci]
    return centroids, counts


def _normalise(c):
    return c / c.norm(dim=1, keepdim=True).clamp(min=torch.finfo(c.dtype).tiny)
