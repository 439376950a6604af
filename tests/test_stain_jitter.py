"""fmkit.ops.stain_jitter: every backend against the float64 reference, the reference against the
spec's worked numbers (§1.2.3, §1.3 item 2), the HED round trip, gradients and bad input."""
import numpy as np
import pytest
import torch
from _backends import device_of, placements

from fmkit.ops import _backend, stain_jitter
from fmkit.reference.stain_jitter import hed_matrices, hed_to_rgb, rgb_to_hed, stain_jitter_reference

# The Triton interpreter takes ~0.3 s a call: its full grid runs in the slow set, one case stays fast.
# On a GPU machine triton runs on CUDA tensors (tests/_backends.py), in the default set.
BACKENDS = placements("stain_jitter", "cpu", "torch", "triton", slow_on_cpu=("triton",))


def _batch(B, H, W, dtype, seed, sigma=0.1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, 3, H, W, generator=g)
    x = (x * 255).round().to(torch.uint8) if dtype == torch.uint8 else x.to(dtype)
    alpha = 1 + (torch.rand(B, 3, generator=g) * 2 - 1) * sigma
    beta = (torch.rand(B, 3, generator=g) * 2 - 1) * sigma
    return x, alpha, beta


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("mode", ["od", "release"])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("B,H,W", [(1, 1, 1), (1, 7, 5), (3, 9, 17), (2, 16, 300)])
def test_backends_match_reference(backend, device, mode, dtype, B, H, W):
    _check_against_reference(backend, mode, dtype, B, H, W, device)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("W", [96, 101])
def test_cpu_batch_above_a_megabyte(dtype, W):
    # >= 1 MiB of float32 output with 64-byte aligned rows (W = 96) takes the streaming-store path;
    # W = 101 leaves a tail after the vector part of every row.
    _check_against_reference("cpu", "release", dtype, 12, 96, W)


def test_cpu_extreme_parameters_match_reference():
    # uint8 at 4-lane SIMD levels runs per-image product tables; images whose exponents could leave
    # the float range (large alpha / beta) must take the exp path and still match the reference.
    x, a, b = _batch(4, 5, 24, torch.uint8, seed=11)
    a[1], b[2], a[3], b[3] = 9.0, -6.0, 0.2, 4.0
    out = stain_jitter(x, a, b, mode="od", backend="cpu")
    ref = stain_jitter_reference(x, a, b, "od")
    assert (out.int() - ref.int()).abs().max() <= 1


@pytest.mark.skipif(device_of("stain_jitter", "triton") is None, reason="triton runs on no device here")
def test_triton_fast_case():
    device = device_of("stain_jitter", "triton")
    _check_against_reference("triton", "od", torch.uint8, 2, 5, 9, device)
    _check_against_reference("triton", "release", torch.float32, 1, 3, 7, device)


def _check_against_reference(backend, mode, dtype, B, H, W, device="cpu"):
    """`backend` on `device` tensors against the float64 reference on the CPU."""
    x, a, b = _batch(B, H, W, dtype, seed=B * 100 + H + W)
    out = stain_jitter(x.to(device), a.to(device), b.to(device), mode=mode, backend=backend)
    assert out.device.type == device
    out = out.cpu()
    ref = stain_jitter_reference(x, a, b, mode)
    assert out.dtype == dtype and out.shape == x.shape
    if dtype == torch.uint8:
        assert (out.int() - ref.int()).abs().max() <= 1
        assert (out != ref).float().mean() < 0.01  # codes differ only next to a rounding tie
    else:
        torch.testing.assert_close(out, ref, atol=2e-6, rtol=0)


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_non_contiguous_inputs(backend, device, dtype):
    x, a, b = (t.to(device) for t in _batch(4, 11, 13, dtype, seed=5))  # the views are made on `device`
    views = [x.permute(0, 1, 3, 2), x[:, :, ::2, 1::3], x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2),
             x[::2, [2, 0, 1]]]
    for v in views:
        n = v.shape[0]
        out = stain_jitter(v, a[:n], b[:n], backend=backend)
        ref = stain_jitter_reference(v.cpu().contiguous(), a[:n].cpu(), b[:n].cpu())
        assert out.is_contiguous() and out.device.type == device
        assert (out.cpu().double() - ref.double()).abs().max() <= (1 if dtype == torch.uint8 else 2e-6)


def test_hed_round_trip_is_identity_in_float64():
    g = torch.Generator().manual_seed(0)
    p = torch.rand(2, 3, 8, 8, generator=g, dtype=torch.float64)
    for mode in ("od", "release"):
        back = hed_to_rgb(rgb_to_hed(p, mode), mode)
        assert (back - p).abs().max() < 1e-6
        same = stain_jitter_reference(p, torch.ones(2, 3), torch.zeros(2, 3), mode)
        assert (same - p).abs().max() < 1e-6
    m, m_inv = hed_matrices()
    torch.testing.assert_close(m @ m_inv, torch.eye(3, dtype=torch.float64), atol=1e-14, rtol=0)


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("mode", ["od", "release"])
def test_identity_parameters_reproduce_float32_input(backend, device, mode):
    x, _, _ = _batch(2, 5, 7, torch.float32, seed=1)
    x = x.to(device)
    out = stain_jitter(x, torch.ones(2, 3, device=device), torch.zeros(2, 3, device=device), mode=mode,
                       backend=backend)
    assert (out - x).abs().max() < 1e-5


def test_spec_white_pixel_values():
    white = torch.ones(1, 3, 1, 1, dtype=torch.float64)
    for a in (0.9, 0.95, 1.05):  # release: white under a uniform alpha is 255^(alpha - 1), clipped at 1
        out = stain_jitter_reference(white, torch.full((1, 3), a), torch.zeros(1, 3), "release")
        torch.testing.assert_close(out.flatten(), torch.full((3,), min(1.0, 255 ** (a - 1)), dtype=torch.float64),
                                   atol=1e-5, rtol=0)
        od = stain_jitter_reference(white, torch.full((1, 3), a), torch.zeros(1, 3), "od")
        assert (od - 1).abs().max() < 1e-5  # white has zero optical density
    beta_h = torch.tensor([[0.1, 0.0, 0.0]])
    for mode in ("od", "release"):
        out = stain_jitter_reference(white, torch.ones(1, 3), beta_h, mode).flatten()
        torch.testing.assert_close(out, torch.tensor([0.94, 0.93, 0.97], dtype=torch.float64), atol=6e-3, rtol=0)


def test_beta_zero_scales_stain_concentrations_exactly():
    x, a, _ = _batch(2, 4, 4, torch.float64, seed=2)
    s = rgb_to_hed(x.clamp(0.05, 1))
    out = stain_jitter_reference(x.clamp(0.05, 1), a, torch.zeros(2, 3))
    unclipped = (out > 0) & (out < 1)
    s2 = rgb_to_hed(out)
    ratio = s2 / s
    mask = unclipped.all(1)
    torch.testing.assert_close(ratio[mask], a[:, None, None, :].expand_as(ratio)[mask].double(), atol=1e-9, rtol=1e-9)


@pytest.mark.slow
def test_gradcheck_float64():
    g = torch.Generator().manual_seed(3)
    x = (0.2 + 0.6 * torch.rand(2, 3, 3, 4, generator=g, dtype=torch.float64)).requires_grad_()
    a = (1 + 0.05 * torch.rand(2, 3, generator=g, dtype=torch.float64)).requires_grad_()
    b = (0.05 * torch.rand(2, 3, generator=g, dtype=torch.float64)).requires_grad_()
    for mode in ("od", "release"):
        assert torch.autograd.gradcheck(lambda x, a, b: stain_jitter(x, a, b, mode=mode), (x, a, b))
    with pytest.raises(ValueError, match="backend='cpu'.*require grad"):
        stain_jitter(x.float().detach().requires_grad_(), a, b, backend="cpu")


def test_numpy_in_numpy_out():
    x, a, b = _batch(2, 5, 6, torch.uint8, seed=4)
    out = stain_jitter(x.numpy(), a.numpy(), b.numpy())
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - stain_jitter_reference(x, a, b).numpy().astype(int)).max() <= 1


def test_compiled_path_through_registered_op():
    x, a, b = _batch(2, 5, 6, torch.float32, seed=6)
    out = torch.ops.fmkit.stain_jitter(x, a.double(), b.double(), "od", 1e-6, "cpu")
    torch.testing.assert_close(out, stain_jitter(x, a, b), atol=0, rtol=0)


@pytest.mark.parametrize(
    "images, alpha, beta, kw, err, match",
    [
        (torch.rand(3, 4, 4), torch.ones(1, 3), torch.zeros(1, 3), {}, ValueError, r"images: expected a 4-D"),
        (torch.rand(1, 4, 4, 4), torch.ones(1, 3), torch.zeros(1, 3), {}, ValueError, "images: expected 3 .RGB."),
        (torch.rand(1, 3, 4, 4).half(), torch.ones(1, 3), torch.zeros(1, 3), {}, TypeError, "images: expected dtype"),
        (torch.full((1, 3, 2, 2), float("nan")), torch.ones(1, 3), torch.zeros(1, 3), {}, ValueError,
         "images: contains NaN"),
        (torch.full((1, 3, 2, 2), 1.5), torch.ones(1, 3), torch.zeros(1, 3), {}, ValueError, r"must lie in \[0, 1\]"),
        (torch.rand(2, 3, 4, 4), torch.ones(1, 3), torch.zeros(2, 3), {}, ValueError,
         r"alpha: expected shape \[2, 3\]"),
        (torch.rand(2, 3, 4, 4), torch.ones(2, 3), torch.zeros(2), {}, ValueError, r"beta: expected shape \[2, 3\]"),
        (torch.rand(1, 3, 4, 4), torch.ones(1, 3, dtype=torch.int64), torch.zeros(1, 3), {}, TypeError,
         "alpha: expected a floating-point"),
        (torch.rand(1, 3, 4, 4), torch.full((1, 3), float("nan")), torch.zeros(1, 3), {}, ValueError,
         "alpha: contains NaN"),
        (torch.rand(1, 3, 4, 4), torch.ones(1, 3), torch.zeros(1, 3), {"mode": "hed"}, ValueError, "mode: expected"),
        (torch.rand(1, 3, 4, 4), torch.ones(1, 3), torch.zeros(1, 3), {"eps": 0.0}, ValueError, "eps: expected"),
        (torch.rand(1, 3, 4, 4), torch.ones(1, 3), torch.zeros(1, 3), {"backend": "cuda"}, ValueError,
         "stain_jitter has no cuda kernel"),
        ("pixels", torch.ones(1, 3), torch.zeros(1, 3), {}, TypeError, "images: expected a torch.Tensor"),
    ],
)
def test_bad_input(images, alpha, beta, kw, err, match):
    with pytest.raises(err, match=match):
        stain_jitter(images, alpha, beta, **kw)


def test_cpu_kernel_rejects_bad_arguments_itself():
    x = torch.rand(2, 3, 4, 4)
    dl = _backend.dlpack
    with pytest.raises(ValueError, match=r"coef: expected shape \[2, 12\]"):
        _backend._C.stain_jitter_cpu(dl(x), dl(torch.zeros(2, 9)), dl(torch.empty_like(x)), 1.0, 1e-6, 1)
    with pytest.raises(ValueError, match="out: unsupported dtype"):
        _backend._C.stain_jitter_cpu(dl(x), dl(torch.zeros(2, 12)), dl(torch.empty_like(x).double()), 1.0, 1e-6, 1)


def test_haematoxylin_scaling_follows_beer_lambert():
    from fmkit.reference.stain_jitter import HED_MATRIX

    od = 0.4 * np.array(HED_MATRIX[0])  # a pure-haematoxylin pixel of concentration 0.4
    x = torch.tensor(np.exp(-od), dtype=torch.float32).view(1, 3, 1, 1)
    out = stain_jitter(x, torch.tensor([[1.5, 1.0, 1.0]]), torch.zeros(1, 3)).double().flatten().numpy()
    np.testing.assert_allclose(-np.log(out + 1e-6), 1.5 * od, atol=1e-4)
