"""The triton kNN backend's tensor-core candidates (split-bf16 scores, per-bucket best and
second-best): exact results against the float64 reference, the error bound the certificate
uses, the threshold contract, and the re-search of rows whose neighbours share a bucket.

On a CPU machine the kernel runs in the Triton interpreter (the bf16 operands are passed as
float32 holding the same values); with a GPU the same tests run on CUDA tensors.
"""
import importlib

import pytest
import torch

from fmkit.bench.knn import _data
from fmkit.ops import knn
from fmkit.reference.knn import knn_reference

knn_module = importlib.import_module("fmkit.ops.knn")
tc = importlib.import_module("fmkit.triton.knn")

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"


@pytest.fixture
def tensor_cores(monkeypatch):
    """Runs the tensor-core pass on small databases (and, without a GPU, in the interpreter),
    and counts the rows it searched."""
    monkeypatch.setattr(knn_module, "TENSOR_CORE_DEVICES", {"cuda", "cpu"})
    monkeypatch.setattr(tc, "TC_BUCKETS_PER_KPRIME2", 0.5)
    calls = []
    real = tc.tc_bucket_candidates

    def spy(queries, *args):
        calls.append(queries.shape[0])
        return real(queries, *args)

    monkeypatch.setattr(tc, "tc_bucket_candidates", spy)
    return calls


@pytest.mark.parametrize("Q,N,d,k,metric", [
    (37, 2001, 24, 5, "l2"),     # d fits one block: the query tile is loaded once
    (1, 1500, 70, 3, "l2"),      # one query; d spans several blocks
    (29, 1777, 33, 1, "ip"),
    (64, 2048, 16, 7, "ip"),
])
def test_equals_float64_reference(tensor_cores, Q, N, d, k, metric):
    g = torch.Generator().manual_seed(Q * N + d)
    q, db = torch.randn(Q, d, generator=g).to(DEVICE), torch.randn(N, d, generator=g).to(DEVICE)
    dist, idx = knn(q, db, k, metric=metric, backend="triton")
    ref_d, ref_i = knn_reference(q.double(), db.double(), k, metric)
    assert tensor_cores, "the tensor-core pass did not run"
    assert torch.equal(idx.cpu(), ref_i.cpu())
    torch.testing.assert_close(dist.double().cpu(), ref_d.cpu(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind,metric", [("offset", "l2"), ("offset", "ip"), ("mixed", "l2"),
                                         ("mixed", "ip"), ("clusters", "l2")])
def test_hard_inputs_stay_exact(tensor_cores, kind, metric):
    """Cancellation (offset), norms over 5 decades (mixed), near-ties (clusters)."""
    g = torch.Generator().manual_seed(7)
    db = _data(kind, 1800, 20, g).to(DEVICE)
    q = _data(kind, 40, 20, g).to(DEVICE)
    _, idx = knn(q, db, 4, metric=metric, backend="triton")
    assert tensor_cores
    assert torch.equal(idx.cpu(), knn_reference(q.double(), db.double(), 4, metric)[1].cpu())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16bit_and_non_contiguous_inputs(tensor_cores, dtype):
    g = torch.Generator().manual_seed(3)
    db = torch.randn(30, 1900, generator=g).to(DEVICE, dtype).T  # [1900, 30], column-major
    q = torch.randn(30, 50, generator=g).to(DEVICE, dtype).T[::2]  # [25, 30], strided
    assert not db.is_contiguous() and not q.is_contiguous()
    _, idx = knn(q, db, 6, backend="triton")
    assert tensor_cores
    assert torch.equal(idx.cpu(), knn_reference(q.double(), db.double(), 6, "l2")[1].cpu())


def test_exclude_self(tensor_cores):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(700, 12, generator=g).to(DEVICE)
    x[1] = x[0]  # a duplicate must still find its twin, never itself
    _, idx = knn(x, x, 3, exclude_self=True, backend="triton")
    assert tensor_cores
    ref = knn_reference(x.double(), x.double(), 3, "l2", torch.arange(700, device=x.device))[1]
    assert torch.equal(idx.cpu(), ref.cpu())
    assert not (idx.cpu() == torch.arange(700)[:, None]).any()
    assert idx[0, 0] == 1 and idx[1, 0] == 0


@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("d", [12, 40])  # one d-block (query tile loaded once) and several
def test_scores_within_the_certificate_bound(metric, d):
    """Every returned score is within tc_slack(d) * (|x - c| + r)^2 (IP: |x| r) of the float64
    score, and every row left out scored at least the threshold, up to that bound."""
    g = torch.Generator().manual_seed(11)
    Q, N, kprime = 24, 3000, 9
    x = (torch.randn(Q, d, generator=g) * torch.exp(torch.randn(Q, 1, generator=g))).to(DEVICE)
    y = (torch.randn(N, d, generator=g) * torch.exp(torch.randn(N, 1, generator=g))).to(DEVICE)
    c = y.double().mean(0).float() if metric == "l2" else torch.zeros(d, device=y.device)
    score, cand, threshold, slack = tc.tc_bucket_candidates(x, y, c, metric, kprime, None)
    yc = (y - c).double()
    if metric == "l2":
        xc = (x - c).double()
        exact = (yc * yc).sum(1)[None, :] - 2 * xc @ yc.T
        bound = slack * (xc.norm(dim=1)[:, None] + yc.norm(dim=1).max()) ** 2
    else:
        exact = -(x.double() @ yc.T)
        bound = slack * x.double().norm(dim=1)[:, None] * yc.norm(dim=1).max()
    err = (torch.gather(exact, 1, cand) - score.double()).abs()
    assert (err <= bound).all()
    # The bound holds pair by pair too, with |y - c| in place of the radius: a tighter check.
    xn = ((x - c) if metric == "l2" else x).double().norm(dim=1)[:, None]
    pair = slack * (xn + yc.norm(dim=1)[cand]) ** 2 if metric == "l2" else slack * xn * yc.norm(dim=1)[cand]
    assert (err <= pair).all()
    assert err.max() > 0  # the split-bf16 scores are not the float64 ones: the check compares something
    left_out = torch.ones(Q, N, dtype=torch.bool, device=y.device)
    left_out.scatter_(1, cand, False)
    lowest_left_out = torch.where(left_out, exact, torch.inf).min(dim=1).values
    assert (lowest_left_out >= threshold.double() - bound[:, 0]).all()
    # The candidates are the kprime best bucket minima: the true best row is always among them.
    assert (cand == exact.argmin(dim=1, keepdim=True)).any(dim=1).all()


def test_neighbours_sharing_a_bucket_are_searched_again(tensor_cores):
    """A query whose two nearest rows fall in one bucket gets a low threshold, fails the
    certificate and is searched again on the fp32 path: still exact."""
    N, d = 2048, 8
    g = torch.Generator().manual_seed(2)
    db = 10 + torch.randn(N, d, generator=g)
    q = torch.zeros(4, d)
    # Rows 0 and 16 are dealt to the same bucket (lane 0 of the first program's range, with the
    # interpreter's 16-wide tiles); on a GPU's 64-wide tiles rows 0 and 64 are.
    block_n = tc._tile_config(torch.device(DEVICE), d)[1]
    db[0] = 0.01
    db[block_n] = 0.02
    db[1] = 0.03
    q, db = q.to(DEVICE), db.to(DEVICE)
    before = knn_module.fallback_rows
    _, idx = knn(q, db, 3, backend="triton")
    assert tensor_cores
    assert knn_module.fallback_rows > before
    assert idx[0].tolist() == [0, block_n, 1]
    assert torch.equal(idx.cpu(), knn_reference(q.double(), db.double(), 3, "l2")[1].cpu())


def test_eligibility_needs_many_buckets_per_candidate():
    assert tc.tc_eligible(16384, 1_000_000, 128, 14)
    assert tc.tc_eligible(25_000, 25_000, 1024, 14)
    assert not tc.tc_eligible(16384, 1_000_000, 128, 109)  # k = 100: too many collisions
    assert not tc.tc_eligible(100, 5_000, 128, 14)  # too few rows for enough buckets
    assert not tc.tc_eligible(0, 1_000_000, 128, 14)


def test_slack_grows_with_dimension():
    assert tc.tc_slack(1024) > tc.tc_slack(128) > 2.0**-16
    assert tc.tc_slack(128) < 1e-3


@pytest.mark.gpu
def test_auto_uses_tensor_cores_on_a_large_gpu_search(monkeypatch):
    """On CUDA, backend='auto' takes the tensor-core pass for small k on a large database, and
    stays exact on every query."""
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(3000, 128, device="cuda", generator=g)
    db = torch.randn(300_000, 128, device="cuda", generator=g)
    calls = []
    real = tc.tc_bucket_candidates
    monkeypatch.setattr(tc, "tc_bucket_candidates", lambda queries, *a: (calls.append(1), real(queries, *a))[1])
    _, idx = knn(q, db, 10)
    assert calls
    from fmkit.bench.knn import float64_knn  # float64 GEMM tiles: the reference's small chunks are slow on a GPU

    assert torch.equal(idx, float64_knn(q, db, 10)[1])
