"""fmkit.ops.gaussian_kde: every backend against a direct float64 formula."""
import math

import numpy as np
import pytest
import torch
from _backends import placements

from fmkit.ops import _backend, gaussian_kde
from fmkit.reference.gaussian_kde import gaussian_kde_reference

# On a GPU machine triton runs on CUDA tensors (tests/_backends.py), with the same assertions.
BACKENDS = placements("gaussian_kde", "cpu", "torch", "triton")


def direct(points, h, queries):
    p, x, h = (np.asarray(a, dtype=np.float64) for a in (points, queries, h))
    z = (x[:, None, :] - p[None, :, :]) / h
    k = np.exp(-0.5 * (z**2).sum(-1)) / ((2 * math.pi) ** (p.shape[1] / 2) * np.prod(h))
    return k.mean(1)


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("n,m,q", [(1, 1, 2), (37, 5, 2), (300, 129, 2), (50, 17, 1), (40, 9, 3)])
def test_matches_direct_formula(backend, device, n, m, q):
    g = torch.Generator().manual_seed(n * 7 + m)
    pts = torch.rand(n, q, generator=g, dtype=torch.float64)
    xs = torch.rand(m, q, generator=g, dtype=torch.float64)
    h = 0.05 + torch.rand(q, generator=g, dtype=torch.float64) * 0.2
    out = gaussian_kde(pts.to(device), h, xs.to(device), backend=backend)
    assert out.dtype == torch.float64 and out.shape == (m,) and out.device.type == device
    # A GPU's exp differs from the CPU's in the last bits (test_gpu_matches_direct's bound).
    rtol = 1e-12 if device == "cpu" else 1e-11
    np.testing.assert_allclose(out.cpu().numpy(), direct(pts, h, xs), rtol=rtol, atol=1e-300)


def test_reference_chunks_like_one_block():
    g = torch.Generator().manual_seed(3)
    pts = torch.rand(5000, 2, generator=g, dtype=torch.float64)
    xs = torch.rand(3000, 2, generator=g, dtype=torch.float64)
    h = torch.tensor([0.1, 0.02], dtype=torch.float64)
    np.testing.assert_allclose(gaussian_kde_reference(pts, h, xs).numpy(), direct(pts, h, xs), rtol=1e-11)


def test_strided_queries_and_float32_inputs():
    g = torch.Generator().manual_seed(4)
    pts = torch.rand(64, 2, generator=g)
    xs = torch.rand(2, 20, generator=g).T  # non-contiguous
    h = (0.1, 0.2)
    np.testing.assert_allclose(gaussian_kde(pts, h, xs).numpy(), direct(pts, h, xs), rtol=1e-6)


@pytest.mark.parametrize(
    "args, match",
    [
        ((torch.rand(5), (0.1,), torch.rand(3, 1)), r"points: expected a 2-D \[n, q\] array"),
        ((torch.rand(5, 2), (0.1, 0.1), torch.rand(3, 3)), r"queries: expected shape \[m, 2\]"),
        ((torch.rand(5, 2), (0.1,), torch.rand(3, 2)), r"bandwidth: expected shape \[2\]"),
        ((torch.rand(5, 2), (0.1, 0.0), torch.rand(3, 2)), "bandwidth: must be finite and positive"),
        ((torch.full((5, 2), float("nan")), (0.1, 0.1), torch.rand(3, 2)), "points: contains NaN or inf"),
    ],
)
def test_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        gaussian_kde(*args)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_gpu_matches_direct(backend):
    g = torch.Generator().manual_seed(5)
    pts = torch.rand(3000, 2, generator=g, dtype=torch.float64)
    xs = torch.rand(777, 2, generator=g, dtype=torch.float64)
    h = torch.tensor([0.05, 0.1], dtype=torch.float64)
    out = gaussian_kde(pts.cuda(), h, xs.cuda(), backend=backend)
    np.testing.assert_allclose(out.cpu().numpy(), direct(pts, h, xs), rtol=1e-11)


def test_backend_cuda_is_an_error_not_triton():
    """Issue 11: gaussian_kde has no CUDA kernel; backend='cuda' used to run Triton silently."""
    pts = torch.rand(5, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="backend='cuda': gaussian_kde has no cuda kernel; its backends are 'auto', 'triton', 'cpu', 'torch'"):
        gaussian_kde(pts, [0.1, 0.1], pts, backend="cuda")


def test_numpy_in_numpy_out():
    rng = np.random.default_rng(0)
    pts, xs = rng.random((40, 2)), rng.random((7, 2))
    out = gaussian_kde(pts, np.array([0.1, 0.2]), xs)
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    np.testing.assert_allclose(out, gaussian_kde(torch.from_numpy(pts), [0.1, 0.2], torch.from_numpy(xs)).numpy())
