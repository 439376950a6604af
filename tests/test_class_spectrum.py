"""fmkit.ops.class_spectrum: the compiled per-class Gram spectra against the float64 per-class
reference (and numpy), on random shapes, both Gram orientations, size-1 classes, duplicate rows,
non-contiguous and float32 input, bad rows and bad arguments. CI runs this file at every SIMD level."""
import numpy as np
import pytest
import torch

from fmkit.ops import _backend
from fmkit.ops.class_spectrum import class_spectrum, int8_gram_available
from fmkit.reference.class_spectrum import class_spectrum_reference, int8_rounded_rows

needs_cpu = pytest.mark.skipif("cpu" not in _backend.compiled_backends(), reason="fmkit._C is not built")
needs_int8 = pytest.mark.skipif("cpu" not in _backend.compiled_backends() or not int8_gram_available(),
                                reason="no AMX-INT8 tiles at this SIMD level / CPU")


def _layout(labels):
    labels = torch.as_tensor(labels)
    rows = torch.argsort(labels, stable=True)
    counts = torch.unique(labels, return_counts=True)[1]
    offsets = torch.zeros(len(counts) + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(counts, 0)
    return rows, offsets


def _compare(x, labels, normalize=True, atol=1e-13, gram="float64"):
    """The compiled op against the reference; with gram="int8", the reference of the rounded rows
    (the int8 route must give exactly the cosine Gram spectrum of int8_rounded_rows(x))."""
    rows, offsets = _layout(labels)
    got = class_spectrum(x, rows, offsets, normalize=normalize, backend="cpu", gram=gram)
    want = class_spectrum_reference(x, rows, offsets, normalize, gram)
    assert got.eigenvalues.shape == want[0].shape
    torch.testing.assert_close(got.eigenvalues, want[0], atol=atol, rtol=0)
    for g, w in zip(got[1:], want[1:]):
        torch.testing.assert_close(g, w, atol=1e-12, rtol=1e-12)
    return got


@needs_cpu
@pytest.mark.parametrize("M,d,C,seed", [(1, 1, 1, 0), (7, 3, 2, 1), (50, 7, 5, 2), (300, 16, 40, 3),
                                        (257, 33, 13, 4), (64, 3, 64, 5), (90, 120, 3, 6), (40, 1, 9, 7)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("normalize", [True, False])
def test_matches_reference_on_random_shapes(M, d, C, seed, dtype, normalize):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, d, generator=g, dtype=dtype) + 0.3
    labels = torch.randint(0, C, (M,), generator=g)
    got = _compare(x, labels, normalize)
    n = torch.unique(labels, return_counts=True)[1]
    if normalize:  # trace of G / n is 1 for unit rows
        torch.testing.assert_close(got.eigenvalues.sum(1), torch.ones(len(n), dtype=torch.float64), atol=1e-12, rtol=0)
    widths = n.clamp(max=d)
    for c, w in enumerate(widths.tolist()):  # descending, then zeros
        ev = got.eigenvalues[c]
        assert bool((ev[:w].diff() <= 1e-15).all()) and bool((ev[w:] == 0).all())


@needs_cpu
def test_both_gram_orientations_and_size_one_classes():
    g = torch.Generator().manual_seed(11)
    d = 6
    sizes = [1, 1, 2, 5, 6, 7, 19, 40, 3, 1, 64, 6]  # n < d, n = d, n > d (d x d Gram), singletons
    labels = torch.cat([torch.full((s,), c) for c, s in enumerate(sizes)])
    x = torch.randn(len(labels), d, generator=g, dtype=torch.float64)
    got = _compare(x, labels[torch.randperm(len(labels), generator=g)])
    assert got.eigenvalues.shape == (len(sizes), d)


@needs_cpu
@pytest.mark.parametrize("scale", [1e-150, 1e-100, 1e-74, 1e72, 1e100, 1e140])
def test_unnormalised_rows_of_any_magnitude_keep_their_accuracy(scale):
    """Without normalising, Gram entries of 1e-300 .. 1e280 reach the reduction; squared there they
    would under- or overflow (at 1e-74 this op was off by 0.3% of the largest eigenvalue). Each class's
    matrix is scaled by a power of two first, so the error stays at float64 rounding."""
    g = torch.Generator().manual_seed(21)
    x = torch.randn(16 * 24, 24, generator=g, dtype=torch.float64) + 0.5
    labels = torch.arange(16).repeat_interleave(24)
    rows, offsets = _layout(labels)
    got = class_spectrum(x * scale, rows, offsets, normalize=False, backend="cpu").eigenvalues
    want = class_spectrum_reference(x, rows, offsets, False, "float64")[0] * scale ** 2
    assert bool(torch.isfinite(got).all())
    torch.testing.assert_close(got, want, rtol=0, atol=1e-13 * float(want.abs().max()))


@needs_cpu
def test_duplicate_rows_give_exact_zero_rank():
    g = torch.Generator().manual_seed(3)
    base = torch.randn(4, 32, generator=g, dtype=torch.float64)
    x = base[torch.tensor([0, 0, 0, 1, 1, 2, 3, 3, 3, 3] * 3)]  # 30 rows, rank 4, in 3 classes of 10
    labels = torch.arange(3).repeat_interleave(10)
    got = _compare(x, labels, atol=1e-13)
    ranks = (got.eigenvalues > 1e-12).sum(1)
    assert ranks.tolist() == [4, 4, 4]
    # one point repeated: Vendi score exactly 1 (a single eigenvalue 1)
    one = class_spectrum(base[[0] * 9], torch.arange(9), torch.tensor([0, 9]), backend="cpu")
    torch.testing.assert_close(one.eigenvalues[0, 0], torch.tensor(1.0, dtype=torch.float64), atol=1e-14, rtol=0)
    assert float(one.eigenvalues[0, 1:].abs().max()) < 1e-14


@needs_cpu
def test_non_contiguous_features_and_many_classes_per_thread():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(70, 400, generator=g)[:, ::4]  # column stride 4
    xt = torch.randn(100, 333, generator=g).T    # row stride 1, column stride 333
    for feats in (x, xt):
        labels = torch.randint(0, 37, (feats.shape[0],), generator=g)
        _compare(feats, labels, atol=2e-13)


@needs_cpu
def test_matches_numpy_eigvalsh_of_the_cosine_kernel():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((120, 24))
    labels = rng.integers(0, 20, 120)
    rows, offsets = _layout(labels)
    got = class_spectrum(x, rows, offsets, backend="cpu").eigenvalues.numpy()
    for c in range(len(offsets) - 1):
        u = x[rows[offsets[c]:offsets[c + 1]].numpy()]
        u = u / np.linalg.norm(u, axis=1, keepdims=True)
        k = u @ u.T / len(u)
        want = np.sort(np.linalg.eigvalsh(k))[::-1]
        np.testing.assert_allclose(got[c, :len(want)], want, atol=1e-13, rtol=0)


@needs_cpu
def test_bad_rows_make_only_their_class_nan():
    x = torch.randn(30, 5, dtype=torch.float64)
    labels = torch.arange(30) % 3
    rows, offsets = _layout(labels)
    x[rows[offsets[1] + 2]] = float("nan")
    x[rows[offsets[2]]] = 0.0
    got = class_spectrum(x, rows, offsets, backend="cpu")
    want = class_spectrum_reference(x, rows, offsets, True)
    assert bool(torch.isnan(got.eigenvalues[1]).all()) and bool(torch.isnan(got.eigenvalues[2]).all())
    torch.testing.assert_close(got.eigenvalues[0], want[0][0], atol=1e-13, rtol=0)
    assert bool(torch.isnan(got.row_norms[offsets[1] + 2])) and float(got.row_norms[offsets[2]]) == 0.0
    plain = class_spectrum(x.nan_to_num(1.0), rows, offsets, normalize=False, backend="cpu")  # zero row is fine
    assert bool(torch.isfinite(plain.eigenvalues).all())


@needs_cpu
def test_bad_arguments_name_themselves():
    x = torch.randn(10, 3)
    rows, offsets = torch.arange(10), torch.tensor([0, 4, 10])
    with pytest.raises(ValueError, match="features: expected a 2-D"):
        class_spectrum(torch.randn(10), rows, offsets)
    with pytest.raises(TypeError, match="features: expected dtype"):
        class_spectrum(x.to(torch.int32), rows, offsets)
    with pytest.raises(TypeError, match="rows: expected a 1-D int64"):
        class_spectrum(x, rows.to(torch.int32), offsets)
    with pytest.raises(ValueError, match="offsets: expected strictly increasing"):
        class_spectrum(x, rows, torch.tensor([0, 4, 4, 10]))
    with pytest.raises(ValueError, match=r"offsets: expected offsets\[0\] = 0"):
        class_spectrum(x, rows, torch.tensor([0, 4, 9]))
    with pytest.raises(ValueError, match=r"rows: expected indices in \[0, 10\)"):
        class_spectrum(x, torch.arange(1, 11), offsets)
    with pytest.raises(ValueError, match="backend='triton'"):
        class_spectrum(x, rows, offsets, backend="triton")


def test_torch_backend_is_the_reference():
    x = torch.randn(20, 4, dtype=torch.float64)
    rows, offsets = torch.arange(20), torch.tensor([0, 7, 20])
    got = class_spectrum(x, rows, offsets, backend="torch")
    for g, w in zip(got, class_spectrum_reference(x, rows, offsets, True)):
        torch.testing.assert_close(g, w, atol=0, rtol=0)


@needs_cpu
def test_compiled_entry_point_checks_its_arguments():
    dl = _backend.dlpack
    x = torch.randn(6, 3)
    rows, f64 = torch.arange(6), torch.float64

    def call(offsets, eig_cols=3, rows=rows, sums_dtype=f64, gram=0, feats=x):
        C = len(offsets) - 1
        _backend._C.class_spectrum_cpu(dl(feats), dl(rows), dl(torch.tensor(offsets)),
                                       dl(torch.empty(C, eig_cols, dtype=f64)), dl(torch.empty(C, 3, dtype=sums_dtype)),
                                       dl(torch.empty(C, 3, dtype=f64)), dl(torch.empty(6, dtype=f64)), True, gram, 1)

    call([0, 2, 6])
    with pytest.raises(ValueError, match="offsets: expected strictly increasing"):
        call([0, 2, 2, 6])
    with pytest.raises(ValueError, match="offsets: expected offsets"):
        call([0, 2, 5])
    with pytest.raises(ValueError, match="rows: expected row indices"):
        call([0, 2, 6], rows=torch.tensor([0, 1, 2, 3, 4, 6]))
    with pytest.raises(ValueError, match="eigenvalues: expected at least max_c min"):
        call([0, 2, 6], eig_cols=2)
    with pytest.raises(ValueError, match="sums: unsupported dtype float32"):
        call([0, 2, 6], sums_dtype=torch.float32)
    with pytest.raises(ValueError, match="gram: expected 0"):
        call([0, 2, 6], gram=3)
    with pytest.raises(ValueError, match="gram: 'int8'"):  # float64 rows, or no AMX here
        call([0, 2, 6], gram=2, feats=x.double())


# ---- the int8 Gram route (AMX-INT8 tiles, float32 rows rounded to 31 bits) ----


@needs_int8
@pytest.mark.parametrize("M,d,C,seed", [(1, 1, 1, 0), (7, 3, 2, 1), (50, 7, 5, 2), (300, 16, 40, 3),
                                        (257, 33, 13, 4), (64, 3, 64, 5), (90, 120, 3, 6), (400, 130, 4, 8),
                                        (260, 65, 2, 9)])
@pytest.mark.parametrize("normalize", [True, False])
def test_int8_gram_is_the_exact_gram_of_the_rounded_rows(M, d, C, seed, normalize):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, d, generator=g) + 0.3
    labels = torch.randint(0, C, (M,), generator=g)
    got = _compare(x, labels, normalize, gram="int8")
    # and the rounding moves the spectrum by no more than ~2^-31 of the rows' scale
    rows, offsets = _layout(labels)
    plain = class_spectrum_reference(x, rows, offsets, normalize)[0]
    scale = plain.abs().amax(1, keepdim=True).clamp_min(1e-300)
    assert float(((got.eigenvalues - plain).abs() / scale).max()) < 1e-8


@needs_int8
def test_int8_duplicates_strides_extreme_magnitudes_and_auto():
    g = torch.Generator().manual_seed(21)
    base = torch.randn(4, 40, generator=g)
    x = base[torch.tensor([0, 0, 0, 1, 1, 2, 3, 3, 3, 3] * 3)]  # rank 4 in each class of 10
    labels = torch.arange(3).repeat_interleave(10)
    got = _compare(x, labels, gram="int8")
    assert (got.eigenvalues > 1e-12).sum(1).tolist() == [4, 4, 4]  # duplicates round alike: exact rank
    wide = torch.randn(60, 300, generator=g)
    for feats in (wide[:, ::3], torch.randn(90, 41, generator=g).T):  # column stride 3; a transposed view
        _compare(feats, torch.randint(0, 7, (feats.shape[0],), generator=g), gram="int8")
    # rows far outside float32's comfortable range: 2^e leaves float32 (tiny rows), or e < 0 (huge)
    y = torch.randn(48, 24, generator=g)
    y[:16] *= 1e-38
    y[16:32] *= 3e37
    y[32:40, ::2] = 1e-42  # subnormals beside normal values
    _compare(y, torch.arange(48) // 8, gram="int8")
    rows, offsets = _layout(torch.arange(48) // 8)
    raw = class_spectrum(y, rows, offsets, normalize=False, backend="cpu", gram="int8").eigenvalues
    want = class_spectrum_reference(y, rows, offsets, False, "int8")[0]
    scale = want.abs().amax(1, keepdim=True)
    assert float(((raw - want).abs() / scale).max()) < 1e-13  # the linear kernel, relative to each class
    # "auto" takes the int8 route for float32 and float64 products for float64
    rows, offsets = _layout(labels)
    auto = class_spectrum(x, rows, offsets, backend="cpu")
    assert torch.equal(auto.eigenvalues, got.eigenvalues)
    f64 = class_spectrum(x.double(), rows, offsets, backend="cpu")
    assert torch.equal(f64.eigenvalues, class_spectrum(x.double(), rows, offsets, backend="cpu", gram="float64").eigenvalues)


@needs_cpu
def test_gram_argument_errors():
    x = torch.randn(10, 3)
    rows, offsets = torch.arange(10), torch.tensor([0, 4, 10])
    with pytest.raises(ValueError, match="gram: expected one of"):
        class_spectrum(x, rows, offsets, gram="fp16")
    with pytest.raises(TypeError, match="gram: 'int8' rounds float32 rows; features are float64"):
        class_spectrum(x.double(), rows, offsets, gram="int8")
    if not int8_gram_available():
        with pytest.raises(ValueError, match="gram: 'int8' needs AMX-INT8"):
            class_spectrum(x, rows, offsets, backend="cpu", gram="int8")
    # the torch backend follows the same rounding contract
    want = class_spectrum_reference(x, rows, offsets, True, "int8")[0]
    torch.testing.assert_close(class_spectrum(x, rows, offsets, backend="torch", gram="int8").eigenvalues, want,
                               atol=0, rtol=0)
    small = torch.tensor([[1.0, 3e-3 + 2**-30, -0.5]])  # below max/128 float32 keeps bits the rounding drops
    assert not torch.equal(int8_rounded_rows(small), small.double())
