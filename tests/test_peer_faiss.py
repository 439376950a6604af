"""Differential test: fmkit.ops.knn and fmkit.cluster.kmeans against faiss-cpu, where faiss is exact.

faiss scores with float32 GEMMs (|q|^2 + |x|^2 - 2 q.x for L2), so it is only compared on rows
whose float64 ranking is separated by more than its rounding: there the indices must be equal.
"""
import numpy as np
import pytest

from fmkit.cluster import kmeans
from fmkit.ops import knn

pytestmark = pytest.mark.slow  # differential tests: CI runs them with the peers installed (.ci/run)

faiss = pytest.importorskip("faiss", reason="faiss-cpu not installed (pip install faiss-cpu)")

K = 10


def data(seed, n, d, q):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(q, d)).astype(np.float32), rng.normal(size=(n, d)).astype(np.float32)


def separated_rows(scores, k, descending):
    """Rows whose k + 1 best float64 scores are pairwise apart by more than 1e-4 of their scale."""
    s = np.sort(scores, axis=1)
    s = s[:, ::-1] if descending else s
    top = s[:, : k + 1]
    gaps = np.abs(np.diff(top, axis=1)).min(1)
    return gaps > 1e-4 * np.abs(top).max(1).clip(1.0)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_flat_index_indices_equal_on_separated_rows(metric):
    xq, xb = data(1 if metric == "l2" else 2, 20000, 48, 300)
    q64, b64 = xq.astype(np.float64), xb.astype(np.float64)
    if metric == "l2":
        scores = (q64 ** 2).sum(1)[:, None] + (b64 ** 2).sum(1)[None] - 2 * q64 @ b64.T
        index = faiss.IndexFlatL2(xb.shape[1])
    else:
        scores = q64 @ b64.T
        index = faiss.IndexFlatIP(xb.shape[1])
    rows = separated_rows(scores, K, descending=metric == "ip")
    assert rows.mean() > 0.9
    index.add(xb)
    ref_d, ref_i = index.search(xq, K)
    dist, idx = knn(xq, xb, K, metric=metric)
    np.testing.assert_array_equal(idx[rows], ref_i[rows])
    np.testing.assert_allclose(dist[rows], ref_d[rows], rtol=1e-4, atol=1e-4)
    exact = np.take_along_axis(scores, idx.astype(np.int64), axis=1)
    np.testing.assert_allclose(dist, exact, rtol=1e-5, atol=1e-4)  # every row, not only separated ones


def test_kmeans_matches_faiss_from_the_same_start():
    rng = np.random.default_rng(5)
    centers = rng.normal(size=(16, 24)) * 6
    x = (centers[rng.integers(0, 16, 4000)] + rng.normal(size=(4000, 24))).astype(np.float32)
    init = x[rng.choice(4000, 16, replace=False)].copy()
    ref = faiss.Kmeans(24, 16, niter=10, seed=1, max_points_per_centroid=1000)
    ref.train(x, init_centroids=init)
    cent, assign = kmeans(x, 16, iters=10, metric="l2", init=init)

    def objective(c):
        d = ((x[:, None, :].astype(np.float64) - c[None].astype(np.float64)) ** 2).sum(2)
        return d.min(1).sum(), d.argmin(1)

    mine, mine_assign = objective(cent)
    theirs, _ = objective(ref.centroids)
    assert mine == pytest.approx(theirs, rel=1e-5)
    np.testing.assert_allclose(cent, ref.centroids, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(assign, mine_assign)
