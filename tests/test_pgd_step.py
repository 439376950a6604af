"""fmkit.ops.pgd_step_ against the torchattacks formulas (spec adversarial.md §2.5 items 1-5)."""
import math

import numpy as np
import pytest
import torch
from _backends import device_of, placements

from fmkit.ops import _backend
from fmkit.ops.pgd_step import pgd_step_

HAS_CUDA = torch.cuda.is_available()
# (backend, device): on a GPU machine triton runs on CUDA tensors (tests/_backends.py), with the
# same assertions against the oracles evaluated on the same device.
BACKENDS = placements("pgd_step_", "cpu", "torch", "triton")
# norm="l1" has only the torch formulas: it runs under "torch" (and "auto"); other names raise.
NORM_BACKENDS = [pytest.param(norm, *p.values, id=f"{norm}-{p.id}") for norm in ("linf", "l2", "l1")
                 for p in BACKENDS if norm != "l1" or p.values[0] == "torch"]


# ---- the oracle: torchattacks' PGD / PGDL2 step, written out op by op (per-sample eps/alpha broadcast) ----

def _bcast(v, x):
    return v.view((-1,) + (1,) * (x.dim() - 1)) if isinstance(v, torch.Tensor) else v


def oracle_linf(x, g, x0, eps, alpha, lo=0.0, hi=1.0):
    e, a = _bcast(eps, x), _bcast(alpha, x)
    adv = x + a * g.sign()
    delta = torch.clamp(adv - x0, min=-e, max=e)
    return torch.clamp(x0 + delta, min=lo, max=hi)


def oracle_l2(x, g, x0, eps, alpha, lo=0.0, hi=1.0):
    B = x.shape[0]
    x, g, x0 = x.double(), g.double(), x0.double()
    e, a = _bcast(eps, x), _bcast(alpha, x)
    gn = torch.norm(g.view(B, -1), p=2, dim=1) + 1e-10
    adv = x + a * g / gn.view((-1,) + (1,) * (x.dim() - 1))
    delta = adv - x0
    dn = torch.norm(delta.view(B, -1), p=2, dim=1)
    eps_b = eps.double() if isinstance(eps, torch.Tensor) else torch.full((B,), float(eps), dtype=torch.float64, device=x.device)
    factor = torch.min(eps_b / dn, torch.ones_like(dn))
    delta = delta * factor.view((-1,) + (1,) * (x.dim() - 1))
    return torch.clamp(x0 + delta, min=lo, max=hi)


def oracle_l2_advertorch(x, g, x0, eps, alpha, lo=0.0, hi=1.0):
    """advertorch order: step, clip to the box, then project (the opposite of ours)."""
    B = x.shape[0]
    x, g, x0 = x.double(), g.double(), x0.double()
    gn = torch.norm(g.view(B, -1), p=2, dim=1).view(-1, *([1] * (x.dim() - 1)))
    delta = (x - x0) + alpha * g / gn
    delta = torch.clamp(x0 + delta, lo, hi) - x0
    dn = torch.norm(delta.view(B, -1), p=2, dim=1).view(-1, *([1] * (x.dim() - 1)))
    return x0 + delta * torch.clamp(eps / dn, max=1.0)


def _inputs(shape, dtype=torch.float32, seed=0, eps=8 / 255, start="linf", device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.rand(shape, generator=gen)
    x = (x0 + (torch.rand(shape, generator=gen) * 2 - 1) * eps).clamp(0, 1)
    g = torch.randn(shape, generator=gen)
    g[torch.rand(shape, generator=gen) < 0.05] = 0  # sign(0) = 0 must hold
    return x.to(device, dtype), g.to(device, dtype), x0.to(device, dtype)


def _run(x, g, x0, backend, **kw):
    out = x.clone()
    pgd_step_(out, g, x0, backend=backend, **kw)
    return out


SHAPES = [(4, 3, 16, 16), (1, 3, 9, 7), (3, 5, 7), (2, 2, 3, 4, 5), (5, 4100)]


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_linf_bitwise_fp32(backend, device, shape):
    x, g, x0 = _inputs(shape, device=device)
    out = _run(x, g, x0, backend, eps=8 / 255, step_size=2 / 255)
    assert torch.equal(out, oracle_linf(x, g, x0, 8 / 255, 2 / 255))
    # per-sample tensors
    B = shape[0]
    eps = torch.linspace(1 / 255, 16 / 255, B, device=device)
    alpha = torch.linspace(0.5 / 255, 4 / 255, B, device=device)
    out = _run(x, g, x0, backend, eps=eps, step_size=alpha)
    assert torch.equal(out, oracle_linf(x, g, x0, eps, alpha))


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_l2_matches_torchattacks(backend, device, shape):
    x, g, x0 = _inputs(shape, eps=0.3, device=device)
    for eps, alpha in ((0.5, 0.2), (0.05, 0.2), (math.inf, 0.2)):
        out = _run(x, g, x0, backend, eps=eps, step_size=alpha, norm="l2")
        ref = oracle_l2(x, g, x0, eps, alpha).float()
        torch.testing.assert_close(out, ref, rtol=0, atol=2e-6)


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_l2_order_differs_from_advertorch(backend, device):
    # x0 near the top of the box, a large step pushing out of it: clipping before projecting
    # (advertorch) leaves a smaller delta to project than projecting first (torchattacks / ours).
    B, n = 2, 64
    x0 = torch.full((B, n), 0.9, device=device)
    x = x0.clone()
    g = torch.ones(B, n, device=device)
    g[:, : n // 2] = -1.0
    g[:, n // 2:] = 3.0
    eps, alpha = 0.5, 2.0
    out = _run(x, g, x0, backend, eps=eps, step_size=alpha, norm="l2")
    ours = oracle_l2(x, g, x0, eps, alpha).float()
    theirs = oracle_l2_advertorch(x, g, x0, eps, alpha).float()
    torch.testing.assert_close(out, ours, rtol=0, atol=2e-6)
    assert (ours - theirs).abs().max() > 1e-2


@pytest.mark.parametrize("norm, backend, device", NORM_BACKENDS)
def test_per_sample_equals_alone(backend, device, norm):
    x, g, x0 = _inputs((4, 3, 8, 8), eps=0.1, device=device)
    eps = torch.tensor([0.01, 0.1, math.inf, 0.0], device=device)
    alpha = torch.tensor([0.005, 0.5, 0.02, 0.3], device=device)
    out = _run(x, g, x0, backend, eps=eps, step_size=alpha, norm=norm)
    for b in range(4):
        alone = _run(x[b:b + 1], g[b:b + 1], x0[b:b + 1], backend, eps=float(eps[b]), step_size=float(alpha[b]),
                     norm=norm)
        if norm == "linf":
            assert torch.equal(out[b:b + 1], alone)
        else:
            torch.testing.assert_close(out[b:b + 1], alone, rtol=0, atol=1e-6)


@pytest.mark.parametrize("norm, backend, device", NORM_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_inactive_bit_identical(backend, device, norm, dtype):
    x, g, x0 = _inputs((5, 3, 6, 6), dtype=dtype, eps=0.1, device=device)
    active = torch.tensor([True, False, True, False, False], device=device)
    out = _run(x, g, x0, backend, eps=0.05, step_size=0.02, norm=norm, active=active)
    assert torch.equal(out[~active], x[~active])
    assert not torch.equal(out[active], x[active])


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_eps_inf_unbounded(backend, device, norm):
    x, g, x0 = _inputs((3, 2, 5, 5), eps=0.0, device=device)
    out = _run(x, g, x0, backend, eps=math.inf, step_size=5.0, norm=norm, clamp=None)
    if norm == "linf":
        assert torch.equal(out, x0 + ((x + 5.0 * g.sign()) - x0))
    else:
        step = 5.0 * g / (g.flatten(1).norm(dim=1) + 1e-10).view(-1, 1, 1, 1)
        torch.testing.assert_close(out, x + step, rtol=0, atol=1e-5)
        assert ((out - x0).flatten(1).norm(dim=1) > 4.9).all()


@pytest.mark.parametrize("norm, backend, device", NORM_BACKENDS)
@pytest.mark.parametrize("clamp", [(0.0, 1.0), (0.2, 0.7), (0.5, 0.5)])
def test_invariants_over_steps(backend, device, norm, clamp):
    lo, hi = clamp
    eps = {"linf": 8 / 255, "l2": 0.5, "l1": 2.0}[norm]
    x, g, x0 = _inputs((4, 3, 7, 7), eps=0.0, device=device)
    x0 = x0.clamp(lo, hi)
    x = x0.clone()
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        g = torch.randn(x.shape, generator=gen).to(device)
        pgd_step_(x, g, x0, eps=eps, step_size=eps / 2, norm=norm, clamp=clamp, backend=backend)
        assert x.min() >= lo and x.max() <= hi
        d = (x - x0).flatten(1)
        if norm == "linf":
            assert d.abs().max() <= eps
        elif norm == "l2":
            assert (d.norm(dim=1) <= eps * (1 + 1e-5)).all()
        else:
            assert (d.abs().sum(1) <= eps * (1 + 1e-5)).all()


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_sign_zero(backend, device):
    x0 = torch.full((2, 8), 0.5, device=device)
    x = x0.clone()
    g = torch.zeros(2, 8, device=device)
    g[:, 0] = 1.0
    g[:, 1] = -1.0
    out = _run(x, g, x0, backend, eps=0.1, step_size=0.05).cpu()
    assert torch.equal(out[:, 2:], x[:, 2:].cpu())
    assert torch.equal(out[:, 0], torch.full((2,), 0.55)) and torch.equal(out[:, 1], torch.full((2,), 0.45))


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_noncontiguous(backend, device, norm):
    x, g, x0 = _inputs((3, 4, 5, 6), eps=0.1, device=device)
    g_nc = g.transpose(2, 3).contiguous().transpose(2, 3)  # same values, other strides
    assert not g_nc.is_contiguous()
    x_nc = x.transpose(1, 3).contiguous().transpose(1, 3)
    assert not x_nc.is_contiguous()
    out = x_nc.clone().transpose(1, 3).contiguous().transpose(1, 3)
    ret = pgd_step_(out, g_nc, x0, eps=0.05, step_size=0.02, norm=norm, backend=backend)
    assert ret is out
    ref = _run(x, g, x0, "torch", eps=0.05, step_size=0.02, norm=norm)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_dtypes(backend, device, norm, dtype):
    x, g, x0 = _inputs((3, 3, 11, 9), dtype=dtype, eps=0.1, device=device)
    eps, alpha = (8 / 255, 2 / 255) if norm == "linf" else (0.5, 0.2)
    out = _run(x, g, x0, backend, eps=eps, step_size=alpha, norm=norm)
    assert out.dtype == dtype
    oracle = oracle_linf if norm == "linf" else oracle_l2
    ref = oracle(x.float(), g.float(), x0.float(), eps, alpha).float().to(dtype)
    ulp = 2 ** -8 if dtype == torch.bfloat16 else 2 ** -11
    torch.testing.assert_close(out.float(), ref.float(), rtol=0, atol=ulp)


def test_l1_projection_exact():
    from fmkit.reference.pgd_step import project_l1_ball

    gen = torch.Generator().manual_seed(0)
    d = torch.randn(6, 50, generator=gen, dtype=torch.float64)
    eps = torch.tensor([0.5, 1.0, 100.0, math.inf, 0.0, 3.0], dtype=torch.float64)
    p = project_l1_ball(d, eps)
    for b in range(6):
        if d[b].abs().sum() <= eps[b]:
            assert torch.equal(p[b], d[b])
            continue
        assert abs(p[b].abs().sum() - eps[b]) < 1e-9
        # optimality (KKT): a single threshold theta with p = sign(d) max(|d| - theta, 0)
        nz = p[b] != 0
        theta = (d[b].abs() - p[b].abs())[nz]
        if nz.any():
            assert torch.allclose(theta, theta[0].expand_as(theta))
            assert (d[b].abs()[~nz] <= theta[0] + 1e-12).all()


def test_errors():
    x, g, x0 = _inputs((2, 3, 4, 4))
    cases = [
        (dict(grad=g[:1]), ValueError, r"grad: shape \[1, 3, 4, 4\] does not match x_adv \[2, 3, 4, 4\]"),
        (dict(x_orig=x0.double()), TypeError, r"x_orig: expected dtype float32, float16 or bfloat16, got float64; convert"),
        (dict(x_adv=x.double()), TypeError, r"x_adv: expected dtype float32, float16 or bfloat16, got float64; convert"),
        (dict(x_adv=[1.0]), TypeError, "x_adv: expected a torch.Tensor, numpy.ndarray or cupy.ndarray, got list"),
        (dict(eps=-0.1), ValueError, r"eps: expected a finite value >= 0 \(or inf\), got -0.1"),
        (dict(eps=float("nan")), ValueError, r"eps: expected a finite value >= 0 \(or inf\), got nan"),
        (dict(eps="0.1"), TypeError, "eps: expected a Python float or a \\[B\\] tensor, got str"),
        (dict(step_size=-1.0), ValueError, "step_size: expected a finite value >= 0, got -1.0"),
        (dict(eps=torch.tensor([0.1, -0.1])), ValueError, "eps: expected values >= 0"),
        (dict(step_size=torch.tensor([0.1, 0.1, 0.1])), ValueError, r"step_size: expected a Python float or a tensor of shape \[2\], got shape \[3\]"),
        (dict(clamp=(1.0, 0.0)), ValueError, r"clamp: expected low <= high, got \(1.0, 0.0\)"),
        (dict(norm="l3"), ValueError, r"norm: expected one of \('linf', 'l2', 'l1'\), got 'l3'"),
        (dict(active=torch.ones(3, dtype=torch.bool)), ValueError, r"active: expected a bool tensor of shape \[2\], got shape \[3\]"),
        (dict(active=torch.ones(2)), TypeError, r"active: expected a bool tensor of shape \[2\], got float32"),
        (dict(norm="l1", backend="cpu"), ValueError, "backend='cpu' has no kernel for norm='l1'"),
        (dict(backend="nope"), ValueError, "backend: expected one of 'auto', 'cuda', 'triton', 'cpu', 'torch', got 'nope'"),
        (dict(backend="cuda"), ValueError, "backend='cuda' is not available for pgd_step_ on cpu tensors: the cuda backend needs CUDA tensors"),
    ]
    triton_device = device_of("pgd_step_", "triton")
    if triton_device is not None:  # on tensors triton takes here (CPU ones it refuses on a GPU machine)
        on = dict(x_adv=x.to(triton_device).clone(), grad=g.to(triton_device), x_orig=x0.to(triton_device))
        cases.append((dict(on, norm="l1", backend="triton"), ValueError, "backend='triton' has no kernel for norm='l1'"))
    for over, error, match in cases:
        kw = dict(x_adv=x.clone(), grad=g, x_orig=x0, eps=0.1, step_size=0.01)
        kw.update(over)
        xa, ga, za = kw.pop("x_adv"), kw.pop("grad"), kw.pop("x_orig")
        with pytest.raises(error, match=match):
            pgd_step_(xa, ga, za, **kw)
    # tensor values are not checked with validate=False (graph-safe path): runs
    pgd_step_(x.clone(), g, x0, eps=torch.tensor([0.1, 0.2]), step_size=0.01, validate=False)
    with pytest.warns(DeprecationWarning, match="pgd_step_: check_values= is deprecated"):
        pgd_step_(x.clone(), g, x0, eps=torch.tensor([0.1, 0.2]), step_size=0.01, check_values=False)


def test_numpy_arrays_are_updated_in_place():
    x, g, x0 = _inputs((2, 3, 4, 4))
    expected = pgd_step_(x.clone(), g, x0, eps=0.1, step_size=0.01)
    xa = x.numpy().copy()
    out = pgd_step_(xa, g.numpy(), x0.numpy(), eps=0.1, step_size=0.01)
    assert out is xa
    np.testing.assert_array_equal(xa, expected.numpy())


def test_compiled_cpu_kernel_thread_independent():
    if "cpu" not in _backend.compiled_backends():
        pytest.skip("fmkit._C not built")
    x, g, x0 = _inputs((2, 3, 64, 64), eps=0.1)  # B < threads path and B >= threads path
    outs = []
    for threads in (1, 2, 3):
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            outs.append(_run(x, g, x0, "cpu", eps=0.3, step_size=0.5, norm="l2"))
        finally:
            torch.set_num_threads(old)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


# ---- GPU ----

GPU_BACKENDS = ["cuda", "triton", "torch"]


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("shape", SHAPES + [(8, 3, 224, 224)])
def test_gpu_matches_oracle(backend, shape):
    if backend == "cuda" and "cuda" not in _backend.compiled_backends():
        pytest.skip("fmkit built without CUDA kernels")
    x, g, x0 = (t.cuda() for t in _inputs(shape))
    B = shape[0]
    eps = torch.linspace(1 / 255, 16 / 255, B, device="cuda")
    active = torch.arange(B, device="cuda") % 3 != 1
    out = _run(x, g, x0, backend, eps=eps, step_size=2 / 255, active=active)
    ref = torch.where(active.view(-1, *([1] * (x.dim() - 1))), oracle_linf(x, g, x0, eps, 2 / 255), x)
    assert torch.equal(out, ref)
    out = _run(x, g, x0, backend, eps=0.5, step_size=0.2, norm="l2", active=active)
    ref = torch.where(active.view(-1, *([1] * (x.dim() - 1))), oracle_l2(x, g, x0, 0.5, 0.2).float(), x)
    torch.testing.assert_close(out, ref, rtol=0, atol=2e-6)
    for dtype in (torch.float16, torch.bfloat16):
        xh, gh, zh = x.to(dtype), g.to(dtype), x0.to(dtype)
        for norm in ("linf", "l2"):
            out = _run(xh, gh, zh, backend, eps=0.5, step_size=0.2, norm=norm)
            ref = _run(xh, gh, zh, "torch", eps=0.5, step_size=0.2, norm=norm)
            torch.testing.assert_close(out.float(), ref.float(), rtol=0, atol=2 ** -7)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_cuda_graph_capture(backend, norm):
    if backend == "cuda" and "cuda" not in _backend.compiled_backends():
        pytest.skip("fmkit built without CUDA kernels")
    x, _, x0 = (t.cuda() for t in _inputs((4, 3, 32, 32)))
    w = torch.randn_like(x)
    eps = torch.tensor([0.01, 0.03, 0.5, math.inf], device="cuda")
    active = torch.tensor([True, True, False, True], device="cuda")

    def loop(xa, k=5):
        for _ in range(k):
            grad = torch.sin(xa * w)  # a deterministic "gradient" closure
            pgd_step_(xa, grad, x0, eps=eps, step_size=0.01, norm=norm, active=active, backend=backend,
                      check_values=False)

    eager = x.clone()
    loop(eager)
    static = x.clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        loop(static.clone())  # warm-up (Triton compilation) outside the capture
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loop(static)
    static.copy_(x)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(static, eager)


def _gpu_backend_or_skip(backend):
    if backend == "cuda" and "cuda" not in _backend.compiled_backends():
        pytest.skip("fmkit built without CUDA kernels")
    if backend == "triton" and not _backend.triton_available():
        pytest.skip("triton not available")


def _offset_copy(t, offset):
    """t's values in a contiguous tensor whose data pointer is `offset` elements past an aligned one."""
    buf = torch.empty(t.numel() + offset, dtype=t.dtype, device=t.device)
    out = buf[offset:].view(t.shape)
    out.copy_(t)
    return out


# [B, N] shapes for the vectorised kernels: N below / not a multiple of the 16-byte vector width
# (vectors straddling samples, scalar head / tail), one element per sample, several reduction
# chunks with a ragged last one, and B = 1 with N large enough to grow the reduction chunk.
GPU_EDGE_SHAPES = [(1, 1), (7, 1), (5, 3), (9, 7), (3, 13), (4, 1000), (3, 4100), (2, 8193), (2, 3 * 64 * 64 + 5),
                   (1, 150528), (1, 9_000_003)]


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("shape", GPU_EDGE_SHAPES)
@pytest.mark.parametrize("offset", [0, 1, 3])
def test_gpu_edge_shapes_fp32(backend, shape, offset):
    _gpu_backend_or_skip(backend)
    if offset and shape[0] * shape[1] > 10 ** 6:
        pytest.skip("the large shape is covered aligned")
    B = shape[0]
    x, g, x0 = (t.cuda() for t in _inputs(shape, eps=0.1))
    # offset 1: every pointer misaligned (scalar path); offset 3: only grad is misaligned
    if offset == 1:
        x, g, x0 = (_offset_copy(t, 1) for t in (x, g, x0))
    elif offset == 3:
        g = _offset_copy(g, 3)
    eps = torch.linspace(0.05, 0.3, B, device="cuda")
    if B > 2:
        eps[-1] = math.inf
    if B > 3:
        eps[0] = 0.0
    alpha = torch.linspace(0.01, 0.2, B, device="cuda")
    for act in (None, torch.arange(B, device="cuda") % 3 != 1):
        mask = (act if act is not None else torch.ones(B, dtype=torch.bool, device="cuda")).view(-1, 1)
        out = x.clone()
        pgd_step_(out, g, x0, eps=eps, step_size=alpha, active=act, backend=backend, check_values=False)
        assert torch.equal(out, torch.where(mask, oracle_linf(x, g, x0, eps, alpha), x))
        out = x.clone()
        pgd_step_(out, g, x0, eps=eps, step_size=alpha, norm="l2", active=act, backend=backend, check_values=False)
        ref = torch.where(mask, oracle_l2(x, g, x0, eps, alpha).float(), x)
        torch.testing.assert_close(out, ref, rtol=0, atol=2e-6)
        assert torch.equal(out[~mask.view(-1)], x[~mask.view(-1)])


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (9, 7), (3, 13), (2, 8193), (4, 3 * 32 * 32), (1, 9_000_003)])
@pytest.mark.parametrize("offset", [0, 1])
def test_gpu_edge_shapes_half(backend, dtype, shape, offset):
    _gpu_backend_or_skip(backend)
    if offset and shape[0] * shape[1] > 10 ** 6:
        pytest.skip("the large shape is covered aligned")
    B = shape[0]
    x, g, x0 = (t.cuda().to(dtype) for t in _inputs(shape, eps=0.1))
    if offset:
        x, g, x0 = (_offset_copy(t, offset) for t in (x, g, x0))
    act = torch.arange(B, device="cuda") % 2 == 0
    for norm, eps, alpha in (("linf", 8 / 255, 2 / 255), ("l2", 0.5, 0.2), ("l2", math.inf, 0.2)):
        out = x.clone()
        pgd_step_(out, g, x0, eps=eps, step_size=alpha, norm=norm, active=act, backend=backend)
        ref = x.clone()
        pgd_step_(ref, g, x0, eps=eps, step_size=alpha, norm=norm, active=act, backend="torch")
        torch.testing.assert_close(out.float(), ref.float(), rtol=0, atol=2 ** -7)
        assert torch.equal(out[~act], x[~act])


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_l2_deterministic_and_noncontiguous(backend):
    _gpu_backend_or_skip(backend)
    x, g, x0 = (t.cuda() for t in _inputs((6, 3, 33, 35), eps=0.1))
    outs = [_run(x, g, x0, backend, eps=0.3, step_size=0.5, norm="l2") for _ in range(3)]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    x_nc = x.transpose(2, 3).contiguous().transpose(2, 3)
    g_nc = g.transpose(1, 3).contiguous().transpose(1, 3)
    for norm in ("linf", "l2"):
        out = x_nc.clone()
        pgd_step_(out, g_nc, x0, eps=0.3, step_size=0.5, norm=norm, backend=backend)
        torch.testing.assert_close(out, _run(x, g, x0, backend, eps=0.3, step_size=0.5, norm=norm), rtol=0, atol=0)
