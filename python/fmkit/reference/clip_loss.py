"""Contrastive losses in plain PyTorch: the dense oracle and a chunked torch backend.

`naive_clip_loss` is open_clip's ClipLoss / SigLipLoss math on the full N x N logits
(differentiable, any dtype incl. float64): the test oracle and the benchmark anchor.
`contrastive_forward` / `contrastive_backward` implement the kernel contract of
csrc/ops/clip_loss.h with row blocks, so memory is O(block * N) rather than N x N; they are
the `torch` backend of fmkit.ops.clip_loss and run on any device.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fmkit.reference import without_autocast

_BLOCK_ELEMENTS = 1 << 22  # logits per row block (16 MB in fp32)


def naive_clip_loss(image, text, logit_scale, logit_bias=None, kind="softmax", logits_dtype=None):
    """Materialised loss: mean of the two cross entropies (softmax) or SigLIP's -1/N sum log sigmoid(z L)."""
    if logits_dtype is not None:  # e.g. fp32 logits from bf16 features: an fp32 GEMM
        image, text = image.to(logits_dtype), text.to(logits_dtype)
    logits = logit_scale * image @ text.T
    if logit_bias is not None:
        logits = logits + logit_bias
    n = image.shape[0]
    labels = torch.arange(n, device=image.device)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # CE and logsigmoid in >= fp32
    if kind == "softmax":
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    z = 2 * torch.eye(n, device=image.device, dtype=logits.dtype) - 1
    return -F.logsigmoid(z * logits).sum() / n


def _blocks(m, n):
    step = max(1, _BLOCK_ELEMENTS // max(n, 1))
    return range(0, m, step), step


def _acc(x):
    """Accumulation dtype: fp32, or fp64 for fp64 inputs (gradcheck)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


@without_autocast
def contrastive_forward(x, y, scale, bias, kind, need_col):
    """Row (and column) statistics of L = scale x y^T + bias, fp32 (fp64 inputs: fp64), in row blocks."""
    m, n = x.shape[0], y.shape[0]
    acc = _acc(x)
    yf = y.to(acc)
    row = torch.empty(m, dtype=acc, device=x.device)
    col = torch.full((n,), float("-inf"), dtype=acc, device=x.device) if need_col else None
    starts, step = _blocks(m, n)
    for i0 in starts:
        logits = scale * (x[i0 : i0 + step].to(acc) @ yf.T) + bias
        if kind == "softmax":
            row[i0 : i0 + step] = torch.logsumexp(logits, dim=1)
            if need_col:
                col = torch.logaddexp(col, torch.logsumexp(logits, dim=0))
        else:
            row[i0 : i0 + step] = F.softplus(logits).sum(dim=1)
    return row, col


@without_autocast
def contrastive_backward(x, y, scale, bias, kind, row, col, w_row, w_col):
    """dx = scale G y, dy = scale G^T x and (sum G<x,y>, sum G) for the contract's G, in row blocks."""
    m, n = x.shape[0], y.shape[0]
    acc = _acc(x)
    yf = y.to(acc)
    dx = torch.empty((m, x.shape[1]), dtype=acc, device=x.device)
    dy = torch.zeros((n, y.shape[1]), dtype=acc, device=x.device)
    g_dot = torch.zeros((), dtype=torch.float64, device=x.device)
    g_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    starts, step = _blocks(m, n)
    for i0 in starts:
        xb = x[i0 : i0 + step].to(acc)
        dots = xb @ yf.T
        logits = scale * dots + bias
        if kind == "softmax":
            g = w_row[i0 : i0 + step, None] * torch.exp(logits - row[i0 : i0 + step, None])
            if w_col is not None:
                g = g + w_col[None, :] * torch.exp(logits - col[None, :])
        else:
            g = w_row[i0 : i0 + step, None] * torch.sigmoid(logits)
        dx[i0 : i0 + step] = scale * (g @ yf)
        dy += scale * (g.T @ xb)
        g_dot += (g.double() * dots.double()).sum()
        g_sum += g.double().sum()
    return dx, dy, torch.stack([g_dot, g_sum])
