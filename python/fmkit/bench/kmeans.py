"""k-means benchmark cases: fmkit.cluster.kmeans against faiss.Kmeans (CPU, or GPU where built)
and the plain-torch Lloyd loop users write themselves (fp32 GEMM + argmin + index_add_; not exact).

Both train `iters` Lloyd iterations from random distinct points, with no subsampling
(faiss: max_points_per_centroid=10**7, as DataComp sets it) and metric "l2" (faiss.Kmeans's
default and DataComp's training metric). fmkit's time also includes its final assignment of
every point to the returned centroids (one more kNN pass); faiss.Kmeans.train does not.

Error column ("rel err vs fp64"): |I(C) - I(C64)| / I(C64), the relative error of the final
inertia I(C) = sum_i min_j |x_i - c_j|^2 (evaluated in float64) of a contender's centroids C against
that of C64, a float64 Lloyd run (exact float64 assignments, float64 means; an empty cluster keeps
its centroid) of the same number of iterations from the SAME initial centroids: fmkit and the
torch loop both start from x[randperm(N, seed 0)[:k]]; faiss from its own seeded sample, which
faiss.Kmeans(niter=0) returns. Inertia rather than the centroids themselves: a float32 run can
flip the assignment of a point that is within rounding of two centroids, which moves a centroid
visibly but the objective negligibly; a wrong or unconverged run shows in the inertia. Computed
once per case outside the timing, and skipped (NaN, the setting says so) when it would cost more
than REFERENCE_MAX_FLOPS float64 FLOPs (the 1M x 768, 100k-cluster GPU case; the full CPU size).
"""
from __future__ import annotations

import importlib.util
import sys

import torch

from fmkit.bench import LazyCases, accuracy
from fmkit.bench._shapes import embedded_shapes, knn_backends
from fmkit.bench.knn import float64_knn
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
    """Benchmark cases, each built (data, float64 reference, error column) when the run reaches it;
    `shapes` ((N, d, n_clusters, iters), ...) overrides the embedded sizes."""
    shapes = embedded_shapes(SHAPES, device, quick, shapes)
    backends = knn_backends(device)
    return LazyCases([lambda s=s: _case(*s, device, backends) for s in shapes])


# float64 FLOPs (2 N k d per Lloyd iteration or inertia evaluation) above which the reference is skipped.
REFERENCE_MAX_FLOPS = {"cuda": 5e13, "cpu": 5e11}
FAISS_NAME = "faiss.Kmeans"


def _case(N, d, k, iters, device, backends):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, d, generator=g).to(device)
    contenders = [
        (f"fmkit[{b}]", (lambda b=b: kmeans(x, k, iters=iters, metric="l2", seed=0, backend=b)), False)
        for b in backends
    ]
    settings = {f"fmkit[{b}]": f"exact assignments (kNN backend={b}), float64 sums" for b in backends}
    contenders.append(("torch Lloyd (mm+argmin)", _torch_lloyd(x, k, iters), True))
    settings["torch Lloyd (mm+argmin)"] = "fp32 GEMM" + (" (TF32 off)" if device.type == "cuda" else "") + \
        ", 65536-row chunks"
    faiss_run = None
    if importlib.util.find_spec("faiss") is not None:
        faiss_run = _faiss(x, k, iters, device)
        if faiss_run is not None:
            name = FAISS_NAME + (" gpu" if device.type == "cuda" else "")
            contenders.append((name, faiss_run, True))
            settings[name] = "faiss defaults, seed=0, max_points_per_centroid=10**7 (no subsampling)"
    flops = 2.0 * N * k * d * (2 * iters + len(contenders) + 1)  # at most two reference runs + evaluations
    if flops > REFERENCE_MAX_FLOPS["cuda" if device.type == "cuda" else "cpu"]:
        acc = {name: float("nan") for name, _, _ in contenders}
        for name in settings:
            settings[name] += "; err: float64 reference skipped at this size"
    else:
        acc = _accuracy(contenders, x, k, iters, faiss_run)
    return {
        "shape": f"N={N} d={d} k={k} iters={iters} fp32 l2",
        "flops": 2.0 * N * k * d * iters,
        "contenders": contenders,
        "repeats": 1 if N * k * d >= 10**11 else 3,
        "accuracy": acc,
        "settings": settings,
    }


def _accuracy(contenders, x, k, iters, faiss_run):
    """{name: relative inertia error against the float64 Lloyd run from the contender's own start}."""
    def inertia_of(fn):
        out = fn()
        centroids = out[0] if isinstance(out, (tuple, list)) else out
        return inertia_fp64(x, torch.as_tensor(centroids).to(x.device))

    acc = {}
    try:
        g = torch.Generator().manual_seed(0)
        init = x[torch.randperm(x.shape[0], generator=g)[:k].to(x.device)]
        ours = [c for c in contenders if c[1] is not faiss_run]
        acc.update(accuracy(ours, inertia_of, inertia_fp64(x, lloyd_fp64(x, init, iters))))
        if faiss_run is not None:
            faiss = [c for c in contenders if c[1] is faiss_run]
            acc.update(accuracy(faiss, inertia_of, inertia_fp64(x, lloyd_fp64(x, _faiss_init(x, k), iters))))
    except Exception as exc:  # e.g. out of memory: no error column, the timing still runs
        print(f"\nkmeans: float64 reference failed ({type(exc).__name__}: {exc})"[:300], file=sys.stderr)
        acc = {name: acc.get(name, float("nan")) for name, _, _ in contenders}
    if x.is_cuda:
        torch.cuda.empty_cache()
    return acc


def _faiss_init(x, k):
    """faiss.Kmeans's initial centroids for seed 0 (its niter=0 run returns them untouched)."""
    import faiss

    km = faiss.Kmeans(x.shape[1], k, niter=0, seed=0, spherical=False, max_points_per_centroid=10**7)
    km.train(x.cpu().numpy())
    return torch.from_numpy(km.centroids).to(x.device)


def _nearest_fp64(X, C):
    """(index, squared distance) of the nearest row of C for every row of X, all float64."""
    score, idx = float64_knn(X, C, 1)
    return idx[:, 0], (score[:, 0] + (X.double() ** 2).sum(1)).clamp(min=0)


@torch.no_grad()
def lloyd_fp64(x, init, iters):
    """`iters` Lloyd iterations in float64 from `init`: exact float64 assignments and means; an
    empty cluster keeps its centroid. Returns the float64 centroids."""
    X = x.double()
    C = init.double().clone()
    for _ in range(iters):
        assign, _ = _nearest_fp64(X, C)
        sums = torch.zeros_like(C).index_add_(0, assign, X)
        counts = torch.bincount(assign, minlength=C.shape[0]).to(torch.float64)
        C = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], C)
    return C


@torch.no_grad()
def inertia_fp64(x, centroids):
    """sum_i min_j |x_i - c_j|^2 in float64 (a 0-d tensor)."""
    return _nearest_fp64(x.double(), centroids.double())[1].sum()
