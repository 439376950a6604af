"""Fused contrastive losses (CLIP softmax, SigLIP sigmoid) without the N x N logits.

    softmax (open_clip ClipLoss): loss = ( CE_rows(L) + CE_cols(L) ) / 2,   L = s X Y^T (+ b)
        = 1/(2N) [ sum_i r_i + sum_j c_j - 2 sum_i L_ii ]     r, c: row / column log-sum-exp
    sigmoid (SigLIP):             loss = -1/N sum_ij log sigmoid(z_ij L_ij),  z = +1 on the diagonal
        = 1/N [ sum_ij softplus(L_ij) - sum_i L_ii ]

The kernels (csrc/ops/clip_loss.h contract: cpu C++, triton, torch) compute only the row /
column statistics and, in the backward, recompute the logits tile by tile to form
dX = s G Y, dY = s G^T X and the scale / bias gradients; the diagonal (positive) terms are
O(N d) and handled here. Saved state is O(N): the statistics. Nothing N x N is allocated.

The same op serves the distributed losses of fmkit.losses: local rows against gathered
columns with a label offset (`_contrastive_loss(..., symmetric=False, offset=B*rank)`).
"""
from __future__ import annotations

from types import SimpleNamespace

import torch

from fmkit.ops import _backend
from fmkit.reference.clip_loss import contrastive_backward, contrastive_forward

_TorchKernels = SimpleNamespace(forward=contrastive_forward, backward=contrastive_backward)

KINDS = ("softmax", "sigmoid")
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)  # float64: torch backend (gradcheck)
GPU_BACKEND_ORDER = ("triton",)


def clip_loss(image_features, text_features, logit_scale, *, logit_bias=None, kind="softmax", backend="auto"):
    """CLIP (kind="softmax") or SigLIP (kind="sigmoid") loss of paired [N, d] features.

    `logit_scale` is the multiplier s itself (open_clip passes `logit_scale.exp()`), a 0-d or
    one-element tensor; `logit_bias` (sigmoid only) likewise. Both receive gradients, as do
    the features. Accumulation is fp32 for every input dtype (float64 inputs: the float64 torch
    reference, for gradcheck). Returns a 0-d float32 tensor (float64 for float64 inputs).
    """
    _check(image_features, text_features, logit_scale, logit_bias, kind, backend)
    return contrastive_loss(image_features, text_features, logit_scale, logit_bias, kind=kind,
                            symmetric=kind == "softmax", offset=0, positives=True, backend=backend)


def _check(x, y, scale, bias, kind, backend):
    for name, t in (("image_features", x), ("text_features", y)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 2:
            raise ValueError(f"{name}: expected a 2-D [N, d] tensor, got shape {list(t.shape)}")
        _backend.check_dtype(t, name, DTYPES)
    if x.shape[0] == 0:
        raise ValueError("image_features: empty batch (N = 0)")
    if x.shape != y.shape:
        raise ValueError(f"text_features: shape {list(y.shape)} does not match image_features {list(x.shape)}")
    if y.dtype != x.dtype or y.device != x.device:
        raise ValueError(f"text_features: expected {x.dtype} on {x.device}, got {y.dtype} on {y.device}")
    if kind not in KINDS:
        raise ValueError(f"kind: expected 'softmax' or 'sigmoid', got {kind!r}")
    _check_scalar(scale, "logit_scale", x.device)
    if bias is not None:
        if kind == "softmax":
            raise ValueError("logit_bias: only used with kind='sigmoid' (softmax cross entropy is shift invariant)")
        _check_scalar(bias, "logit_bias", x.device)
    _backend.resolve_backend(backend, x.device, "clip_loss", GPU_BACKEND_ORDER)
    _backend.check_float64_backend("image_features", x, backend)


def _check_scalar(t, name, device):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor (a scalar nn.Parameter), got {type(t).__name__}")
    if t.numel() != 1:
        raise ValueError(f"{name}: expected a scalar (0-d or one element), got shape {list(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name}: on {t.device}, but the features are on {device}")


def contrastive_loss(x, y, scale, bias=None, *, kind, symmetric, offset, positives, backend="auto"):
    """The loss of rows x [M, d] against columns y [N, d] (row i's positive is column i + offset).

    symmetric (softmax, M == N, offset 0): the mean of both cross entropies (open_clip ClipLoss).
    otherwise: the mean over rows of the row cross entropy (softmax) or of the SigLIP row sums;
    with positives=False every pair is a negative (SigLIP's blocks from other ranks).
    """
    bias_t = bias.reshape(()) if bias is not None else torch.zeros((), dtype=torch.float32, device=x.device)
    loss, _, _ = torch.ops.fmkit.contrastive_loss(
        x, y, scale.reshape(()), bias_t, kind, symmetric, offset, positives, bias is not None, backend)
    return loss


@torch.library.custom_op("fmkit::contrastive_loss", mutates_args=())
def _contrastive_loss_op(x: torch.Tensor, y: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, kind: str,
                         symmetric: bool, offset: int, positives: bool, has_bias: bool,
                         backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    kernels = _kernels(backend, x)
    s, b = scale.to(_backend.accumulation_dtype(x)), bias.to(_backend.accumulation_dtype(x))
    row, col = kernels.forward(x, y, s, b, kind, symmetric)
    m = x.shape[0]
    pos_rows, pos_dots = _positive_dots(x, y, offset, positives)
    positive_logits = s * pos_dots + b
    # Subtract each positive from its own row (and column) statistic before summing: the terms
    # are O(1) while the statistics are O(scale), so this avoids cancellation in fp32.
    # Each such term is >= 0 in exact arithmetic (softmax: lse_i - L_ii = log(1 + sum_{j!=i}
    # exp(L_ij - L_ii)); sigmoid: sum_{j!=i} softplus(L_ij) + softplus(-L_ii)), but the kernel's
    # statistic and the positive logit here round differently, by a few ulp of |L_ii|. Taking
    # max(term, 0) projects each term onto its known range: it can only move a term closer to
    # its true value (never below 0, where the true value cannot be), so the loss is a sum of
    # non-negative terms. The backward is the analytic gradient and does not see this.
    row_terms = row.clone()
    row_terms[pos_rows] = (row_terms[pos_rows] - positive_logits).clamp(min=0)
    if symmetric:
        loss = (row_terms.sum() + (col - positive_logits).clamp(min=0).sum()) / (2 * m)
    else:
        loss = row_terms.sum() / m
    empty = row.new_empty(0)
    return loss.to(_backend.accumulation_dtype(x)), row, col if col is not None else empty


@_contrastive_loss_op.register_fake
def _contrastive_loss_fake(x, y, scale, bias, kind, symmetric, offset, positives, has_bias, backend):
    acc = _backend.accumulation_dtype(x)
    return (x.new_empty((), dtype=acc), x.new_empty(x.shape[0], dtype=acc),
            x.new_empty(y.shape[0] if symmetric else 0, dtype=acc))


def _positive_dots(x, y, offset, positives):
    """Rows i with a positive column i + offset inside y, and the dots <x_i, y_{i+offset}> (fp32, fp64 for fp64 inputs)."""
    if not positives:
        return slice(0, 0), x.new_zeros(0, dtype=_backend.accumulation_dtype(x))
    lo, hi = max(0, -offset), min(x.shape[0], y.shape[0] - offset)
    rows = slice(lo, max(lo, hi))
    cols = slice(lo + offset, max(lo, hi) + offset)
    return rows, (x[rows].to(_backend.accumulation_dtype(x)) * y[cols].to(_backend.accumulation_dtype(x))).sum(1)


def _setup_context(ctx, inputs, output):
    x, y, scale, bias, kind, symmetric, offset, positives, has_bias, backend = inputs
    _, row, col = output
    ctx.save_for_backward(x, y, scale, bias, row, col)
    ctx.config = (kind, symmetric, offset, positives, has_bias, backend)


def _backward(ctx, grad_loss, _grad_row, _grad_col):
    x, y, scale, bias, row, col = ctx.saved_tensors
    kind, symmetric, offset, positives, has_bias, backend = ctx.config
    kernels = _kernels(backend, x)
    s, b = scale.to(_backend.accumulation_dtype(x)), bias.to(_backend.accumulation_dtype(x))
    m, n = x.shape[0], y.shape[0]
    weight = 1.0 / (2 * m) if symmetric else 1.0 / m
    w_row = torch.full((m,), weight, dtype=row.dtype, device=x.device)
    w_col = torch.full((n,), weight, dtype=row.dtype, device=x.device) if symmetric else None
    dx, dy, stats = kernels.backward(x, y, s, b, kind, row, col if symmetric else None, w_row, w_col)
    # Positive terms: loss -= c * sum_i (s <x_i, y_{i+offset}> + b), c = 2 * weight (symmetric) or weight.
    c = 2 * weight if symmetric else weight
    rows, pos_dots = _positive_dots(x, y, offset, positives)
    if pos_dots.numel():
        cols = slice(rows.start + offset, rows.stop + offset)
        dx[rows] -= c * s * y[cols].to(dx.dtype)
        dy[cols] -= c * s * x[rows].to(dy.dtype)
    d_scale = stats[0] - c * pos_dots.double().sum()
    d_bias = stats[1] - c * pos_dots.numel()
    g = grad_loss.to(dx.dtype)
    grad_scale = (g * d_scale.to(dx.dtype)).to(scale.dtype).reshape(scale.shape)
    grad_bias = (g * d_bias.to(dx.dtype)).to(bias.dtype).reshape(bias.shape) if has_bias else None
    return ((g * dx).to(x.dtype), (g * dy).to(y.dtype), grad_scale, grad_bias,
            None, None, None, None, None, None)


_contrastive_loss_op.register_autograd(_backward, setup_context=_setup_context)


# ---- backends: objects with forward(x, y, s, b, kind, need_col) and backward(...) per the contract ----

class _CpuKernels:
    @staticmethod
    def forward(x, y, s, b, kind, need_col):
        dl = _backend.dlpack
        row = torch.empty(x.shape[0], dtype=torch.float32)
        col = torch.empty(y.shape[0], dtype=torch.float32) if need_col else None
        _backend._C.contrastive_forward_cpu(dl(x.detach()), dl(y.detach()), float(s), float(b), kind, dl(row),
                                            dl(col) if need_col else None, _backend.cpu_threads())
        return row, col

    @staticmethod
    def backward(x, y, s, b, kind, row, col, w_row, w_col):
        dl = _backend.dlpack
        dx = torch.empty(x.shape, dtype=torch.float32)
        dy = torch.empty(y.shape, dtype=torch.float32)
        stats = torch.empty(2, dtype=torch.float64)
        _backend._C.contrastive_backward_cpu(
            dl(x.detach()), dl(y.detach()), float(s), float(b), kind, dl(row), dl(col) if col is not None else None,
            dl(w_row), dl(w_col) if w_col is not None else None, dl(dx), dl(dy), dl(stats), _backend.cpu_threads())
        return dx, dy, stats


def _kernels(backend, x):
    return _backend.select_kernels("clip_loss", backend, x, cpu=_CpuKernels, torch_impl=_TorchKernels,
                                   triton_module="clip_loss", gpu_order=GPU_BACKEND_ORDER)
