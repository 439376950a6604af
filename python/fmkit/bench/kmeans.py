"""k-means benchmark cases: fmkit.cluster.kmeans against faiss.Kmeans (CPU, or GPU where built)
and the plain-torch Lloyd loop users write themselves (fp32 GEMM + argmin + index_add_; not exact).

Both train `iters` Lloyd iterations from random distinct points, with no subsampling
(faiss: max_points_per_centroid=10**7, as DataComp sets it) and metric "l2" (faiss.Kmeans's
default and DataComp's training metric). fmkit's time also includes its final assignment of
every point to the returned centroids (one more kNN pass); faiss.Kmeans.train does not.
"""
from __future__ import annotations

import importlib.util

import torch

from fmkit.bench._shapes import embedded_shapes, knn_backends
from fmkit.cluster import kmeans

# (N, d, n_clusters, iters)
SHAPES = {
    ("cpu", "quick"): [(100_000, 64, 256, 5)],
    ("cpu", "full"): [(1_000_000, 64, 1024, 10)],
    ("cuda", "quick"): [(1_000_000, 64, 1024, 5)],
    ("cuda", "full"): [(1_000_000, 768, 100_000, 5), (10_000_000, 64, 1024, 10)],
}


def _faiss(x, k, iters, device):
    import faiss

    N, d = x.shape
    if device.type == "cuda":
        if not hasattr(faiss, "StandardGpuResources"):
            return None
        xn = x.cpu().numpy()  # faiss.Kmeans(gpu=True) trains from host memory

        def run():
            km = faiss.Kmeans(d, k, niter=iters, seed=0, spherical=False, max_points_per_centroid=10**7, gpu=True)
            km.train(xn)
            return km.centroids

        return run
    xn = x.numpy()

    def run():
        km = faiss.Kmeans(d, k, niter=iters, seed=0, spherical=False, max_points_per_centroid=10**7)
        km.train(xn)
        return km.centroids

    return run


def _torch_lloyd(x, k, iters, chunk=65536):
    """Lloyd iterations as a user would write them: squared distances from ||c||^2 - 2 x.c in
    fp32 chunks, argmin, index_add_ sums; an empty cluster keeps its centroid."""
    def run():
        g = torch.Generator().manual_seed(0)
        c = x[torch.randperm(x.shape[0], generator=g)[:k].to(x.device)].clone()
        for _ in range(iters):
            cn = (c * c).sum(1)
            assign = torch.cat([(cn[None, :] - 2 * (x[i : i + chunk] @ c.T)).argmin(1)
                                for i in range(0, x.shape[0], chunk)])
            sums = torch.zeros_like(c).index_add_(0, assign, x)
            counts = torch.bincount(assign, minlength=k).to(x.dtype)
            c = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], c)
        return c

    return run


def cases(device: torch.device, quick: bool, shapes: list[tuple[int, int, int, int]] | None = None):
    """Benchmark cases; `shapes` ((N, d, n_clusters, iters), ...) overrides the embedded sizes."""
    shapes = embedded_shapes(SHAPES, device, quick, shapes)
    backends = knn_backends(device)
    return [_case(N, d, k, iters, device, backends) for N, d, k, iters in shapes]


def _case(N, d, k, iters, device, backends):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, d, generator=g).to(device)
    contenders = [
        (f"fmkit[{b}]", (lambda b=b: kmeans(x, k, iters=iters, metric="l2", seed=0, backend=b)), False)
        for b in backends
    ]
    contenders.append(("torch Lloyd (mm+argmin)", _torch_lloyd(x, k, iters), True))
    if importlib.util.find_spec("faiss") is not None:
        f = _faiss(x, k, iters, device)
        if f is not None:
            contenders.append(("faiss.Kmeans" + (" gpu" if device.type == "cuda" else ""), f, True))
    return {
        "shape": f"N={N} d={d} k={k} iters={iters} fp32 l2",
        "flops": 2.0 * N * k * d * iters,
        "contenders": contenders,
        "repeats": 1 if N * k * d >= 10**11 else 3,
    }
