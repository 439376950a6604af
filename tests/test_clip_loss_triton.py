"""fmkit.triton.clip_loss kernels against a dense float64 torch oracle (contract: csrc/ops/clip_loss.h).

CPU runs use the Triton interpreter (conftest sets TRITON_INTERPRET=1 without a GPU), so shapes
stay small; the gpu-marked test checks a realistic shape on CUDA.
"""
import pytest
import torch
import torch.nn.functional as F

triton = pytest.importorskip("triton")
from fmkit.triton import clip_loss as tcl  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def oracle_forward(x, y, scale, bias, kind):
    x64, y64 = x.double(), y.double()
    L = float(scale) * (x64 @ y64.T) + float(bias)
    if kind == "softmax":
        return torch.logsumexp(L, 1), torch.logsumexp(L, 0)
    return F.softplus(L).sum(1), None


def oracle_backward(x, y, scale, bias, kind, row, col, w_row, w_col):
    x64, y64 = x.double(), y.double()
    S = x64 @ y64.T
    L = float(scale) * S + float(bias)
    if kind == "softmax":
        G = w_row.double()[:, None] * torch.exp(L - row.double()[:, None])
        if w_col is not None:
            G = G + w_col.double()[None, :] * torch.exp(L - col.double()[None, :])
    else:
        G = w_row.double()[:, None] * torch.sigmoid(L)
    dx = float(scale) * G @ y64
    dy = float(scale) * G.T @ x64
    return dx, dy, torch.stack([(G * S).sum(), G.sum()])


def close(got, ref, rel, atol=1e-6):
    got, ref = got.double().cpu(), ref.double().cpu()
    assert got.shape == ref.shape
    assert torch.isfinite(got).all()
    err = (got - ref).abs().max().item() if ref.numel() else 0.0
    bound = rel * (ref.abs().max().item() if ref.numel() else 0.0) + atol
    assert err <= bound, f"max err {err:.3g} > {bound:.3g}"


def make(m, n, d, dtype, unit=False, seed=0, noncontig=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, d, generator=g)
    y = torch.randn(n, d, generator=g)
    if unit:
        x, y = F.normalize(x, dim=1), F.normalize(y, dim=1)
    else:
        x, y = x / d ** 0.5, y / d ** 0.5
    if noncontig:  # transposed storage and a strided row view
        x = x.T.contiguous().T
        y = torch.cat([y, y], 1)[:, ::2]
        assert not x.is_contiguous() and not y.is_contiguous()
    return x.to(DEV, dtype), y.to(DEV, dtype)


def tols(dtype):
    # (forward rel, backward rel): fp32 is IEEE; 16-bit inputs round G to the input dtype.
    return (2e-5, 5e-5) if dtype == torch.float32 else (2e-5, 1.5e-2)


def check(m, n, d, dtype, kind, scale, bias, *, unit=False, need_col=True, with_wcol=True, noncontig=False,
          seed=0, wscale=1.0):
    x, y = make(m, n, d, dtype, unit=unit, seed=seed, noncontig=noncontig)
    s = torch.tensor(scale, dtype=torch.float32, device=DEV)
    b = torch.tensor(bias, dtype=torch.float32, device=DEV)
    rel_f, rel_b = tols(dtype)
    row, col = tcl.forward(x, y, s, b, kind, need_col)
    ref_row, ref_col = oracle_forward(x, y, scale, bias, kind)
    assert row.dtype == torch.float32 and row.shape == (m,)
    close(row, ref_row, rel_f, atol=1e-5)
    if kind == "softmax" and need_col:
        assert col.dtype == torch.float32 and col.shape == (n,)
        close(col, ref_col, rel_f, atol=1e-5)
    else:
        assert col is None

    g = torch.Generator().manual_seed(seed + 1)
    w_row = ((torch.rand(m, generator=g) + 0.5) * wscale).to(DEV)
    w_col = ((torch.rand(n, generator=g) + 0.5) * wscale).to(DEV) if (kind == "softmax" and with_wcol) else None
    # Statistics from the oracle (rounded to fp32) so the backward is checked on its own.
    r32 = ref_row.float()
    c32 = ref_col.float() if (ref_col is not None and w_col is not None) else None
    dx, dy, stats = tcl.backward(x, y, s, b, kind, r32, c32, w_row, w_col)
    rdx, rdy, rstats = oracle_backward(x, y, scale, bias, kind, r32, c32, w_row, w_col)
    assert dx.dtype == torch.float32 and dx.shape == (m, d)
    assert dy.dtype == torch.float32 and dy.shape == (n, d)
    assert stats.dtype == torch.float64 and stats.shape == (2,)
    close(dx, rdx, rel_b, atol=1e-6 * wscale)
    close(dy, rdy, rel_b, atol=1e-6 * wscale)
    close(stats, rstats, max(rel_b, 1e-5), atol=1e-6 * wscale)


@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
@pytest.mark.parametrize("m,n,d", [(1, 1, 1), (2, 37, 3), (37, 2, 33), (130, 37, 33), (37, 130, 1)])
def test_shapes_fp32(kind, m, n, d):
    check(m, n, d, torch.float32, kind, 3.0, 0.5 if kind == "softmax" else -2.0)


@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_dtypes(kind, dtype):
    check(37, 70, 33, dtype, kind, 10.0, -10.0 if kind == "sigmoid" else 0.0, unit=True)


@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_large_logits(kind, dtype):
    # Logits in [-110, 90]: any exp of an unshifted logit would overflow fp32.
    check(40, 33, 17, dtype, kind, 100.0, -10.0, unit=True)


def test_large_logits_identical_rows():
    # All rows equal: every logit ties at the max (LSE = max + log N), bias large and negative.
    x = torch.ones(5, 8, device=DEV) / 8 ** 0.5
    y = torch.ones(70, 8, device=DEV) / 8 ** 0.5
    s, b = torch.tensor(100.0, device=DEV), torch.tensor(-10.0, device=DEV)
    row, col = tcl.forward(x, y, s, b, "softmax", True)
    close(row, torch.full((5,), 90.0 + torch.log(torch.tensor(70.0)).item()), 1e-6, atol=1e-5)
    close(col, torch.full((70,), 90.0 + torch.log(torch.tensor(5.0)).item()), 1e-6, atol=1e-5)


@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_noncontiguous(kind, dtype):
    check(33, 45, 20, dtype, kind, 5.0, -1.0, noncontig=True)


def test_no_col():
    check(37, 50, 9, torch.float32, "softmax", 4.0, 0.0, need_col=False, with_wcol=False)
    check(20, 50, 9, torch.float32, "softmax", 4.0, 0.0, need_col=True, with_wcol=False)


@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_scratch_row_chunks(monkeypatch, kind):
    # Force several forward launches so the cross-chunk column log-add-exp is exercised.
    monkeypatch.setattr(tcl, "_SCRATCH_ELEMS", 40)
    check(100, 40, 5, torch.float32, kind, 6.0, 0.3)


@pytest.mark.parametrize("gemm", ["triton", "cublas"])
@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m,n,noncontig", [(97, 41, False), (70, 33, True), (1, 1, False), (65, 1, False)])
def test_backward_row_chunks(monkeypatch, gemm, kind, dtype, m, n, noncontig):
    # A G scratch of one row block: several chunks, dy accumulated across them, the last chunk
    # partial; both gradient-product paths (on CPU "cublas" is its fp32 stand-in; fp32 inputs
    # always take the Triton GEMM).
    monkeypatch.setattr(tcl, "_G_SCRATCH_ELEMS", 1)
    monkeypatch.setattr(tcl, "_GEMM", gemm)
    check(m, n, 19, dtype, kind, 8.0, -1.0 if kind == "sigmoid" else 0.0, unit=True, noncontig=noncontig)


def test_backward_chunk_boundaries_match_single_launch(monkeypatch):
    # Chunking only changes where the rows are cut: results match the one-launch backward.
    x, y = make(90, 50, 24, torch.float32, unit=True, seed=5)
    s, b = torch.tensor(9.0, device=DEV), torch.tensor(0.0, device=DEV)
    row, col = tcl.forward(x, y, s, b, "softmax", True)
    w = torch.full((90,), 1 / 180, device=DEV)
    wc = torch.full((50,), 1 / 180, device=DEV)
    one = tcl.backward(x, y, s, b, "softmax", row, col, w, wc)
    monkeypatch.setattr(tcl, "_G_SCRATCH_ELEMS", 64 * 64)
    many = tcl.backward(x, y, s, b, "softmax", row, col, w, wc)
    for a, c in zip(one, many):
        close(c, a, 1e-6, atol=1e-9)


@pytest.mark.parametrize("gemm", ["triton", "cublas"])
def test_fp16_tiny_weights(monkeypatch, gemm):
    # w ~ 1e-6 (a large-N batch): unscaled, scale * G ~ 1e-8 would round to 0 in fp16; the
    # power-of-two pre-multiplier keeps it representable.
    monkeypatch.setattr(tcl, "_GEMM", gemm)
    for kind in ("softmax", "sigmoid"):
        check(37, 70, 33, torch.float16, kind, 1.0, 0.0, unit=True, wscale=1e-6)


def _fake_out_dtype_gemms(monkeypatch, addmm=True):
    """torch.mm / addmm taking out_dtype=float32 as on CUDA (CPU torch lacks them): widen, fp32 GEMM."""
    mm, addmm_ = torch.mm, torch.addmm

    def fake_mm(a, b, out_dtype=None):
        return mm(a.float(), b.float()) if out_dtype is not None else mm(a, b)

    def fake_addmm(acc, a, b, out_dtype=None):
        if out_dtype is None:
            return addmm_(acc, a, b)
        if not addmm:
            raise RuntimeError("addmm: out_dtype not supported")
        return addmm_(acc, a.float(), b.float())

    monkeypatch.setattr(torch, "mm", fake_mm)
    monkeypatch.setattr(torch, "addmm", fake_addmm)


@pytest.mark.skipif(DEV != "cpu", reason="fakes torch's CUDA-only out_dtype GEMMs on CPU")
def test_cublas_probe_and_modes(monkeypatch):
    probe = tcl._cublas_fp32_out.__wrapped__  # uncached
    cpu = torch.device("cpu")
    assert probe(cpu) is None  # CPU torch: no out_dtype GEMMs
    for addmm, mode in ((True, "addmm"), (False, "mm")):
        with monkeypatch.context() as mp:
            _fake_out_dtype_gemms(mp, addmm)
            assert probe(cpu) == mode
            mp.setattr(tcl, "_cublas_mode", lambda x, mode=mode: mode)
            mp.setattr(tcl, "_G_SCRATCH_ELEMS", 1)
            check(70, 45, 19, torch.bfloat16, "softmax", 8.0, 0.0, unit=True)
            check(70, 45, 19, torch.float16, "sigmoid", 8.0, -1.0, unit=True)


def test_g_multiplier():
    s = torch.tensor(14.0, device=DEV)
    w = torch.full((4,), 1e-6, device=DEV)
    mult = tcl._g_multiplier(s, w, w).item()
    assert 1.0 <= 14.0 * 2e-6 * mult < 2.0 and mult == 2.0 ** round(torch.log2(torch.tensor(mult)).item())
    assert tcl._g_multiplier(s, torch.zeros(3, device=DEV), None).item() == 2.0 ** 100  # G = 0: harmless


def test_consistent_with_own_forward():
    # Softmax with both weights = 1/(2M): sum G = 1 exactly (rows and columns each sum to M/(2M)).
    x, y = make(45, 45, 24, torch.bfloat16, unit=True, seed=3)
    s, b = torch.tensor(14.3, device=DEV), torch.tensor(0.0, device=DEV)
    row, col = tcl.forward(x, y, s, b, "softmax", True)
    w = torch.full((45,), 1 / 90, device=DEV)
    _, _, stats = tcl.backward(x, y, s, b, "softmax", row, col, w, w)
    assert abs(stats[1].item() - 1.0) < 1e-5


def test_empty_and_bad_kind():
    x = torch.zeros(0, 4, device=DEV)
    y = torch.randn(3, 4, device=DEV)
    s, b = torch.tensor(1.0, device=DEV), torch.tensor(0.0, device=DEV)
    row, col = tcl.forward(x, y, s, b, "softmax", True)
    assert row.shape == (0,) and torch.isneginf(col).all()
    dx, dy, stats = tcl.backward(x, y, s, b, "softmax", row, col, row, col)
    assert dx.shape == (0, 4) and (dy == 0).all() and (stats == 0).all()
    with pytest.raises(ValueError):
        tcl.forward(y, y, s, b, "hinge", False)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_gpu_large_bf16(kind):
    n, d = 4096, 768
    g = torch.Generator(device="cuda").manual_seed(0)
    x = F.normalize(torch.randn(n, d, device="cuda", generator=g), dim=1).bfloat16()
    y = F.normalize(torch.randn(n, d, device="cuda", generator=g), dim=1).bfloat16()
    scale, bias = (100.0, 0.0) if kind == "softmax" else (10.0, -10.0)
    s = torch.tensor(scale, device="cuda")
    b = torch.tensor(bias, device="cuda")
    row, col = tcl.forward(x, y, s, b, kind, True)
    ref_row, ref_col = oracle_forward(x, y, scale, bias, kind)
    close(row, ref_row, 1e-5, atol=1e-4)
    if kind == "softmax":
        close(col, ref_col, 1e-5, atol=1e-4)
    w_row = torch.full((n,), 1 / (2 * n), device="cuda")
    w_col = w_row.clone() if kind == "softmax" else None
    r32 = ref_row.float()
    c32 = ref_col.float() if kind == "softmax" else None
    dx, dy, stats = tcl.backward(x, y, s, b, kind, r32, c32, w_row, w_col)
    rdx, rdy, rstats = oracle_backward(x, y, scale, bias, kind, r32, c32, w_row, w_col)
    close(dx, rdx, 1.5e-2)
    close(dy, rdy, 1.5e-2)
    close(stats, rstats, 1e-4)
    # The Triton GEMM agrees with cuBLAS on the same G, and row chunks of 3 row blocks (the
    # last one shorter) give the same gradients.
    for setting, value in (("_GEMM", "triton"), ("_G_SCRATCH_ELEMS", 3 * tcl._GRAD_CONFIG[0] * n)):
        saved = getattr(tcl, setting)
        try:
            setattr(tcl, setting, value)
            vdx, vdy, vstats = tcl.backward(x, y, s, b, kind, r32, c32, w_row, w_col)
        finally:
            setattr(tcl, setting, saved)
        close(vdx, dx, 1e-4)
        close(vdy, dy, 1e-4)
        close(vstats, stats, 1e-12)
    # Few local rows against many columns.
    xs = x[:300]
    row, col = tcl.forward(xs, y, s, b, kind, True)
    ref_row, ref_col = oracle_forward(xs, y, scale, bias, kind)
    close(row, ref_row, 1e-5, atol=1e-4)
    dx, dy, _ = tcl.backward(xs, y, s, b, kind, ref_row.float(), None, w_row[:300], None)
    rdx, rdy, _ = oracle_backward(xs, y, scale, bias, kind, ref_row.float(), None, w_row[:300], None)
    close(dx, rdx, 1.5e-2)
    close(dy, rdy, 1.5e-2)
