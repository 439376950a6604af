"""fmkit.ops.knn: every backend against a direct float64 oracle, edge cases, errors."""
import importlib
import os
import socket

import numpy as np
import pytest
import torch
from _backends import device_of, placements
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fmkit
from fmkit.ops import _backend, knn, knn_sharded
from fmkit.reference.knn import knn_reference

knn_module = importlib.import_module("fmkit.ops.knn")
HAS_CUDA = torch.cuda.is_available()
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def fixed_order_sum(x, y, metric):
    """float64 sum over coordinates 0..d-1 in that order for every pair (numpy, independent of
    fmkit). A GEMM (x @ y.T) sums edge tiles in another order, so duplicated database rows
    could score a few ulp apart and break the lower-index tie rule."""
    acc = np.zeros((x.shape[0], y.shape[0]))
    for j in range(x.shape[1]):
        term = x[:, None, j] - y[None, :, j] if metric == "l2" else x[:, None, j] * y[None, :, j]
        acc += term * term if metric == "l2" else term
    return acc


def oracle(queries, database, k, metric="l2", exclude_self=False):
    """Brute force in float64 numpy with an explicit (distance, index) lexicographic sort."""
    x = queries.detach().to(torch.float64).cpu().numpy()
    y = database.detach().to(torch.float64).cpu().numpy()
    key = fixed_order_sum(x, y, metric)
    if metric == "ip":
        key = -key
    if exclude_self:
        np.fill_diagonal(key, np.inf)
    cols = np.broadcast_to(np.arange(y.shape[0]), key.shape)
    order = np.lexsort((cols, key), axis=-1)[:, :k]
    dist = np.take_along_axis(key, order, 1)
    return (-dist if metric == "ip" else dist), order


# The backends that take CPU tensors here; on a GPU machine triton runs on CUDA tensors instead
# (tests/_backends.py), with the same assertions.
BACKENDS = placements("knn", "torch", "cpu", "triton")


def on(device, q, db):
    """q and db moved to `device` (q stays the same tensor as db where it was)."""
    moved = db.to(device)
    return (moved if q is db else q.to(device)), moved


def assert_matches_oracle(q, db, k, metric, exclude_self, backend):
    dist, idx = knn(q, db, k, metric=metric, exclude_self=exclude_self, backend=backend)
    ref_d, ref_i = oracle(q, db, k, metric, exclude_self)
    assert dist.dtype == torch.float32 and idx.dtype == torch.int64
    assert dist.shape == (q.shape[0], k) and idx.shape == (q.shape[0], k)
    np.testing.assert_array_equal(idx.cpu().numpy(), ref_i)
    np.testing.assert_allclose(dist.cpu().numpy(), ref_d.astype(np.float32), rtol=1e-6, atol=0)
    if metric == "l2":
        assert (dist >= 0).all()


@st.composite
def problems(draw, max_q=24, max_n=120, max_d=40):
    Q = draw(st.integers(1, max_q))
    exclude_self = draw(st.booleans())
    N = Q if exclude_self else draw(st.integers(1, max_n))
    if exclude_self and N < 2:
        N = Q = 2
    d = draw(st.integers(1, max_d))
    eligible = N - 1 if exclude_self else N
    k = draw(st.integers(1, eligible))
    metric = draw(st.sampled_from(["l2", "ip"]))
    dtype = draw(st.sampled_from(DTYPES))
    integer = draw(st.booleans())  # small integers: exact ties and duplicate rows
    layout = draw(st.sampled_from(["contiguous", "transposed", "strided"]))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)

    def make(rows):
        if integer:
            base = torch.randint(-3, 4, (rows, d), generator=g).to(torch.float32)
        else:
            base = torch.randn(rows, d, generator=g)
        if layout == "transposed":
            return base.to(dtype).T.contiguous().T
        if layout == "strided":
            wide = torch.zeros(rows, 2 * d, dtype=dtype)
            wide[:, ::2] = base.to(dtype)
            return wide[:, ::2]
        return base.to(dtype)

    db = make(N)
    q = db if exclude_self else make(Q)
    return q, db, k, metric, exclude_self


@pytest.mark.parametrize("backend", ["cpu", "torch"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=problems())
def test_matches_oracle_random_shapes(backend, problem):
    assert_matches_oracle(*problem, backend)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=problems(max_q=9, max_n=40, max_d=20))
def test_triton_matches_oracle(problem):
    device = device_of("knn", "triton")
    if device is None:
        pytest.skip("triton runs on no device here")
    q, db, k, metric, exclude_self = problem
    assert_matches_oracle(*on(device, q, db), k, metric, exclude_self, "triton")


def test_reference_matches_oracle():
    g = torch.Generator().manual_seed(1)
    q, db = torch.randn(17, 9, generator=g), torch.randn(300, 9, generator=g)
    for metric in ("l2", "ip"):
        d, i = knn_reference(q, db, 7, metric)
        rd, ri = oracle(q, db, 7, metric)
        np.testing.assert_array_equal(i.numpy(), ri)
        np.testing.assert_allclose(d.numpy(), rd, rtol=1e-12)


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_large_offset_is_exact(backend, device, dtype):
    """|x|^2 - 2xy + |y|^2 cancels catastrophically at offset 1e4; results must stay exact."""
    g = torch.Generator().manual_seed(2)
    scale = 1.0 if dtype == torch.float32 else 64.0  # keep distinct values representable in 16 bits
    db = (1e4 + scale * torch.randn(200, 8, generator=g)).to(dtype)
    q = (1e4 + scale * torch.randn(11, 8, generator=g)).to(dtype)
    assert_matches_oracle(*on(device, q, db), 5, "l2", False, backend)


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_identical_vectors_at_exactly_zero_and_ties_to_lower_index(backend, device):
    db = torch.tensor([[1.0, 2.0], [3.0, 4.0], [1.0, 2.0], [1.0, 2.0], [0.5, 0.25]], device=device)
    dist, idx = knn(db[:1], db, 3, backend=backend)
    assert idx.tolist() == [[0, 2, 3]]
    assert dist.tolist() == [[0.0, 0.0, 0.0]]
    dist, idx = knn(db, db, 2, exclude_self=True, backend=backend)
    assert idx[0].tolist() == [2, 3] and idx[2].tolist() == [0, 3] and idx[3].tolist() == [0, 2]
    assert dist[0].tolist() == [0.0, 0.0]


def duplicated_rows(seed, n=200, d=257):
    """n rows, each a copy of one of n/2 distinct rows, of mixed scale: a float64 GEMM scores
    some copies a few ulp apart (d = 257 leaves an edge tile), a fixed-order sum never does."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n // 2, d, generator=g) * torch.exp(torch.randn(n // 2, 1, generator=g)) + 3
    return base[torch.randint(0, n // 2, (n,), generator=g)]


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_reference_ties_duplicates_exactly(metric):
    for seed in (0, 1):
        data = duplicated_rows(seed)
        for self_index in (None, torch.arange(data.shape[0])):
            d, i = knn_reference(data, data, 10, metric, self_index)
            rd, ri = oracle(data, data, 10, metric, exclude_self=self_index is not None)
            np.testing.assert_array_equal(i.numpy(), ri)


@pytest.mark.parametrize("backend", ["cpu", "torch"])
@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("exclude_self", [False, True])
@pytest.mark.parametrize("force_fallback", [False, True])
def test_duplicated_rows_tie_to_lower_index(backend, metric, exclude_self, force_fallback, monkeypatch):
    """Issue 12 item 2: every path (candidates, re-rank, wider search, float64 reference) keeps
    the tie rule on duplicated rows. force_fallback certifies nothing, so every row takes the
    fallback (the reference with exclude_self, the full-width re-rank without)."""
    if force_fallback:
        monkeypatch.setattr(knn_module, "certify", lambda q, *a, **kw: torch.zeros(q.shape[0], dtype=torch.bool))
    data = duplicated_rows(1)
    assert_matches_oracle(data, data, 10, metric, exclude_self, backend)


@pytest.mark.parametrize("backend, device", placements("knn", "torch", "cpu", "triton",
                                                       slow_on_cpu=("triton",)))  # 5 s in the Triton interpreter
def test_offset_inner_product_is_certified_in_one_pass(backend, device):
    """Issue 12 item 6: on data at offset 1e4 with spread 0.01 the uncentred IP bound
    (~|x| |y|) exceeded every score gap, so every row fell back (32.6 s vs 0.1 s). Centring the
    database (which shifts all of a query's scores alike) certifies them in the first pass."""
    g = torch.Generator().manual_seed(11)
    db = 1e4 + 0.01 * torch.randn(3000, 16, generator=g)
    q = 1e4 + 0.01 * torch.randn(40, 16, generator=g)
    before = knn_module.fallback_rows
    assert_matches_oracle(*on(device, q, db), 5, "ip", False, backend)
    assert knn_module.fallback_rows == before


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_mixed_norms_l2_is_certified_in_one_pass(backend):
    """Rows of very different norms: a few far rows make max|y - c| large and the score bound
    loose for the queries near the centre; the triangle inequality certifies those rows."""
    g = torch.Generator().manual_seed(12)
    db = torch.randn(4000, 16, generator=g) * torch.exp(2 * torch.randn(4000, 1, generator=g))
    q = torch.randn(60, 16, generator=g) * torch.exp(2 * torch.randn(60, 1, generator=g))
    before = knn_module.fallback_rows
    assert_matches_oracle(q, db, 10, "l2", False, backend)
    assert knn_module.fallback_rows - before <= 3


@pytest.mark.parametrize("backend", ["cpu", "torch"])
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_self_excluding_fallback_stays_on_the_fast_kernels(backend, metric, monkeypatch):
    """Uncertified rows with exclude_self are searched again on the kernels (one candidate more,
    self dropped), not by the float64 reference, which is slow on hard inputs."""
    def no_reference(*args, **kwargs):
        raise AssertionError("the float64 reference was used")

    monkeypatch.setattr(knn_module, "knn_reference", no_reference)
    monkeypatch.setattr(knn_module, "certify", lambda q, *a, **kw: torch.zeros(q.shape[0], dtype=torch.bool))
    data = duplicated_rows(2, n=120, d=9)
    assert_matches_oracle(data, data, 4, metric, True, backend)


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_edge_sizes(backend, device):
    one = torch.tensor([[3.0]], device=device)
    assert knn(one, one, 1, backend=backend)[1].tolist() == [[0]]
    g = torch.Generator().manual_seed(3)
    db = torch.randn(13, 1, generator=g).to(device)
    assert_matches_oracle(db[:4], db, 13, "l2", False, backend)  # k = N, d = 1
    assert_matches_oracle(db, db, 12, "l2", True, backend)  # k = N - 1 with exclude_self
    assert_matches_oracle(db, db, 12, "ip", True, backend)
    empty_q = torch.empty(0, 1, device=device)
    d, i = knn(empty_q, db, 3, backend=backend)
    assert d.shape == (0, 3) and i.shape == (0, 3)


def test_results_do_not_depend_on_chunking():
    g = torch.Generator().manual_seed(4)
    db = torch.randn(700, 24, generator=g)
    q = torch.randn(150, 24, generator=g)
    d, i = knn(q, db, 9)
    for a, b in ((0, 1), (1, 77), (77, 150)):
        dc, ic = knn(q[a:b], db, 9)
        assert torch.equal(ic, i[a:b]) and torch.equal(dc, d[a:b])
    for backend, device in [p.values for p in placements("knn", "torch", "triton")]:
        dt, it = knn(q[:20].to(device), db.to(device), 9, backend=backend)
        assert torch.equal(it.cpu(), i[:20]) and torch.equal(dt.cpu(), d[:20])


def test_large_k_and_many_candidates():
    g = torch.Generator().manual_seed(5)
    db = torch.randn(3000, 16, generator=g)
    q = torch.randn(5, 16, generator=g)
    assert_matches_oracle(q, db, 2048, "l2", False, "cpu")
    assert_matches_oracle(q, db, 2048, "ip", False, "torch")


def test_certificate_falls_back_on_near_ties():
    """A cluster of near-duplicates straddling the candidate boundary forces the fallback."""
    g = torch.Generator().manual_seed(6)
    base = torch.randn(1, 32, generator=g)
    db = torch.cat([base + 1e-7 * torch.randn(200, 32, generator=g), torch.randn(100, 32, generator=g)])
    q = base.clone()
    before = knn_module.fallback_rows
    assert_matches_oracle(q, db, 3, "l2", False, "cpu")
    assert knn_module.fallback_rows > before


@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 1), (5, 3, 7), (40, 700, 9), (3000, 130, 16), (2, 5000, 4)])
def test_k1_pass_matches_oracle(metric, dtype, shape):
    """k = 1 on the CPU takes the best/second-best pass: query blocks, tail rows, database splits."""
    Q, N, d = shape
    g = torch.Generator().manual_seed(Q * 7 + N)
    db = torch.randn(N, d, generator=g).to(dtype)
    q = torch.randn(Q, d, generator=g).to(dtype)
    assert_matches_oracle(q, db, 1, metric, False, "cpu")
    strided = torch.zeros(N, 2 * d, dtype=dtype)
    strided[:, ::2] = db
    assert_matches_oracle(q.T.contiguous().T, strided[:, ::2], 1, metric, False, "cpu")


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_k1_pass_sends_near_ties_to_the_candidate_search(metric):
    """Exact duplicates (gap 0) and near-duplicates (gap below the fp32 bound) among the rows:
    the k = 1 pass must not certify those queries, and the fallback must keep the lower index."""
    g = torch.Generator().manual_seed(7)
    d = 24
    db = torch.randn(500, d, generator=g)
    db[300] = db[41]  # exact tie: the answer is 41 for queries nearest to it
    db[42] = db[17] * (1 + 1e-7)  # near tie, below the certificate's resolution
    q = torch.cat([db[[41, 17, 300, 42]] + 1e-4 * torch.randn(4, d, generator=g), torch.randn(200, d, generator=g)])
    before, before_wide = knn_module.nearest_fallback_rows, knn_module.fallback_rows
    assert_matches_oracle(q, db, 1, metric, False, "cpu")
    assert knn_module.nearest_fallback_rows >= before + 2
    # Those rows are settled by the ordinary candidate lists, not the wider re-search.
    assert knn_module.fallback_rows == before_wide
    _, idx = knn(db[41:42], db, 1, metric="l2")
    assert idx.item() == 41


def test_k1_pass_outputs():
    """knn_nearest_cpu: the chosen row is the fp32-score argmin, `second` is the best score of
    every other row, the distance is float64, and the norm is |x - c|."""
    g = torch.Generator().manual_seed(8)
    q, db = torch.randn(50, 12, generator=g), torch.randn(90, 12, generator=g)
    for metric in ("l2", "ip"):
        center, radius = knn_module.database_center_and_radius(db, metric, True)
        Q = q.shape[0]
        idx, second = torch.empty(Q, dtype=torch.int64), torch.empty(Q)
        dist, qnorm = torch.empty(Q, dtype=torch.float64), torch.empty(Q, dtype=torch.float64)
        dl = _backend.dlpack
        _backend._C.knn_nearest_cpu(dl(q), dl(db), dl(center), metric, dl(idx), dl(second), dl(dist), dl(qnorm), 2)
        score = knn_module.torch_score_tile(q, db, center, metric, None).double()
        rows = torch.arange(Q)
        assert (score[rows, idx] <= score.min(1).values + 1e-4).all()
        others = score.clone()
        others[rows, idx] = float("inf")
        torch.testing.assert_close(second.double(), others.min(1).values, atol=1e-4, rtol=0)
        q64, y64 = q.double(), db.double()[idx]
        ref = ((q64 - y64) ** 2).sum(1) if metric == "l2" else (q64 * y64).sum(1)
        torch.testing.assert_close(dist, ref, atol=1e-12, rtol=1e-12)
        centred = q - center if metric == "l2" else q
        torch.testing.assert_close(qnorm, centred.double().norm(dim=1), atol=0, rtol=1e-12)
    with pytest.raises(ValueError, match="out_second"):
        _backend._C.knn_nearest_cpu(dl(q), dl(db), dl(center), "l2", dl(idx), dl(torch.empty(3)), dl(dist), dl(qnorm), 1)


def test_k1_pass_threads_do_not_change_results():
    g = torch.Generator().manual_seed(9)
    q, db = torch.randn(2000, 16, generator=g), torch.randn(300, 16, generator=g)
    threads = torch.get_num_threads()
    d1, i1 = knn(q, db, 1)
    try:
        torch.set_num_threads(1)
        d2, i2 = knn(q, db, 1)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(i1, i2) and torch.equal(d1, d2)


def test_numpy_in_numpy_out():
    g = np.random.default_rng(7)
    db = g.standard_normal((50, 6)).astype(np.float32)
    d, i = knn(db, db, 4, exclude_self=True)
    assert isinstance(d, np.ndarray) and isinstance(i, np.ndarray)
    ref_d, ref_i = oracle(torch.from_numpy(db), torch.from_numpy(db), 4, "l2", True)
    np.testing.assert_array_equal(i, ref_i)


def test_cupy_in_cupy_out():
    cupy = pytest.importorskip("cupy")
    if not HAS_CUDA:
        pytest.skip("cupy needs a GPU")
    x = cupy.random.standard_normal((64, 8), dtype=cupy.float32)
    d, i = knn(x, x, 3, exclude_self=True)
    assert isinstance(d, cupy.ndarray)
    ref_d, ref_i = oracle(torch.from_dlpack(x).cpu(), torch.from_dlpack(x).cpu(), 3, "l2", True)
    np.testing.assert_array_equal(cupy.asnumpy(i), ref_i)


def test_custom_op_fake_and_compile():
    q, db = torch.randn(5, 3), torch.randn(20, 3)
    torch.library.opcheck(torch.ops.fmkit.knn.default, (q, db, 4, "l2", False, "auto"),
                          test_utils=("test_schema", "test_faketensor"))
    compiled = torch.compile(lambda a, b: knn(a, b, 4)[1] + 1, backend="eager", fullgraph=False)
    assert torch.equal(compiled(q, db), knn(q, db, 4)[1] + 1)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda q, db: knn(q, db[:, :3], 2), ValueError, "database: dimension 3 does not match queries dimension 4"),
        (lambda q, db: knn(q, db, 0), ValueError, r"k: expected an integer in \[1, N = 10\], got 0"),
        (lambda q, db: knn(q, db, 11), ValueError, r"k: expected an integer in \[1, N = 10\], got 11"),
        (lambda q, db: knn(q, db, 2.0), TypeError, r"k: expected an integer in \[1, N = 10\], got float 2.0"),
        (lambda q, db: knn(db, db, 10, exclude_self=True), ValueError, r"k: .*N - 1 = 9 with exclude_self"),
        (lambda q, db: knn(q[0], db, 2), ValueError, r"queries: expected a 2-D \[rows, dim\] tensor"),
        (lambda q, db: knn(q.long(), db.long(), 2), TypeError,
         r"queries: expected dtype float32, float16, bfloat16 or float64, got int64; integers are not accepted: "
         r"convert them, e.g. x.astype\(numpy.float32\)"),
        (lambda q, db: knn(q, db.half(), 2), TypeError, "database: dtype float16 does not match queries dtype float32"),
        (lambda q, db: knn(q.double(), db.double(), 2, backend="cpu"), ValueError,
         "queries: float64 runs only on backend='torch'"),
        (lambda q, db: knn(q, db, 2, metric="cos"), ValueError, r"metric: expected one of \('l2', 'ip'\), got 'cos'"),
        (lambda q, db: knn(q, db, 2, backend="gpu"), ValueError, "backend: expected one of 'auto', 'cuda', 'triton', 'cpu', 'torch', got 'gpu'"),
        (lambda q, db: knn(q, db, 2, exclude_self=True), ValueError, "exclude_self: queries must be the database"),
        (lambda q, db: knn(q.masked_fill(q > 0.5, float("nan")), db, 2), ValueError, "queries: contains NaN or inf"),
        (lambda q, db: knn(q, db.masked_fill(db > 0.5, float("inf")), 2), ValueError, "database: contains NaN or inf"),
        (lambda q, db: knn(q * 1e20, db, 2), ValueError, "queries: contains values of magnitude"),
        (lambda q, db: knn(q, db[:0], 1), ValueError, "database: must have at least one row"),
        (lambda q, db: knn([[1.0]], db, 1), TypeError, "queries: expected a torch.Tensor, numpy.ndarray or cupy.ndarray, got list"),
    ],
)
def test_bad_input_names_the_argument(call, error, match):
    g = torch.Generator().manual_seed(8)
    q, db = torch.rand(3, 4, generator=g), torch.rand(10, 4, generator=g)
    with pytest.raises(error, match=match):
        call(q, db)


@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("exclude_self", [False, True])
def test_numpy_float64_is_searched_exactly_in_float64(metric, exclude_self):
    """Issue 13 item 6: numpy's default dtype is accepted, searched in float64 (no rounding to
    float32: values 1 + 1e-12 apart stay apart) and returned as numpy float64 distances."""
    rng = np.random.default_rng(13)
    base = rng.standard_normal((60, 7))
    db = np.concatenate([base, base + 1e-12, base[:10]])  # float64-only differences and duplicates
    q = db if exclude_self else rng.standard_normal((9, 7))
    d, i = knn(q, db, 6, metric=metric, exclude_self=exclude_self)
    assert isinstance(d, np.ndarray) and d.dtype == np.float64 and i.dtype == np.int64
    ref_d, ref_i = oracle(torch.from_numpy(q), torch.from_numpy(db), 6, metric, exclude_self)
    np.testing.assert_array_equal(i, ref_i)
    np.testing.assert_array_equal(d, ref_d)


def test_unavailable_backend_is_a_clear_error():
    q = torch.randn(2, 3)
    with pytest.raises(ValueError, match="backend='cuda' is not available for knn on cpu tensors"):
        knn(q, q, 1, backend="cuda")


def test_validate_can_be_switched_off_and_the_old_name_warns():
    q = torch.randn(4, 3)
    big = q * 1e20
    with pytest.raises(ValueError, match="pass validate=False to skip this check"):
        knn(big, big, 1)
    d, i = knn(q, q, 1, validate=False)
    assert i.flatten().tolist() == [0, 1, 2, 3]
    with pytest.warns(DeprecationWarning, match=r"knn: check_finite= is deprecated .* pass validate=False"):
        i = knn(q, q, 1, check_finite=False)[1]
    assert i.flatten().tolist() == [0, 1, 2, 3]


def test_info_reports_backends():
    info = fmkit.info()
    assert info["fmkit"] == fmkit.__version__
    assert "cpu" in info["compiled_backends"]
    assert info["torch"] == torch.__version__


# ---- distributed: two gloo processes on the CPU ----

def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sharded_worker(rank, world, port, results):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        g = torch.Generator().manual_seed(9)
        db = torch.randn(61, 7, generator=g)
        db[40] = db[3]  # a duplicate across the shard boundary
        q = torch.randn(12, 7, generator=g)
        bounds = [0, 25, 61]
        shard = db[bounds[rank] : bounds[rank + 1]]
        out = {
            "l2": knn_sharded(q, shard, 30, metric="l2"),
            "ip": knn_sharded(q, shard, 5, metric="ip"),
            "self": knn_sharded(db, shard, 4, exclude_self=True),
        }
        results[rank] = {key: (d.numpy(), i.numpy()) for key, (d, i) in out.items()}
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_sharded_equals_single_process():
    import torch.multiprocessing as mp

    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_sharded_worker, args=(2, _free_port(), results), nprocs=2, join=True)
    g = torch.Generator().manual_seed(9)
    db = torch.randn(61, 7, generator=g)
    db[40] = db[3]
    q = torch.randn(12, 7, generator=g)
    expected = {"l2": knn(q, db, 30), "ip": knn(q, db, 5, metric="ip"), "self": knn(db, db, 4, exclude_self=True)}
    for rank in range(2):
        for key, (d, i) in expected.items():
            np.testing.assert_array_equal(results[rank][key][1], i.numpy())
            np.testing.assert_array_equal(results[rank][key][0], d.numpy())


# ---- CUDA backends (run where a GPU exists; CI has none) ----

@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton", "torch"])
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=problems(max_q=70, max_n=3000, max_d=150))
def test_gpu_matches_oracle(backend, problem):
    q, db, k, metric, exclude_self = problem
    db = db.cuda()
    q = db if exclude_self else q.cuda()
    assert_matches_oracle(q, db, k, metric, exclude_self, backend)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("k", [1, 10, 100, 1024, 2048])
def test_gpu_large_k_and_offsets(backend, k):
    g = torch.Generator().manual_seed(10)
    db = (1e4 + torch.randn(5000, 64, generator=g)).cuda()
    q = (1e4 + torch.randn(33, 64, generator=g)).cuda()
    assert_matches_oracle(q, db, k, "l2", False, backend)
    assert_matches_oracle(db[:300], db[:300], min(k, 299), "ip", True, backend)


@pytest.mark.gpu
def test_gpu_auto_picks_a_gpu_backend_and_matches_cpu():
    g = torch.Generator().manual_seed(11)
    db, q = torch.randn(20000, 128, generator=g), torch.randn(100, 128, generator=g)
    d_cpu, i_cpu = knn(q, db, 10)
    d_gpu, i_gpu = knn(q.cuda(), db.cuda(), 10)
    assert torch.equal(i_gpu.cpu(), i_cpu) and torch.equal(d_gpu.cpu(), d_cpu)


def test_device_mismatch_is_a_clear_error():
    q = torch.randn(3, 4)
    with pytest.raises(ValueError, match="database: on meta, but queries are on cpu; expected the same device"):
        knn(q, torch.empty(10, 4, device="meta"), 2)


def test_bench_cli_quick_table_json_and_plot(tmp_path, monkeypatch, capsys):
    """`fmkit bench` end to end on a tiny case list (the real sizes are for benchmarks, not tests)."""
    from fmkit import bench, cli
    from fmkit.bench import knn as knn_cases

    real_cases = knn_cases.cases

    def tiny(device, quick):
        return real_cases(device, quick, shapes=[(8, 300, 16, 3)])

    monkeypatch.setattr(knn_cases, "cases", tiny)
    monkeypatch.setattr(bench, "measured_peak", lambda device, dtype=None: 1.0)
    out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"
    assert cli.main(["bench", "--quick", "--op", "knn", "--device", "cpu", "--json", str(out_json), "--plot", str(out_png)]) == 0
    table = capsys.readouterr().out
    assert "fmkit[cpu]" in table and "torch mm+topk" in table
    import json

    rows = json.loads(out_json.read_text())["rows"]
    assert {r["contender"] for r in rows} >= {"fmkit[cpu]", "torch mm+topk"}
    assert all(r["exact"] for r in rows if r["contender"].startswith("fmkit"))
    assert out_png.stat().st_size > 1000
