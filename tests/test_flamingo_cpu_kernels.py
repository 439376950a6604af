"""fmkit._C perceiver / media cross-attention CPU kernels against dense float64 math.

These call the compiled kernels directly (contracts in csrc/ops/perceiver_attention.h and
csrc/ops/media_cross_attention.h). The oracle is the contract's formula written densely in
float64 on the same (rounded) inputs the kernel sees: an explicit [km; kl] concatenation for the
perceiver, a dense boolean mask built from media_index for the cross-attention (rows of index 0
set to 0). Gradients come from torch.autograd on that float64 formula with a random dout.
"""
import math

import pytest
import torch
from torch.utils.dlpack import to_dlpack

_C = pytest.importorskip("fmkit._C")
if not hasattr(_C, "perceiver_attention_forward_cpu") or not hasattr(_C, "media_cross_attention_forward_cpu"):
    pytest.skip("extension built without the Flamingo attention kernels", allow_module_level=True)

THREADS = 2

# Max error relative to the largest reference entry. f32: fp32 accumulation only. f16/bf16: the
# output is rounded to the input dtype, and the backward's delta = sum dout * out uses that
# rounded output (as autograd on the stored tensor would), so gradients inherit its rounding.
TOL = {torch.float32: (2e-5, 5e-5), torch.float16: (2e-3, 4e-3), torch.bfloat16: (1e-2, 3e-2)}
LSE_TOL = 2e-5  # lse is always fp32


def dl(t):
    return to_dlpack(t)


def rnd(shape, dtype, gen, noncontig=False):
    """Random input; with noncontig, a transposed view of a tensor with the last two dims swapped."""
    if noncontig:
        base = torch.randn(*shape[:-2], shape[-1], shape[-2], generator=gen, dtype=torch.float32).to(dtype)
        t = base.transpose(-1, -2)
        assert not t.is_contiguous() or t.numel() <= 1 or 1 in shape[-2:]
        return t
    return torch.randn(*shape, generator=gen, dtype=torch.float32).to(dtype)


def assert_close(got, want, rtol, what):
    assert torch.isfinite(got.double()).all(), f"{what}: non-finite values"
    if want.numel() == 0:
        return
    scale = max(want.abs().max().item(), 1e-30)
    err = (got.double() - want).abs().max().item() / scale
    assert err <= rtol, f"{what}: relative error {err:.3g} > {rtol:.1g}"


def assert_lse(got, want, what):
    assert got.dtype == torch.float32, what
    finite = torch.isfinite(want)
    assert torch.equal(torch.isfinite(got), finite), f"{what}: finiteness differs"
    assert (got[~finite] == -math.inf).all(), f"{what}: masked rows must be -inf"
    if finite.any():
        err = ((got.double()[finite] - want[finite]).abs() / want[finite].abs().clamp_min(1.0)).max().item()
        assert err <= LSE_TOL, f"{what}: relative error {err:.3g}"


# ---------------------------------------------------------------------------------------
# Perceiver: two-source keys
# ---------------------------------------------------------------------------------------

def perceiver_ref(q, km, vm, kl, vl, scale):
    k = torch.cat([km, kl], dim=2)
    v = torch.cat([vm, vl], dim=2)
    s = scale * q @ k.transpose(-1, -2)
    return torch.softmax(s, dim=-1) @ v, torch.logsumexp(s, dim=-1)


def perceiver_fwd(q, km, vm, kl, vl, scale, threads=THREADS):
    B, H, L, D = q.shape
    out = torch.full((B, H, L, D), float("nan")).to(q.dtype)
    lse = torch.full((B, H, L), float("nan"))
    _C.perceiver_attention_forward_cpu(dl(q), dl(km), dl(vm), dl(kl), dl(vl), float(scale), dl(out), dl(lse),
                                       threads)
    return out, lse


def perceiver_bwd(q, km, vm, kl, vl, out, lse, dout, scale, threads=THREADS):
    nan = lambda t: torch.full(t.shape, float("nan"))  # noqa: E731
    dq, dkm, dvm, dkl, dvl = nan(q), nan(km), nan(vm), nan(kl), nan(vl)
    _C.perceiver_attention_backward_cpu(dl(q), dl(km), dl(vm), dl(kl), dl(vl), dl(out), dl(lse), dl(dout),
                                        float(scale), dl(dq), dl(dkm), dl(dvm), dl(dkl), dl(dvl), threads)
    return dq, dkm, dvm, dkl, dvl


def check_perceiver(B, H, L, M, L2, D, dtype=torch.float32, noncontig=False, seed=0, scale=None, threads=THREADS,
                    tol=None):
    gen = torch.Generator().manual_seed(seed)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    q = rnd((B, H, L, D), dtype, gen, noncontig)
    km = rnd((B, H, M, D), dtype, gen, noncontig)
    vm = rnd((B, H, M, D), dtype, gen, noncontig)
    kl = rnd((B, H, L2, D), dtype, gen, noncontig)
    vl = rnd((B, H, L2, D), dtype, gen, noncontig)
    dout = rnd((B, H, L, D), dtype, gen, noncontig)

    out, lse = perceiver_fwd(q, km, vm, kl, vl, scale, threads)
    inputs = [t.double().requires_grad_() for t in (q, km, vm, kl, vl)]
    ref_out, ref_lse = perceiver_ref(*inputs, scale)
    fwd_tol, bwd_tol = TOL[dtype] if tol is None else tol
    assert out.dtype == dtype and out.is_contiguous()
    assert_close(out, ref_out.detach(), fwd_tol, "out")
    assert_lse(lse, ref_lse.detach(), "lse")

    grads = perceiver_bwd(q, km, vm, kl, vl, out, lse, dout, scale, threads)
    ref_grads = torch.autograd.grad(ref_out, inputs, dout.double(), allow_unused=True)
    for name, got, want, t in zip(("dq", "dkm", "dvm", "dkl", "dvl"), grads, ref_grads, inputs):
        want = torch.zeros_like(t) if want is None else want
        assert got.dtype == torch.float32 and got.shape == t.shape, name
        assert_close(got, want, bwd_tol, name)


@pytest.mark.parametrize(
    "B,H,L,M,L2,D",
    [
        (1, 1, 1, 1, 1, 1),
        (1, 1, 64, 256, 64, 64),
        (2, 3, 7, 13, 5, 16),
        (1, 2, 70, 300, 70, 72),
        (2, 1, 33, 0, 33, 16),  # M = 0: latents only
        (1, 3, 5, 17, 1, 64),
        (2, 2, 64, 1, 64, 72),
        (1, 1, 70, 45, 3, 1),
        (2, 3, 1, 300, 1, 16),
    ],
)
def test_perceiver_f32_shapes(B, H, L, M, L2, D):
    check_perceiver(B, H, L, M, L2, D)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 2, 64, 256, 64, 64), (1, 3, 19, 37, 11, 72), (2, 1, 9, 0, 9, 16)])
def test_perceiver_half_dtypes(dtype, shape):
    check_perceiver(*shape, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_perceiver_noncontiguous(dtype):
    check_perceiver(2, 2, 21, 40, 12, 16, dtype=dtype, noncontig=True)
    check_perceiver(1, 3, 64, 256, 64, 64, dtype=dtype, noncontig=True, seed=1)


@pytest.mark.parametrize("threads", [1, 3, 8])
def test_perceiver_thread_counts(threads):
    # B * H < threads exercises the query-block chunking of the backward and its reduction.
    check_perceiver(1, 1, 70, 50, 20, 16, threads=threads)
    check_perceiver(1, 2, 200, 30, 64, 64, threads=threads, seed=2)


def test_perceiver_large_scores_stable():
    # Scores of a few hundred: only a max-subtracted softmax stays finite. The fp32 rounding of
    # each score is amplified by the scale (and dK/dQ carry another factor of it), hence the
    # looser tolerance; a non-max-subtracted kernel would give inf/NaN, not a 1e-4 error.
    check_perceiver(1, 2, 16, 40, 8, 16, scale=30.0, tol=(2e-4, 1e-3))


def test_perceiver_deterministic_across_threads():
    gen = torch.Generator().manual_seed(3)
    args = [torch.randn(2, 2, 40, 16, generator=gen)] + [torch.randn(2, 2, n, 16, generator=gen) for n in (30, 30, 9, 9)]
    o1, l1 = perceiver_fwd(*args, 0.25, threads=1)
    o2, l2 = perceiver_fwd(*args, 0.25, threads=4)
    assert torch.equal(o1, o2) and torch.equal(l1, l2)


def test_perceiver_errors():
    B, H, L, M, L2, D = 2, 2, 4, 6, 3, 8
    q, km, vm, kl, vl = (torch.randn(B, H, n, D) for n in (L, M, M, L2, L2))

    def fwd(q=q, km=km, vm=vm, kl=kl, vl=vl, out=None, lse=None):
        out = torch.empty(B, H, L, D, dtype=q.dtype) if out is None else out
        lse = torch.empty(B, H, L) if lse is None else lse
        _C.perceiver_attention_forward_cpu(dl(q), dl(km), dl(vm), dl(kl), dl(vl), 0.5, dl(out), dl(lse), 1)

    with pytest.raises(ValueError, match=r"^km: expected shape \[2, 2, 6, 8\], got \[2, 2, 6, 9\]$"):
        fwd(km=torch.randn(B, H, M, D + 1))
    with pytest.raises(ValueError, match=r"^vm: expected shape \[2, 2, 6, 8\], got \[2, 2, 7, 8\]$"):
        fwd(vm=torch.randn(B, H, M + 1, D))
    with pytest.raises(ValueError, match=r"^kl: expected shape \[2, 2, 3, 8\], got \[3, 2, 3, 8\]$"):
        fwd(kl=torch.randn(B + 1, H, L2, D))
    with pytest.raises(ValueError, match=r"^vl: must have the same dtype as q \(float32\), got float16$"):
        fwd(vl=torch.randn(B, H, L2, D, dtype=torch.float16))
    with pytest.raises(ValueError, match=r"^km: unsupported dtype float64, expected one of: float32 float16 bfloat16$"):
        fwd(km=km.double())
    with pytest.raises(ValueError, match=r"^q: expected a 4-D tensor, got 3-D$"):
        fwd(q=torch.randn(B, H, L))
    with pytest.raises(ValueError, match=r"^out: unsupported dtype float16, expected one of: float32$"):
        fwd(out=torch.empty(B, H, L, D, dtype=torch.float16))
    with pytest.raises(ValueError, match=r"^lse: expected shape \[2, 2, 4\], got \[2, 2, 5\]$"):
        fwd(lse=torch.empty(B, H, L + 1))

    out, lse = perceiver_fwd(q, km, vm, kl, vl, 0.5)
    grads = [torch.empty(t.shape) for t in (q, km, vm, kl, vl)]

    def bwd(dout=out, grads=grads, lse=lse):
        _C.perceiver_attention_backward_cpu(dl(q), dl(km), dl(vm), dl(kl), dl(vl), dl(out), dl(lse), dl(dout), 0.5,
                                            *[dl(g) for g in grads], 1)

    bwd()
    with pytest.raises(ValueError, match=r"^dout: expected shape \[2, 2, 4, 8\], got \[2, 2, 5, 8\]$"):
        bwd(dout=torch.randn(B, H, L + 1, D))
    with pytest.raises(ValueError, match=r"^dkl: expected shape \[2, 2, 3, 8\], got \[2, 2, 4, 8\]$"):
        bwd(grads=grads[:3] + [torch.empty(B, H, L2 + 1, D)] + grads[4:])
    with pytest.raises(ValueError, match=r"^dq: unsupported dtype float16, expected one of: float32$"):
        bwd(grads=[torch.empty(B, H, L, D, dtype=torch.float16)] + grads[1:])


# ---------------------------------------------------------------------------------------
# Media cross-attention: block-diagonal by image index
# ---------------------------------------------------------------------------------------

def media_ref(q, k, v, media_index, P, scale):
    B, H, T, D = q.shape
    n_keys = k.shape[2]
    key_image = torch.arange(n_keys) // P + 1  # key j belongs to image j // P + 1
    mask = media_index[:, None, :, None] == key_image[None, None, None, :]  # [B, 1, T, NK]
    s = scale * q @ k.transpose(-1, -2)
    s = s.masked_fill(~mask, -math.inf)
    has = (media_index > 0)[:, None, :, None]
    # Rows of index 0 are fully masked: give them finite scores so softmax is defined, then zero.
    p = torch.softmax(torch.where(has, s, torch.zeros_like(s)), dim=-1)
    out = torch.where(has, p @ v, torch.zeros((), dtype=q.dtype))
    lse = torch.logsumexp(s, dim=-1)  # -inf on index-0 rows
    return out, lse


def media_fwd(q, k, v, mi, P, scale, threads=THREADS):
    B, H, T, D = q.shape
    out = torch.full((B, H, T, D), float("nan")).to(q.dtype)
    lse = torch.full((B, H, T), float("nan"))
    _C.media_cross_attention_forward_cpu(dl(q), dl(k), dl(v), dl(mi), int(P), float(scale), dl(out), dl(lse), threads)
    return out, lse


def media_bwd(q, k, v, mi, P, out, lse, dout, scale, threads=THREADS):
    dq, dk, dv = (torch.full(t.shape, float("nan")) for t in (q, k, v))
    _C.media_cross_attention_backward_cpu(dl(q), dl(k), dl(v), dl(mi), int(P), dl(out), dl(lse), dl(dout),
                                          float(scale), dl(dq), dl(dk), dl(dv), threads)
    return dq, dk, dv


def make_media_index(B, T, n_media, pattern, gen):
    if pattern == "zeros":
        return torch.zeros(B, T, dtype=torch.int64)
    if pattern == "single":
        mi = torch.ones(B, T, dtype=torch.int64)
        mi[:, : T // 3] = 0  # text before the image
        return mi
    # cumsum of random <image> token positions, as the model builds it (may start with zeros)
    is_image = torch.rand(B, T, generator=gen) < (n_media / max(T, 1))
    mi = torch.cumsum(is_image.long(), dim=1).clamp_max(n_media)
    if pattern == "shuffled":  # not monotonic: the kernel must not assume runs
        mi = torch.randint(0, n_media + 1, (B, T), generator=gen)
    return mi


def check_media(B, H, T, n_media, P, D, pattern="cumsum", dtype=torch.float32, noncontig=False, seed=0,
                threads=THREADS, mi=None):
    gen = torch.Generator().manual_seed(seed)
    scale = 1.0 / math.sqrt(D)
    q = rnd((B, H, T, D), dtype, gen, noncontig)
    k = rnd((B, H, n_media * P, D), dtype, gen, noncontig)
    v = rnd((B, H, n_media * P, D), dtype, gen, noncontig)
    dout = rnd((B, H, T, D), dtype, gen, noncontig)
    mi = make_media_index(B, T, n_media, pattern, gen) if mi is None else mi

    out, lse = media_fwd(q, k, v, mi, P, scale, threads)
    inputs = [t.double().requires_grad_() for t in (q, k, v)]
    ref_out, ref_lse = media_ref(*inputs, mi, P, scale)
    fwd_tol, bwd_tol = TOL[dtype]
    assert out.dtype == dtype and out.is_contiguous()
    assert_close(out, ref_out.detach(), fwd_tol, "out")
    assert_lse(lse, ref_lse.detach(), "lse")
    zero_rows = (mi == 0)[:, None, :].expand(B, H, T)
    assert (out[zero_rows] == 0).all(), "index-0 rows must be exactly 0"

    dq, dk, dv = media_bwd(q, k, v, mi, P, out, lse, dout, scale, threads)
    ref = torch.autograd.grad(ref_out, inputs, dout.double(), allow_unused=True)
    for name, got, want, t in zip(("dq", "dk", "dv"), (dq, dk, dv), ref, inputs):
        want = torch.zeros_like(t) if want is None else want
        assert got.dtype == torch.float32 and got.shape == t.shape, name
        assert_close(got, want, bwd_tol, name)
    assert (dq[zero_rows] == 0).all(), "index-0 rows must get exactly zero dq"


@pytest.mark.parametrize(
    "B,H,T,n_media,P,D,pattern",
    [
        (1, 1, 1, 1, 1, 1, "single"),
        (1, 1, 1, 1, 64, 64, "cumsum"),
        (2, 3, 70, 3, 64, 64, "cumsum"),
        (2, 2, 150, 5, 5, 16, "cumsum"),
        (1, 2, 300, 6, 64, 72, "cumsum"),
        (2, 1, 40, 1, 64, 16, "single"),
        (2, 2, 33, 4, 64, 16, "zeros"),
        (1, 3, 64, 0, 64, 16, "zeros"),  # no media keys at all
        (2, 2, 200, 40, 5, 16, "cumsum"),  # many images
        (2, 2, 90, 7, 13, 1, "shuffled"),
        (1, 1, 129, 2, 64, 64, "single"),  # more than one 64-query block per image
    ],
)
def test_media_f32_shapes(B, H, T, n_media, P, D, pattern):
    check_media(B, H, T, n_media, P, D, pattern)


def test_media_text_before_first_image():
    mi = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3], [0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]], dtype=torch.int64)
    check_media(2, 2, 11, 3, 64, 16, mi=mi)


def test_media_image_without_queries_gets_zero_grad():
    mi = torch.tensor([[1, 1, 3, 3, 3]], dtype=torch.int64)  # image 2 is never attended
    check_media(1, 2, 5, 3, 5, 16, mi=mi)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 2, 100, 5, 64, 64, "cumsum"), (1, 3, 37, 4, 5, 72, "shuffled")])
def test_media_half_dtypes(dtype, shape):
    check_media(*shape, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_media_noncontiguous(dtype):
    check_media(2, 2, 80, 3, 64, 64, dtype=dtype, noncontig=True)
    mi = make_media_index(2, 30, 4, "cumsum", torch.Generator().manual_seed(5)).t().contiguous().t()  # strided
    check_media(2, 2, 30, 4, 5, 16, dtype=dtype, noncontig=True, mi=mi)


@pytest.mark.parametrize("threads", [1, 3, 8])
def test_media_thread_counts(threads):
    check_media(1, 1, 200, 2, 64, 16, threads=threads)


def test_media_errors():
    B, H, T, n_media, P, D = 2, 2, 6, 2, 4, 8
    q = torch.randn(B, H, T, D)
    k = torch.randn(B, H, n_media * P, D)
    v = torch.randn(B, H, n_media * P, D)
    mi = torch.tensor([[0, 1, 1, 2, 2, 2], [1, 1, 1, 1, 2, 2]])

    def fwd(q=q, k=k, v=v, mi=mi, P=P, out=None):
        out = torch.empty(B, H, T, D, dtype=q.dtype) if out is None else out
        _C.media_cross_attention_forward_cpu(dl(q), dl(k), dl(v), dl(mi), P, 0.5, dl(out), dl(torch.empty(B, H, T)), 1)

    fwd()
    with pytest.raises(ValueError, match=r"^k: expected shape \[2, 2, 8, 8\], got \[2, 2, 8, 9\]$"):
        fwd(k=torch.randn(B, H, n_media * P, D + 1))
    with pytest.raises(ValueError, match=r"^v: expected shape \[2, 2, 8, 8\], got \[2, 2, 9, 8\]$"):
        fwd(v=torch.randn(B, H, n_media * P + 1, D))
    with pytest.raises(ValueError, match=r"^v: must have the same dtype as q \(float32\), got float16$"):
        fwd(v=v.half())
    with pytest.raises(ValueError, match=r"^media_index: unsupported dtype int32, expected one of: int64$"):
        fwd(mi=mi.int())
    with pytest.raises(ValueError, match=r"^media_index: expected shape \[2, 6\], got \[2, 5\]$"):
        fwd(mi=mi[:, :-1])
    with pytest.raises(ValueError, match=r"^media_index: value 5 at \[0, 0\] is outside 0\.\.2$"):
        fwd(mi=mi + 5)  # index > n_media
    with pytest.raises(ValueError, match=r"^latents_per_media: 3 does not divide the 8 rows of k$"):
        fwd(P=3)
    with pytest.raises(ValueError, match=r"^latents_per_media: must be >= 1, got 0$"):
        fwd(P=0)
    with pytest.raises(ValueError, match=r"^out: expected shape \[2, 2, 6, 8\], got \[2, 2, 6, 9\]$"):
        fwd(out=torch.empty(B, H, T, D + 1))

    out, lse = media_fwd(q, k, v, mi, P, 0.5)

    def bwd(dout=out, dk=None):
        dk = torch.empty(k.shape) if dk is None else dk
        _C.media_cross_attention_backward_cpu(dl(q), dl(k), dl(v), dl(mi), P, dl(out), dl(lse), dl(dout), 0.5,
                                              dl(torch.empty(q.shape)), dl(dk), dl(torch.empty(v.shape)), 1)

    bwd()
    with pytest.raises(ValueError, match=r"^dout: unsupported dtype float64, expected one of: float32 float16 bfloat16$"):
        bwd(dout=out.double())
    with pytest.raises(ValueError, match=r"^dk: expected a contiguous tensor$"):
        bwd(dk=torch.empty(k.shape).transpose(-1, -2).contiguous().transpose(-1, -2))


# ---------------------------------------------------------------------------------------
# Output rounding: the f16/bf16 kernels compute exactly what the f32 kernel computes on the
# upcast inputs, then round once, so their output must equal torch's round-to-nearest-even cast
# of the f32 kernel's output bit for bit (normals, subnormals and ties alike).
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_output_rounding_is_nearest_even(dtype):
    gen = torch.Generator().manual_seed(7)
    B, H, L, D = 1, 2, 64, 64
    lo, hi = (-27, 15.99) if dtype == torch.float16 else (-135, 127)
    # One magnitude per column (shared by the 3 keys) spanning the dtype's exponent range, so the
    # outputs (convex combinations of the values) span it too, subnormals included. (They cannot
    # exceed the largest finite value, so the overflow-to-inf path is not reachable here.)
    mag = torch.pow(2.0, torch.empty(1, 1, 1, D).uniform_(lo, hi, generator=gen))
    v = (torch.randn(B, H, 3, D, generator=gen).sign() * mag).to(dtype)
    q = torch.randn(B, H, L, D, generator=gen).to(dtype)
    k = torch.randn(B, H, 3, D, generator=gen).to(dtype)
    km, vm, kl, vl = k[:, :, :2], v[:, :, :2], k[:, :, 2:], v[:, :, 2:]
    out, _ = perceiver_fwd(q, km, vm, kl, vl, 0.3)
    out32, _ = perceiver_fwd(*(t.float() for t in (q, km, vm, kl, vl)), 0.3)
    assert torch.equal(out.view(torch.int16), out32.to(dtype).view(torch.int16))

    mi = torch.ones(B, L, dtype=torch.int64)
    mi[:, :5] = 0
    out, _ = media_fwd(q, k, v, mi, 3, 0.3)
    out32, _ = media_fwd(q.float(), k.float(), v.float(), mi, 3, 0.3)
    assert torch.equal(out.view(torch.int16), out32.to(dtype).view(torch.int16))


@pytest.mark.parametrize("op", ["perceiver", "media"])
def test_torch_backend_under_autocast_keeps_fp32_accumulation(op):
    """The torch backend is the reference math: an enclosing autocast must not turn its fp32
    accumulation into bf16 (it used to overflow on the -finfo(fp32).max mask fill)."""
    from fmkit.ops import media_cross_attention, perceiver_attention

    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 9, 16, generator=g)
    if op == "perceiver":
        kv = [torch.randn(2, 4, n, 16, generator=g) for n in (12, 12, 9, 9)]
        run = lambda: perceiver_attention(q, *kv, backend="torch")  # noqa: E731
    else:
        k, v = torch.randn(2, 4, 6, 16, generator=g), torch.randn(2, 4, 6, 16, generator=g)
        media_index = torch.tensor([[0, 1, 1, 2, 2, 2, 3, 3, 0], [1] * 9])
        run = lambda: media_cross_attention(q, k, v, media_index, latents_per_media=2, backend="torch")  # noqa: E731
    expected = run()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = run()
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
