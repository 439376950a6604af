"""fmkit.triton perceiver_attention / media_cross_attention kernels against dense float64 torch
formulas (contracts: csrc/ops/perceiver_attention.h, csrc/ops/media_cross_attention.h).

The oracles are written out here on purpose: the perceiver one concatenates [km; kl] / [vm; vl]
explicitly, the media one builds the dense [T, n_media * P] mask from media_index (rows with index 0
zeroed), and gradients come from torch.autograd on those float64 formulas with a random dout.
CPU runs use the Triton interpreter (conftest sets TRITON_INTERPRET=1 without a GPU), so shapes stay
small; the gpu-marked tests run the spec's benchmark shapes (flamingo.md §1.4 / §3) on CUDA.
"""
import pytest
import torch

triton = pytest.importorskip("triton")
from fmkit.triton import media_cross_attention as tmca  # noqa: E402
from fmkit.triton import perceiver_attention as tpa  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
# Max-norm error bound relative to the oracle's largest entry: fp32 is exact-product IEEE; the
# 16-bit bounds cover the rounding of P / dS to the input dtype before the tensor-core products
# and of out to the input dtype (observed worst cases: fp32 ~7e-7, fp16 ~1e-3, bf16 ~8e-3).
REL = {torch.float32: 5e-6, torch.float16: 3e-3, torch.bfloat16: 1.6e-2}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def close(got, ref, rel, atol=1e-6, name=""):
    got, ref = got.detach().double().cpu(), ref.detach().double().cpu()
    assert got.shape == ref.shape, name
    assert torch.isfinite(got).all(), name
    if ref.numel() == 0:
        return
    err = (got - ref).abs().max().item()
    bound = rel * ref.abs().max().item() + atol
    assert err <= bound, f"{name}: max err {err:.3g} > {bound:.3g}"


def rand(shape, dtype, gen, noncontig=False):
    """Random tensor on DEV; noncontig gives a head-transposed view with a strided last dim
    (the layout of a [B, N, H, D] projection viewed as [B, H, N, D], plus a stride-2 d)."""
    B, H, N, D = shape
    if noncontig:
        x = torch.randn(B, N, H, 2 * D, generator=gen).transpose(1, 2)[..., ::2]
        assert not x.is_contiguous()
    else:
        x = torch.randn(B, H, N, D, generator=gen)
    return x.to(DEV, dtype)


# ---------------------------------------------------------------- perceiver attention

def perceiver_oracle(q, km, vm, kl, vl, scale, dout):
    ts = [t.detach().double().cpu().requires_grad_() for t in (q, km, vm, kl, vl)]
    k = torch.cat([ts[1], ts[3]], 2)
    v = torch.cat([ts[2], ts[4]], 2)
    s = scale * ts[0] @ k.transpose(-1, -2)
    out = torch.softmax(s, -1) @ v
    grads = torch.autograd.grad(out, ts, dout.detach().double().cpu())
    return out.detach(), torch.logsumexp(s, -1).detach(), grads


def check_perceiver(B, H, L, M, L2, D, dtype, seed=0, noncontig=False):
    g = torch.Generator().manual_seed(seed)
    q = rand((B, H, L, D), dtype, g, noncontig)
    km, vm = rand((B, H, M, D), dtype, g, noncontig), rand((B, H, M, D), dtype, g, noncontig)
    kl, vl = rand((B, H, L2, D), dtype, g, noncontig), rand((B, H, L2, D), dtype, g, noncontig)
    dout = rand((B, H, L, D), dtype, g, noncontig)
    scale = D ** -0.5
    out, lse = tpa.forward(q, km, vm, kl, vl, scale)
    assert out.dtype == dtype and out.is_contiguous() and lse.dtype == torch.float32
    ref_out, ref_lse, ref_grads = perceiver_oracle(q, km, vm, kl, vl, scale, dout)
    rel = REL[dtype]
    close(out, ref_out, rel, name="out")
    close(lse, ref_lse, 1e-5, atol=1e-5, name="lse")
    grads = tpa.backward(q, km, vm, kl, vl, out, lse, dout, scale)
    for name, got, ref, t in zip(("dq", "dkm", "dvm", "dkl", "dvl"), grads, ref_grads, (q, km, vm, kl, vl)):
        assert got.dtype == torch.float32 and got.is_contiguous() and got.shape == t.shape, name
        close(got, ref, rel, name=name)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B,H,L,M,L2,D", [
    (1, 2, 1, 0, 3, 16),     # one query, no media keys
    (2, 3, 5, 3, 37, 24),    # D not a power of two, latent tiles past one block
    (1, 2, 37, 40, 5, 64),   # several query blocks: per-block dK / dV partials
    (1, 1, 5, 3, 4, 8),      # D < 16: padded d lanes
])
def test_perceiver_matches_concat_oracle(B, H, L, M, L2, D, dtype):
    check_perceiver(B, H, L, M, L2, D, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_perceiver_noncontiguous(dtype):
    check_perceiver(2, 2, 17, 19, 6, 24, dtype, seed=1, noncontig=True)


def test_perceiver_latents_only_and_media_only():
    check_perceiver(1, 1, 6, 0, 20, 16, torch.float32, seed=2)   # M = 0
    check_perceiver(1, 1, 6, 20, 0, 16, torch.float32, seed=3)   # L2 = 0


def test_perceiver_no_keys():
    z = torch.zeros(1, 2, 0, 16, device=DEV)
    q = torch.randn(1, 2, 3, 16, device=DEV)
    out, lse = tpa.forward(q, z, z, z, z, 0.25)
    assert torch.equal(out, torch.zeros_like(q)) and torch.isneginf(lse).all()
    grads = tpa.backward(q, z, z, z, z, out, lse, torch.randn_like(q), 0.25)
    assert torch.equal(grads[0], torch.zeros_like(q))


# ---------------------------------------------------------------- media cross-attention

def media_oracle(q, k, v, media_index, P, scale, dout):
    ts = [t.detach().double().cpu().requires_grad_() for t in (q, k, v)]
    mi = media_index.cpu()
    key_image = torch.arange(k.shape[2]) // P + 1                  # key j belongs to image j//P + 1
    allowed = mi[:, None, :, None] == key_image[None, None, None, :]  # [B, 1, T, NK] dense mask
    s = (scale * ts[0] @ ts[1].transpose(-1, -2)).masked_fill(~allowed, float("-inf"))
    has = (mi > 0)[:, None, :, None]                             # index-0 rows: zeroed
    p = torch.softmax(s.masked_fill(~has, 0.0), -1) * has
    out = p @ ts[2]
    lse = torch.logsumexp(s, -1)
    grads = torch.autograd.grad(out, ts, dout.detach().double().cpu())
    return out.detach(), lse.detach(), grads


def check_media(B, H, T, n_media, P, D, dtype, media_index, seed=0, noncontig=False):
    g = torch.Generator().manual_seed(seed)
    q = rand((B, H, T, D), dtype, g, noncontig)
    k = rand((B, H, n_media * P, D), dtype, g, noncontig)
    v = rand((B, H, n_media * P, D), dtype, g, noncontig)
    dout = rand((B, H, T, D), dtype, g, noncontig)
    mi = media_index.to(DEV)
    scale = D ** -0.5
    out, lse = tmca.forward(q, k, v, mi, P, scale)
    assert out.dtype == dtype and out.is_contiguous() and lse.dtype == torch.float32
    ref_out, ref_lse, ref_grads = media_oracle(q, k, v, mi, P, scale, dout)
    rel = REL[dtype]
    close(out, ref_out, rel, name="out")
    zero = (mi == 0)[:, None, :].expand(B, H, T).cpu()
    assert torch.isneginf(lse.cpu()[zero]).all()
    close(lse.cpu()[~zero], ref_lse[~zero], 1e-5, atol=1e-5, name="lse")
    # Text before any image: output exactly 0 (bitwise) and no gradient into q.
    assert (out.cpu()[zero] == 0).all()
    grads = tmca.backward(q, k, v, mi, P, out, lse, dout, scale)
    for name, got, ref, t in zip(("dq", "dk", "dv"), grads, ref_grads, (q, k, v)):
        assert got.dtype == torch.float32 and got.is_contiguous() and got.shape == t.shape, name
        close(got, ref, rel, name=name)
    assert (grads[0].cpu()[zero] == 0).all()
    return grads


def cumsum_index(B, T, n_media, p_image, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.cumsum((torch.rand(B, T, generator=g) < p_image).long(), 1).clamp(max=n_media)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_media_several_images_zeros_first(dtype):
    # T = 37 (3 query blocks on CPU), P = 5, D = 24; row 0 starts with text, row 1 with an image.
    mi = torch.tensor([[0] * 4 + [1] * 10 + [2] * 3 + [3] * 20,
                       [1] * 7 + [2] * 25 + [3] * 5])
    check_media(2, 2, 37, 3, 5, 24, dtype, mi)


@pytest.mark.slow  # 8 s in the Triton interpreter; the other media tests cover each dtype quickly
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_media_p64_random_cumsum(dtype):
    mi = cumsum_index(2, 40, 3, 0.08, seed=4)
    mi[1, :6] = 0  # text before the first image
    check_media(2, 1, 40, 3, 64, 64, dtype, mi, seed=1)


def test_media_single_image():
    mi = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]])
    check_media(1, 2, 19, 1, 64, 16, torch.float32, mi, seed=2)
    check_media(1, 2, 1, 1, 5, 16, torch.float16, torch.tensor([[1]]), seed=3)  # one decode query


def test_media_all_zeros():
    grads = check_media(2, 2, 9, 2, 5, 16, torch.float32, torch.zeros(2, 9, dtype=torch.long))
    assert all((g == 0).all() for g in grads)


def test_media_unused_images_and_small_d():
    # Images 2 and 4 are never referenced (zero-padded images): their dK / dV must be exactly 0.
    mi = torch.tensor([[0, 1, 1, 1, 3, 3, 3, 3, 3, 3, 3]])
    dq, dk, dv = check_media(1, 2, 11, 4, 5, 8, torch.float32, mi, seed=5)
    for m in (2, 4):
        rows = slice((m - 1) * 5, m * 5)
        assert (dk[:, :, rows] == 0).all() and (dv[:, :, rows] == 0).all()


def test_media_non_monotone_index():
    # The contract allows any order of indices, not only cumsums.
    g = torch.Generator().manual_seed(6)
    mi = torch.randint(0, 4, (2, 23), generator=g)
    check_media(2, 1, 23, 3, 5, 16, torch.float32, mi, seed=6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_media_noncontiguous(dtype):
    base = cumsum_index(2, 2 * 21, 3, 0.15, seed=7)
    mi = base[:, ::2]  # strided media_index too
    assert not mi.is_contiguous()
    check_media(2, 2, 21, 3, 5, 24, dtype, mi, seed=7, noncontig=True)


# ---------------------------------------------------------------- CUDA benchmark shapes

def _fp32_ref_grads(fn, inputs, dout):
    ts = [t.detach().float().requires_grad_() for t in inputs]
    out = fn(*ts)
    return out.detach(), torch.autograd.grad(out, ts, dout.float())


@pytest.mark.gpu
def test_perceiver_benchmark_shape_cuda(monkeypatch):
    # §1.4 anchor: 512 images, 8 heads x 64, 64 latent queries, 256 media + 64 latent keys, bf16.
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)  # an exact fp32 reference
    B, H, L, M, L2, D = 512, 8, 64, 256, 64, 64
    g = torch.Generator(device="cuda").manual_seed(0)
    mk = lambda n: torch.randn(B, H, n, D, device="cuda", generator=g).bfloat16()  # noqa: E731
    q, km, vm, kl, vl, dout = mk(L), mk(M), mk(M), mk(L2), mk(L2), mk(L)
    scale = D ** -0.5

    def dense(q, km, vm, kl, vl):
        s = scale * q @ torch.cat([km, kl], 2).transpose(-1, -2)
        return torch.softmax(s, -1) @ torch.cat([vm, vl], 2)

    out, lse = tpa.forward(q, km, vm, kl, vl, scale)
    grads = tpa.backward(q, km, vm, kl, vl, out, lse, dout, scale)
    ref, ref_grads = _fp32_ref_grads(dense, (q, km, vm, kl, vl), dout)
    close(out, ref, 3e-2, name="out")
    for name, got, r in zip(("dq", "dkm", "dvm", "dkl", "dvl"), grads, ref_grads):
        close(got, r, 3e-2, name=name)


@pytest.mark.gpu
def test_media_benchmark_shape_cuda(monkeypatch):
    # §1.4 anchor: B = 16, 2048 text tokens, 5 images x 64 latents, 8 heads x 64, bf16.
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)  # an exact fp32 reference
    B, H, T, n_media, P, D = 16, 8, 2048, 5, 64, 64
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(B, H, T, D, device="cuda", generator=g).bfloat16()
    k = torch.randn(B, H, n_media * P, D, device="cuda", generator=g).bfloat16()
    v = torch.randn(B, H, n_media * P, D, device="cuda", generator=g).bfloat16()
    dout = torch.randn(B, H, T, D, device="cuda", generator=g).bfloat16()
    # Images start at evenly spread positions after 37 text tokens (cumsum of <image> markers).
    marks = torch.zeros(B, T, dtype=torch.long, device="cuda")
    marks[:, torch.linspace(37, T - 50, n_media).long()] = 1
    mi = marks.cumsum(1)
    scale = D ** -0.5
    allowed = mi[:, None, :, None] == (torch.arange(n_media * P, device="cuda") // P + 1)
    has = (mi > 0)[:, None, :, None]

    def dense(q, k, v):
        s = (scale * q @ k.transpose(-1, -2)).masked_fill(~allowed, float("-inf"))
        return torch.softmax(s.masked_fill(~has, 0.0), -1) * has @ v

    out, lse = tmca.forward(q, k, v, mi, P, scale)
    grads = tmca.backward(q, k, v, mi, P, out, lse, dout, scale)
    ref, ref_grads = _fp32_ref_grads(dense, (q, k, v), dout)
    close(out, ref, 3e-2, name="out")
    assert (out[(mi == 0)[:, None, :].expand(B, H, T)] == 0).all()
    for name, got, r in zip(("dq", "dk", "dv"), grads, ref_grads):
        close(got, r, 3e-2, name=name)
