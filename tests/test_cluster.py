"""fmkit.cluster.kmeans: against a float64 Lloyd reference, determinism, re-seeding, errors."""
import importlib

import numpy as np
import pytest
import torch

import fmkit.cluster as cluster
from fmkit.cluster import kmeans
from fmkit.ops import knn

knn_module = importlib.import_module("fmkit.ops.knn")
HAS_CUDA = torch.cuda.is_available()


def reference_lloyd(x, init, iters, metric):
    """Plain float64 Lloyd: argmin/argmax with ties to the lower index, centroid = mean."""
    x = np.asarray(x, dtype=np.float64)
    c = np.asarray(init, dtype=np.float64).copy()
    for _ in range(iters):
        a = _ref_assign(x, c, metric)
        for j in range(c.shape[0]):
            members = x[a == j]
            assert len(members), "reference hit an empty cluster: choose better data"
            c[j] = members.mean(0)
    return c, _ref_assign(x, c, metric)


def _ref_assign(x, c, metric):
    if metric == "ip":
        return np.argmax(x @ c.T, axis=1)  # first maximum = lower index on ties
    return np.argmin(((x[:, None, :] - c[None, :, :]) ** 2).sum(-1), axis=1)


def blobs(n_per, k, d, seed=0, spread=0.05, scale=10.0):
    """k well separated Gaussian blobs; for 'ip' the centres are orthogonal-ish unit directions."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=g, dtype=torch.float64)
    centres = scale * centres / centres.norm(dim=1, keepdim=True)
    labels = torch.arange(k).repeat_interleave(n_per)
    x = centres[labels] + spread * torch.randn(k * n_per, d, generator=g, dtype=torch.float64)
    perm = torch.randperm(k * n_per, generator=g)
    return x[perm].to(torch.float32), labels[perm]


def same_partition(a, b):
    a, b = np.asarray(a), np.asarray(b)
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_matches_float64_lloyd_on_blobs(metric):
    k, d = 6, 16
    x, truth = blobs(200, k, d, seed=1)
    # One point of each blob as the start: the reference never sees an empty cluster.
    init = torch.stack([x[(truth == j).nonzero()[0, 0]] for j in range(k)])
    c, a = kmeans(x, k, iters=5, metric=metric, init=init)
    rc, ra = reference_lloyd(x.numpy(), init.numpy(), 5, metric)
    assert a.dtype == torch.int64 and a.shape == (x.shape[0],)
    assert c.dtype == torch.float32 and c.shape == (k, d)
    np.testing.assert_array_equal(a.numpy(), ra)
    assert same_partition(a, truth)
    np.testing.assert_allclose(c.numpy(), rc, rtol=0, atol=1e-5)
    # The returned assignments are the exact nearest returned centroids.
    assert torch.equal(a, knn(x, c, 1, metric=metric)[1][:, 0])


@pytest.mark.parametrize("metric", ["l2"])  # unnormalised "ip" means: a split copy of larger norm can win a blob
def test_random_init_recovers_blobs(metric):
    k, d = 4, 8
    x, truth = blobs(300, k, d, seed=2)
    c, a = kmeans(x, k, iters=15, metric=metric, seed=3)
    # Random init may put two centroids in one blob; re-seeding and Lloyd must still not
    # leave a cluster empty, and with well separated blobs the result is a local optimum
    # where each centroid is the mean of its points.
    counts = torch.bincount(a, minlength=k)
    assert (counts > 0).all()
    for j in range(k):
        torch.testing.assert_close(c[j].double(), x[a == j].double().mean(0), atol=1e-5, rtol=0)


def test_random_init_distinct_points_partition():
    # Seeded init picks k distinct points; with one blob per centroid found, the partition is the truth.
    k, d = 3, 8
    x, truth = blobs(100, k, d, seed=4)
    found = 0
    for seed in range(6):
        g = torch.Generator().manual_seed(seed)
        first = torch.randperm(x.shape[0], generator=g)[:k]
        if len(set(truth[first].tolist())) == k:
            _, a = kmeans(x, k, iters=5, metric="l2", seed=seed)
            assert same_partition(a, truth)
            found += 1
    assert found


def test_deterministic_bitwise():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 12, generator=g)
    for metric in ("l2", "ip"):
        c1, a1 = kmeans(x, 40, iters=6, metric=metric, seed=7)
        c2, a2 = kmeans(x, 40, iters=6, metric=metric, seed=7)
        assert torch.equal(c1, c2) and torch.equal(a1, a2)
        c3, _ = kmeans(x, 40, iters=6, metric=metric, seed=8)
        assert not torch.equal(c1, c3)


def test_chunking_does_not_change_results(monkeypatch):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2000, 6, generator=g)
    c1, a1 = kmeans(x, 10, iters=4, metric="l2")
    monkeypatch.setattr(cluster, "_ASSIGN_CHUNK", 333)
    monkeypatch.setattr(cluster, "_SUM_CHUNK", 77)
    c2, a2 = kmeans(x, 10, iters=4, metric="l2")
    assert torch.equal(a1, a2)
    torch.testing.assert_close(c1, c2, atol=1e-6, rtol=0)


def test_segmented_sums_match_index_add():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5000, 7, generator=g)
    a = torch.randint(0, 50, (5000,), generator=g)
    a[a == 3] = 4  # an empty cluster
    s1, n1 = cluster._cluster_sums(x, a, 50, segmented=False)
    s2, n2 = cluster._cluster_sums(x, a, 50, segmented=True)
    assert torch.equal(n1, n2) and n1[3] == 0
    torch.testing.assert_close(s1, s2, atol=1e-10, rtol=0)
    torch.testing.assert_close(s1, torch.zeros(50, 7, dtype=torch.float64).index_add_(0, a, x.double()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cpu_sums_equal_sequential_index_add(dtype):
    """The C++ update adds each cluster's rows in row order: bitwise index_add_ in float64,
    whatever the thread count or the layout of x."""
    g = torch.Generator().manual_seed(3)
    x = (100 * torch.randn(20000, 9, generator=g)).to(dtype)
    a = torch.randint(0, 37, (20000,), generator=g)
    a[a == 5] = 6  # an empty cluster
    ref = torch.zeros(37, 9, dtype=torch.float64).index_add_(0, a, x.double())
    threads = torch.get_num_threads()
    for layout in (x, x.T.contiguous().T):
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            try:
                s, c = cluster._cluster_sums(layout, a, 37)
            finally:
                torch.set_num_threads(threads)
            assert torch.equal(s, ref) and torch.equal(c, torch.bincount(a, minlength=37))
    with pytest.raises(ValueError, match="assign"):
        cluster._cluster_sums(x, torch.full((20000,), 37), 37)


def test_assignments_exact_at_near_ties():
    """Points (almost) equidistant from two centroids: the assignment is the float64 argmin
    with ties to the lower index, as in the reference, not whatever fp32 scores suggest."""
    g = torch.Generator().manual_seed(4)
    d = 16
    c = torch.randn(8, d, generator=g)
    c[5] = c[2]  # identical centroids: every point of theirs goes to 2
    mid = 0.5 * (c[0] + c[1])
    x = torch.cat([mid + 1e-6 * torch.randn(50, d, generator=g), c[2] + 0.1 * torch.randn(50, d, generator=g),
                   torch.randn(400, d, generator=g)])
    before = knn_module.nearest_fallback_rows
    _, a = kmeans(x, 8, iters=0, metric="l2", init=c)
    x64, c64 = x.double().numpy(), c.double().numpy()
    np.testing.assert_array_equal(a.numpy(), _ref_assign(x64, c64, "l2"))
    assert not (a == 5).any()
    assert knn_module.nearest_fallback_rows >= before + 50  # the near-ties took the exact fallback
    _, a_ip = kmeans(x, 8, iters=0, metric="ip", init=c)
    np.testing.assert_array_equal(a_ip.numpy(), _ref_assign(x64, c64, "ip"))


@pytest.mark.parametrize("kind", ["outlier", "duplicate"])
def test_empty_cluster_is_reseeded(kind):
    k, d = 2, 4
    x, truth = blobs(100, k, d, seed=5)
    a_mean = x[truth == 0].mean(0)
    far = torch.full((d,), 1000.0) if kind == "outlier" else a_mean
    init = torch.stack([a_mean, far])  # cluster 1 is empty after the first assignment
    c1, a1 = kmeans(x, k, iters=1, metric="l2", init=init)
    # Rule: the empty cluster takes a copy of the only splittable cluster (0) perturbed by
    # +-1/1024 per coordinate (even +, odd -), cluster 0 the opposite perturbation.
    mean_all = x.double().mean(0)
    sign = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64)
    torch.testing.assert_close(c1[1].double(), mean_all * (1 + sign / 1024), atol=1e-6, rtol=0)
    torch.testing.assert_close(c1[0].double(), mean_all * (1 - sign / 1024), atol=1e-6, rtol=0)
    # Lloyd then separates the two blobs.
    c, a = kmeans(x, k, iters=10, metric="l2", init=init)
    assert same_partition(a, truth)


def test_duplicate_points_keep_valid_output():
    # Only 3 distinct points and 5 clusters: some clusters stay empty whatever happens.
    base = torch.tensor([[0.0, 0.0], [5.0, 5.0], [-5.0, 5.0]])
    x = base.repeat(20, 1)
    c, a = kmeans(x, 5, iters=5, metric="l2", seed=0)
    assert torch.isfinite(c).all()
    assert len(set(a.tolist())) == 3
    assert torch.equal(a, knn(x, c, 1)[1][:, 0])
    c2, a2 = kmeans(x, 5, iters=5, metric="l2", seed=0)
    assert torch.equal(c, c2) and torch.equal(a, a2)


def test_spherical_normalises():
    x, _ = blobs(50, 3, 8, seed=6)
    c, _ = kmeans(x, 3, iters=3, metric="ip", spherical=True)
    torch.testing.assert_close(c.norm(dim=1), torch.ones(3), atol=1e-6, rtol=0)
    c_plain, _ = kmeans(x, 3, iters=3, metric="ip")
    assert not torch.allclose(c_plain.norm(dim=1), torch.ones(3))  # plain means are not normalised


def test_numpy_in_numpy_out():
    x, _ = blobs(50, 3, 5, seed=7)
    c, a = kmeans(x.numpy(), 3, iters=3, metric="l2")
    assert isinstance(c, np.ndarray) and isinstance(a, np.ndarray)
    assert c.dtype == np.float32 and a.dtype == np.int64
    ct, at = kmeans(x, 3, iters=3, metric="l2")
    np.testing.assert_array_equal(c, ct.numpy())
    np.testing.assert_array_equal(a, at.numpy())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(dtype):
    x, truth = blobs(80, 3, 8, seed=8)
    init = torch.stack([x[(truth == j).nonzero()[0, 0]] for j in range(3)])
    c, a = kmeans(x.to(dtype), 3, iters=3, metric="l2", init=init)
    assert c.dtype == dtype
    assert same_partition(a, truth)


def test_subsampling():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1000, 4, generator=g)
    c1, a1 = kmeans(x, 5, iters=3, max_points_per_centroid=20, seed=1)
    c2, a2 = kmeans(x, 5, iters=3, max_points_per_centroid=20, seed=1)
    assert torch.equal(c1, c2) and torch.equal(a1, a2)
    assert a1.shape == (1000,)  # every point is assigned, not only the subsample
    c3, _ = kmeans(x, 5, iters=3, max_points_per_centroid=200, seed=1)  # 1000 <= 5*200: no subsampling
    c4, _ = kmeans(x, 5, iters=3, seed=1)
    assert torch.equal(c3, c4)


def test_iters_zero_returns_random_distinct_points():
    x = torch.arange(40, dtype=torch.float32).reshape(20, 2)
    c, a = kmeans(x, 4, iters=0, metric="l2", seed=0)
    first = torch.randperm(20, generator=torch.Generator().manual_seed(0))[:4]
    assert torch.equal(c, x[first])


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda x: kmeans(x, 0), ValueError, r"n_clusters: expected an integer in \[1, N = 10\], got 0"),
        (lambda x: kmeans(x, 11), ValueError, r"n_clusters: expected an integer in \[1, N = 10\], got 11"),
        (lambda x: kmeans(x, 2.5), TypeError, r"n_clusters: expected an integer .*got float 2.5"),
        (lambda x: kmeans(torch.randn(10), 2), ValueError, r"x: expected a 2-D \[rows, dim\] tensor, got shape \[10\]"),
        (lambda x: kmeans(torch.randn(2, 3, 4), 2), ValueError, r"x: expected a 2-D \[rows, dim\] tensor, got shape \[2, 3, 4\]"),
        (lambda x: kmeans(x.masked_fill(x > 1, float("nan")), 2), ValueError, "x: contains NaN or inf"),
        (lambda x: kmeans(x.double(), 2), TypeError,
         r"x: expected dtype float32, float16 or bfloat16, got float64; convert first, e.g. x.astype\(numpy.float32\)"),
        (lambda x: kmeans([[1.0]], 2), TypeError, "x: expected a torch.Tensor, numpy.ndarray or cupy.ndarray, got list"),
        (lambda x: kmeans(x, 2, metric="cos"), ValueError, r"metric: expected one of \('l2', 'ip'\), got 'cos'"),
        (lambda x: kmeans(x, 2, iters=-1), ValueError, "iters: expected an integer >= 0, got -1"),
        (lambda x: kmeans(x, 2, seed="0"), TypeError, "seed: expected an integer, got str '0'"),
        (lambda x: kmeans(x, 2, max_points_per_centroid=0), ValueError, "max_points_per_centroid: expected an integer >= 1, got 0"),
        (lambda x: kmeans(x, 2, backend="nope"), ValueError, "backend: expected one of 'auto', 'cuda', 'triton', 'cpu', 'torch', got 'nope'"),
        (lambda x: kmeans(x, 2, init=torch.randn(3, 3)), ValueError, r"init: expected shape \[2, 3\] \(n_clusters, dim\), got \[3, 3\]"),
    ],
)
def test_errors(call, error, match):
    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
    with pytest.raises(error, match=match):
        call(x)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_cuda_matches_cpu_and_is_deterministic():
    x, truth = blobs(500, 8, 32, seed=9)
    init = torch.stack([x[(truth == j).nonzero()[0, 0]] for j in range(8)])
    for metric in ("l2", "ip"):
        c_cpu, a_cpu = kmeans(x, 8, iters=5, metric=metric, init=init)
        c1, a1 = kmeans(x.cuda(), 8, iters=5, metric=metric, init=init.cuda())
        c2, a2 = kmeans(x.cuda(), 8, iters=5, metric=metric, init=init.cuda())
        assert torch.equal(c1, c2) and torch.equal(a1, a2)
        assert torch.equal(a1.cpu(), a_cpu)
        torch.testing.assert_close(c1.cpu(), c_cpu, atol=1e-6, rtol=0)
