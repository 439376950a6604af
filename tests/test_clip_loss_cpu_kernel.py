"""fmkit._C.contrastive_forward_cpu / contrastive_backward_cpu against dense float64 math.

These call the compiled kernels directly (contract in csrc/ops/clip_loss.h): the oracle is the
contract's formula on the full M x N logits in float64, computed from the same (rounded)
inputs the kernel sees, so the only differences are the kernel's fp32 accumulation.
"""
import math

import pytest
import torch
from torch.utils.dlpack import to_dlpack

_C = pytest.importorskip("fmkit._C")
if not hasattr(_C, "contrastive_forward_cpu"):
    pytest.skip("extension built without the contrastive kernels", allow_module_level=True)

THREADS = 2


def dl(t):
    return None if t is None else to_dlpack(t)


# ---- the contract in float64 ----

def ref_forward(x, y, scale, bias, kind):
    logits = scale * (x.double() @ y.double().T) + bias
    if kind == "softmax":
        return torch.logsumexp(logits, dim=1), torch.logsumexp(logits, dim=0)
    return torch.nn.functional.softplus(logits).sum(dim=1), None


def ref_backward(x, y, scale, bias, kind, row, col, w_row, w_col):
    xd, yd = x.double(), y.double()
    dots = xd @ yd.T
    logits = scale * dots + bias
    if kind == "softmax":
        g = w_row.double()[:, None] * torch.exp(logits - row.double()[:, None])
        if w_col is not None:
            g = g + w_col.double()[None, :] * torch.exp(logits - col.double()[None, :])
    else:
        g = w_row.double()[:, None] * torch.sigmoid(logits)
    return scale * g @ yd, scale * g.T @ xd, (g * dots).sum().item(), g.sum().item()


# ---- kernel calls ----

def run_forward(x, y, scale, bias, kind, has_col=True, threads=THREADS):
    m, n = x.shape[0], y.shape[0]
    row = torch.full((m,), float("nan"))
    col = torch.full((n,), float("nan")) if has_col else None
    _C.contrastive_forward_cpu(dl(x), dl(y), float(scale), float(bias), kind, dl(row), dl(col), threads)
    return row, col


def run_backward(x, y, scale, bias, kind, row, col, w_row, w_col, threads=THREADS):
    m, n, d = x.shape[0], y.shape[0], x.shape[1]
    dx = torch.full((m, d), float("nan"))
    dy = torch.full((n, d), float("nan"))
    stats = torch.full((2,), float("nan"), dtype=torch.float64)
    _C.contrastive_backward_cpu(dl(x), dl(y), float(scale), float(bias), kind, dl(row), dl(col), dl(w_row),
                                dl(w_col), dl(dx), dl(dy), dl(stats), threads)
    return dx, dy, stats


def assert_close_vec(got, want, rtol, what):
    """Elementwise |got - want| <= rtol * max(|want|, 1) (LSEs and softplus sums are O(1) or larger)."""
    assert got.dtype == torch.float32, what
    assert torch.isfinite(got).all(), f"{what}: non-finite values"
    err = ((got.double() - want).abs() / want.abs().clamp_min(1.0)).max().item()
    assert err <= rtol, f"{what}: relative error {err:.3g} > {rtol:.1g}"


def assert_close_mat(got, want, rtol, what):
    """Max error relative to the largest reference entry (gradient rows are sums of signed terms)."""
    assert got.dtype == torch.float32, what
    assert torch.isfinite(got).all(), f"{what}: non-finite values"
    scale = max(want.abs().max().item(), 1e-30)
    err = (got.double() - want).abs().max().item() / scale
    assert err <= rtol, f"{what}: relative error {err:.3g} > {rtol:.1g}"


def assert_close_scalar(got, want, rtol, ref_scale, what):
    assert math.isfinite(got), what
    assert abs(got - want) <= rtol * max(abs(want), ref_scale), f"{what}: {got} vs {want}"


def features(m, n, d, dtype=torch.float32, seed=0, unit=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, d, generator=g, dtype=torch.float64)
    y = torch.randn(n, d, generator=g, dtype=torch.float64)
    if unit:
        x = torch.nn.functional.normalize(x, dim=1)
        y = torch.nn.functional.normalize(y, dim=1)
    return x.to(dtype), y.to(dtype)


def weights(m, n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(m, generator=g) / m, torch.rand(n, generator=g) / n


def check_case(x, y, scale, bias, kind, has_col=True, rtol=1e-5, threads=THREADS):
    """Forward then backward, both against the float64 oracle on the same inputs."""
    m, n = x.shape[0], y.shape[0]
    row, col = run_forward(x, y, scale, bias, kind, has_col=has_col, threads=threads)
    want_row, want_col = ref_forward(x, y, scale, bias, kind)
    assert_close_vec(row, want_row, rtol, "out_row")
    if kind == "softmax" and has_col:
        assert_close_vec(col, want_col, rtol, "out_col")
    # The backward gets the oracle's statistics (rounded to f32, as the caller stores them).
    w_row, w_col = weights(m, n)
    row32 = want_row.float()
    col32 = want_col.float() if (kind == "softmax" and has_col) else None
    w_col_arg = w_col if col32 is not None else None
    dx, dy, stats = run_backward(x, y, scale, bias, kind, row32, col32, w_row, w_col_arg, threads=threads)
    want_dx, want_dy, want_dot, want_sum = ref_backward(x, y, scale, bias, kind, row32, col32, w_row, w_col_arg)
    assert_close_mat(dx, want_dx, 10 * rtol, "out_dx")
    assert_close_mat(dy, want_dy, 10 * rtol, "out_dy")
    g_scale = float(w_row.sum() + (w_col_arg.sum() if w_col_arg is not None else 0.0))
    assert_close_scalar(stats[0].item(), want_dot, 10 * rtol, g_scale, "out_stats[0] (sum G<x,y>)")
    assert_close_scalar(stats[1].item(), want_sum, 10 * rtol, g_scale, "out_stats[1] (sum G)")
    return row, col, dx, dy, stats


KINDS = ["softmax", "sigmoid"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "m,n,d",
    [(1, 1, 1), (1, 2, 3), (2, 1, 65), (2, 127, 3), (127, 2, 65), (127, 300, 65), (300, 127, 1), (300, 300, 3),
     (13, 37, 129)],
)
def test_shapes_f32(kind, m, n, d):
    x, y = features(m, n, d, seed=m * 1000 + n + d)
    check_case(x, y, 14.3, -2.5, kind)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(kind, dtype):
    # The oracle reads the same rounded values (x.double() of the half tensor).
    x, y = features(127, 300, 65, dtype=dtype, seed=3)
    check_case(x, y, 20.0, -1.0, kind)


@pytest.mark.parametrize("kind", KINDS)
def test_non_contiguous_inputs(kind):
    x = torch.nn.functional.normalize(torch.randn(300, 65, dtype=torch.float64, generator=torch.Generator().manual_seed(3)), dim=1).float()
    x = torch.empty(300, 130)[:, ::2].copy_(x)  # the same values in a strided view: stride (130, 2)
    y = torch.nn.functional.normalize(torch.randn(65, 127, dtype=torch.float64, generator=torch.Generator().manual_seed(4)), dim=0).float().T  # stride (1, 127)
    assert not x.is_contiguous() and not y.is_contiguous()
    check_case(x, y, 10.0, 0.5, kind)


@pytest.mark.parametrize("kind", KINDS)
def test_large_logits(kind):
    # scale 100 with unit vectors: logits reach +-100 (+-110 with the bias); exp(100) overflows
    # fp32, so this only passes with max-subtracted LSE and a stable softplus / sigmoid.
    x, y = features(127, 300, 65, seed=5)
    y[:100] = x[:100]  # logits of exactly scale + bias on these pairs
    y[100:110] = -x[:10]
    naive = torch.exp(100.0 * (x @ y.T)).sum(dim=1)
    assert not torch.isfinite(naive).all()
    for bias in (0.0, -10.0, 10.0):
        check_case(x, y, 100.0, bias, kind, rtol=2e-5)


def test_softmax_identity_cases():
    # All rows equal: every LSE is log(N) + scale + bias exactly; softmax weights sum to 1.
    x = torch.nn.functional.normalize(torch.ones(7, 33), dim=1)
    y = torch.nn.functional.normalize(torch.ones(300, 33), dim=1)
    row, col = run_forward(x, y, 50.0, -3.0, "softmax")
    torch.testing.assert_close(row, torch.full((7,), math.log(300) + 47.0), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(col, torch.full((300,), math.log(7) + 47.0), rtol=1e-6, atol=1e-5)
    w_row, w_col = torch.full((7,), 0.25), torch.full((300,), 0.5)
    _, _, stats = run_backward(x, y, 50.0, -3.0, "softmax", row, col, w_row, w_col)
    # sum_ij G = sum_i w_row (rows of P sum to 1) + sum_j w_col (columns of Q sum to 1), up to
    # the f32 rounding of the stored LSEs (ulp(52.7) ~ 4e-6 relative on each exp).
    assert abs(stats[1].item() - (7 * 0.25 + 300 * 0.5)) < 1e-5 * (7 * 0.25 + 300 * 0.5)


@pytest.mark.parametrize("kind", KINDS)
def test_without_columns(kind):
    x, y = features(127, 300, 65, seed=7)
    check_case(x, y, 14.3, 0.0, kind, has_col=False)


def test_col_given_without_w_col():
    # The column term needs w_col; with w_col None only the row term is used.
    x, y = features(40, 70, 17, seed=8)
    row, col = run_forward(x, y, 10.0, 0.0, "softmax")
    w_row, _ = weights(40, 70)
    dx, dy, stats = run_backward(x, y, 10.0, 0.0, "softmax", row, col, w_row, None)
    want_dx, want_dy, want_dot, want_sum = ref_backward(x, y, 10.0, 0.0, "softmax", row, None, w_row, None)
    assert_close_mat(dx, want_dx, 1e-4, "out_dx")
    assert_close_mat(dy, want_dy, 1e-4, "out_dy")
    assert abs(stats[1].item() - want_sum) < 1e-5


def test_sigmoid_out_col_untouched():
    x, y = features(20, 30, 9)
    row, col = run_forward(x, y, 10.0, -10.0, "sigmoid", has_col=True)
    assert torch.isnan(col).all()  # out_col is unused for sigmoid
    assert_close_vec(row, ref_forward(x, y, 10.0, -10.0, "sigmoid")[0], 1e-5, "out_row")


@pytest.mark.parametrize("threads", [0, 1, 3, 5])
@pytest.mark.parametrize("kind", KINDS)
def test_thread_counts(kind, threads):
    x, y = features(300, 127, 65, seed=9)
    check_case(x, y, 20.0, -1.0, kind, threads=threads)


def test_strided_vectors():
    # 1-D arguments with a stride: out_row / out_col written and row / w_row read through it.
    x, y = features(31, 45, 8, seed=10)
    row = torch.full((62,), float("nan"))[::2]
    col = torch.full((90,), float("nan"))[::2]
    _C.contrastive_forward_cpu(dl(x), dl(y), 5.0, 0.0, "softmax", dl(row), dl(col), THREADS)
    want_row, want_col = ref_forward(x, y, 5.0, 0.0, "softmax")
    assert_close_vec(row, want_row, 1e-5, "out_row")
    assert_close_vec(col, want_col, 1e-5, "out_col")
    w_row = torch.rand(62, generator=torch.Generator().manual_seed(5))[::2]
    dx, dy, _ = run_backward(x, y, 5.0, 0.0, "softmax", row, col, w_row, None)
    want_dx, want_dy, _, _ = ref_backward(x, y, 5.0, 0.0, "softmax", row, None, w_row, None)
    assert_close_mat(dx, want_dx, 1e-4, "out_dx")
    assert_close_mat(dy, want_dy, 1e-4, "out_dy")


@pytest.mark.parametrize("kind", KINDS)
def test_empty(kind):
    x, y = features(5, 1, 4)
    y = y[:0]
    row, col = run_forward(x, y, 10.0, 0.0, kind)
    assert torch.equal(row, torch.full((5,), float("-inf") if kind == "softmax" else 0.0))
    dx, dy, stats = run_backward(x, y, 10.0, 0.0, kind, torch.zeros(5), None, torch.ones(5), None)
    assert torch.equal(dx, torch.zeros(5, 4)) and dy.shape == (0, 4) and stats.tolist() == [0.0, 0.0]


# ---- argument checks: ValueError naming the argument ----

def _fwd_args(**over):
    x, y = features(6, 8, 5)
    args = dict(x=x, y=y, scale=1.0, bias=0.0, kind="softmax", out_row=torch.empty(6), out_col=torch.empty(8))
    args.update(over)
    return args


def _call_fwd(a):
    _C.contrastive_forward_cpu(dl(a["x"]), dl(a["y"]), a["scale"], a["bias"], a["kind"], dl(a["out_row"]),
                               dl(a["out_col"]), THREADS)


@pytest.mark.parametrize(
    "over,name",
    [
        (dict(x=torch.zeros(6)), "x"),
        (dict(x=torch.zeros(6, 5, dtype=torch.float64)), "x"),
        (dict(x=torch.randint(0, 3, (6, 5))), "x"),
        (dict(y=torch.zeros(8, 4)), "y"),
        (dict(y=torch.zeros(8, 5, dtype=torch.float16)), "y"),
        (dict(out_row=torch.empty(7)), "out_row"),
        (dict(out_row=torch.empty(6, dtype=torch.float64)), "out_row"),
        (dict(out_row=torch.empty(6, 1)), "out_row"),
        (dict(out_col=torch.empty(6)), "out_col"),
        (dict(kind="hinge"), "kind"),
    ],
)
def test_forward_errors(over, name):
    with pytest.raises(ValueError, match=f"^{name}: "):
        _call_fwd(_fwd_args(**over))


def _bwd_args(**over):
    x, y = features(6, 8, 5)
    args = dict(x=x, y=y, kind="softmax", row=torch.zeros(6), col=torch.zeros(8), w_row=torch.ones(6),
                w_col=torch.ones(8), out_dx=torch.empty(6, 5), out_dy=torch.empty(8, 5),
                out_stats=torch.empty(2, dtype=torch.float64))
    args.update(over)
    return args


def _call_bwd(a):
    _C.contrastive_backward_cpu(dl(a["x"]), dl(a["y"]), 1.0, 0.0, a["kind"], dl(a["row"]), dl(a["col"]),
                                dl(a["w_row"]), dl(a["w_col"]), dl(a["out_dx"]), dl(a["out_dy"]),
                                dl(a["out_stats"]), THREADS)


@pytest.mark.parametrize(
    "over,name",
    [
        (dict(y=torch.zeros(8, 6)), "y"),
        (dict(y=torch.zeros(8, 5, dtype=torch.bfloat16)), "y"),
        (dict(row=torch.zeros(5)), "row"),
        (dict(row=torch.zeros(6, dtype=torch.float64)), "row"),
        (dict(col=torch.zeros(6)), "col"),
        (dict(col=None), "col"),  # w_col without col
        (dict(w_row=torch.ones(8)), "w_row"),
        (dict(w_col=torch.ones(8, dtype=torch.float16)), "w_col"),
        (dict(out_dx=torch.empty(6, 4)), "out_dx"),
        (dict(out_dx=torch.empty(5, 6).T), "out_dx"),  # right shape, not contiguous
        (dict(out_dx=torch.empty(6, 5, dtype=torch.float64)), "out_dx"),
        (dict(out_dy=torch.empty(6, 5)), "out_dy"),
        (dict(out_stats=torch.empty(2)), "out_stats"),
        (dict(out_stats=torch.empty(3, dtype=torch.float64)), "out_stats"),
        (dict(kind="Softmax"), "kind"),
    ],
)
def test_backward_errors(over, name):
    with pytest.raises(ValueError, match=f"^{name}: "):
        _call_bwd(_bwd_args(**over))


def test_backward_ok_baseline():
    # The unmodified argument set of test_backward_errors is valid, and fills every output with
    # the reference gradients (so each error case above differs from it in one argument only).
    a = _bwd_args()
    _call_bwd(a)
    dx, dy, sum_gdot, sum_g = ref_backward(a["x"], a["y"], 1.0, 0.0, "softmax", a["row"], a["col"], a["w_row"],
                                           a["w_col"])
    torch.testing.assert_close(a["out_dx"].double(), dx, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a["out_dy"].double(), dy, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a["out_stats"], torch.tensor([sum_gdot, sum_g], dtype=torch.float64), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bias", [-20.0, -60.0, 30.0])
def test_softplus_tails(bias):
    # Row sums of tiny (or large) softplus values keep their relative accuracy: log1p is not
    # computed as log(1 + e), which would round e ~ 1e-9 away.
    x, y = features(3, 200, 16, seed=11)
    row, _ = run_forward(x, y, 2.0, bias, "sigmoid", has_col=False)
    want = ref_forward(x, y, 2.0, bias, "sigmoid")[0]
    err = ((row.double() - want).abs() / want.abs()).max().item()
    assert err < 1e-5, err
