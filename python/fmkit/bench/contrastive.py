"""Contrastive-loss benchmark: fmkit's fused CLIP / SigLIP loss, forward + backward, against the
naive materialised loss (open_clip's math; bf16 logits and fp32 logits) and inf-cl where importable.

FLOPs are the useful 6 N^2 d of a forward + backward (one logits GEMM, two gradient GEMMs);
'% torch.mm' is against torch.mm's rate in the input dtype measured in the same run. Extra MiB (CUDA)
is the peak memory one step allocates beyond its inputs.

Anchors at their strongest setting (the "setting" column says which): the naive loss with bf16
logits (what open_clip computes under bf16 autocast: bf16 GEMM, cross entropy in fp32) and with
fp32 logits; on CUDA with 16-bit features the fp32-logits anchor runs its GEMMs in TF32 (the
bf16 features fit TF32's mantissa, so it costs about nothing in accuracy: the error column shows it).

Error column ("rel err vs fp64"): the LARGEST of three relative errors against float64 on the same
inputs: |loss - loss64| / |loss64|, ||dX - dX64|| / ||dX64|| and ||dY - dY64|| / ||dY64|| (the
gradients w.r.t. both embeddings, as training uses them; they come back in the input dtype, so
for bf16 features the rounding of the gradients alone is ~2e-3). Each contender's numbers come
from one extra step outside the timing. The float64 reference is computed once per case:
naive_clip_loss (fmkit.reference) in float64 with autograd for N <= NAIVE_REFERENCE_MAX_N, else
`reference_fp64`, the same formulas in float64 blocks of rows (bounded memory): the loss over all
N^2 logits always, the gradients on all rows up to FULL_GRAD_MAX_N and above that on GRAD_ROWS
evenly spaced rows of X and of Y (the setting column then says "grads on 4096 of N rows").
"""
from __future__ import annotations

import importlib.util
import sys

import torch
import torch.nn.functional as F

from fmkit.bench import LazyCases, accuracy, auto_backend
from fmkit.bench._shapes import embedded_shapes
from fmkit.ops import clip_loss
from fmkit.reference.clip_loss import naive_clip_loss

SHAPES = {  # (N, d, dtype, kind)
    ("cpu", "quick"): [(2048, 512, torch.float32, "softmax")],
    ("cpu", "full"): [(4096, 512, torch.float32, "softmax"), (4096, 512, torch.float32, "sigmoid")],
    ("cuda", "quick"): [(8192, 768, torch.bfloat16, "softmax")],
    ("cuda", "full"): [(n, 768, torch.bfloat16, kind) for kind in ("softmax", "sigmoid")
                       for n in (8192, 32768, 65536)] + [(262144, 768, torch.bfloat16, "softmax")],
}

# naive_clip_loss in float64 keeps a few N x N float64 tensors for its backward (2 GiB each at 16384).
NAIVE_REFERENCE_MAX_N = 16384
# Above this N the blocked reference checks the gradients on GRAD_ROWS rows only: the loss needs
# 2 N^2 d float64 FLOPs regardless, all gradients another 4 N^2 d (seconds of device time at N = 262144).
FULL_GRAD_MAX_N = 65536
GRAD_ROWS = 4096
# float64 logits per row block of the blocked reference (512 MiB on CUDA; a block holds ~3 such tiles).
REFERENCE_BLOCK = {"cuda": 1 << 26, "cpu": 1 << 22}


def _step(loss_fn, x, y, s, b):
    """One training step's loss work: forward + backward; returns the (detached) loss."""
    def run():
        for t in (x, y, s, b):
            if t is not None:
                t.grad = None
        loss = loss_fn()
        loss.backward()
        return loss.detach()
    return run


def _tf32(fn):
    """fn with torch's TF32 switch on for its GEMMs (forward and backward), restored after."""
    def run():
        saved = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            return fn()
        finally:
            torch.backends.cuda.matmul.allow_tf32 = saved
    return run


def _inf_cl(x, y, s):
    from inf_cl import cal_inf_loss

    labels = torch.arange(x.shape[0], device=x.device)
    return lambda: ((cal_inf_loss(x, y, labels, s) + cal_inf_loss(y, x, labels, s)) / 2).mean()


def cases(device: torch.device, quick: bool, shapes=None):
    """The cases, each built (inputs, float64 reference, error column) when the run reaches it."""
    shapes = embedded_shapes(SHAPES, device, quick, shapes)
    return LazyCases([lambda s=s: _case(*s, device) for s in shapes])




def _case(n, d, dtype, kind, device):
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(n, d, generator=g), dim=1).to(device, dtype).requires_grad_()
    y = F.normalize(torch.randn(n, d, generator=g), dim=1).to(device, dtype).requires_grad_()
    s = torch.tensor(14.3 if kind == "softmax" else 10.0, device=device, requires_grad=True)
    b = torch.tensor(-10.0, device=device, requires_grad=True) if kind == "sigmoid" else None
    fused = _step(lambda: clip_loss(x, y, s, logit_bias=b, kind=kind), x, y, s, b)
    contenders = [(f"fmkit fused ({kind})", fused, False)]
    settings = {contenders[0][0]: f"backend=auto ({auto_backend(device, 'clip_loss')}), fp32 accumulation"}
    if n <= 65536:
        fp32 = _step(lambda: naive_clip_loss(x, y, s, b, kind, torch.float32), x, y, s, b)
        if device.type == "cuda" and dtype != torch.float32:
            contenders.append(("naive, fp32 logits", _tf32(fp32), True))
            settings["naive, fp32 logits"] = "features to fp32, TF32 GEMMs (allow_tf32=True), CE in fp32"
        else:
            contenders.append(("naive, fp32 logits", fp32, True))
            settings["naive, fp32 logits"] = "fp32 GEMM" + (", TF32 off" if device.type == "cuda" else "") + ", CE in fp32"
        if dtype != torch.float32:
            contenders.append(("naive, bf16 logits", _step(lambda: naive_clip_loss(x, y, s, b, kind), x, y, s, b), True))
            settings["naive, bf16 logits"] = (f"{str(dtype).replace('torch.', '')} GEMM and logits, CE in fp32 "
                                              "(open_clip under autocast)")
    if kind == "softmax" and device.type == "cuda" and importlib.util.find_spec("inf_cl") is not None:
        contenders.append(("inf-cl (2 directions)", _step(_inf_cl(x, y, s), x, y, s, None), True))
        settings["inf-cl (2 directions)"] = "inf_cl.cal_inf_loss defaults, mean of both directions"
    rows = None
    if n > FULL_GRAD_MAX_N:
        rows = torch.arange(0, n, max(1, n // GRAD_ROWS), device=device)[:GRAD_ROWS]
        for name in settings:
            settings[name] += f"; err: loss + grads on {rows.numel()} of {n} rows"
    return {
        "shape": f"N={n} d={d} {str(dtype).replace('torch.', '')} {kind}",
        "flops": 6.0 * n * n * d,
        "contenders": contenders,
        "peak_dtype": dtype,
        "repeats": 3,
        "settings": settings,
        "accuracy": _accuracy(contenders, x, y, s, b, kind, rows),
    }


def _accuracy(contenders, x, y, s, b, kind, rows):
    """{name: max relative error of (loss, dX[rows], dY[rows])} against float64; NaN for all when
    the reference itself cannot be computed here (e.g. out of memory), with a note on stderr."""
    try:
        if rows is None and x.shape[0] <= NAIVE_REFERENCE_MAX_N:
            ref = naive_reference_fp64(x, y, s, b, kind)
        else:
            ref = reference_fp64(x, y, s, b, kind, rows)
    except Exception as exc:
        print(f"\ncontrastive N={x.shape[0]}: float64 reference failed ({type(exc).__name__}: {exc})"[:300],
              file=sys.stderr)
        if x.is_cuda:
            torch.cuda.empty_cache()
        return {name: float("nan") for name, fn, _ in contenders if not hasattr(fn, "unavailable")}
    if x.is_cuda:
        torch.cuda.empty_cache()
    return accuracy(contenders, lambda fn: outputs(fn, x, y, rows), ref)


def outputs(step, x, y, rows=None):
    """(loss, dX[rows], dY[rows]) of one call of a contender's step (rows None: all rows); a
    gradient the step left unset counts as zero (relative error 1), not as unmeasured."""
    loss = step()
    gx, gy = [torch.zeros_like(t) if t.grad is None else t.grad.detach() for t in (x, y)]
    if rows is not None:
        gx, gy = gx[rows], gy[rows]
    return loss.detach().clone(), gx.clone(), gy.clone()


def naive_reference_fp64(x, y, s, b, kind):
    """(loss, dX, dY) of fmkit.reference's naive_clip_loss in float64 with autograd."""
    xd = x.detach().double().requires_grad_()
    yd = y.detach().double().requires_grad_()
    bd = None if b is None else b.detach().double()
    loss = naive_clip_loss(xd, yd, s.detach().double(), bd, kind)
    loss.backward()
    return loss.detach(), xd.grad, yd.grad


@torch.no_grad()
def reference_fp64(x, y, s, b, kind, rows=None, block=None):
    """(loss, dX[rows], dY[rows]) of the CLIP (softmax) / SigLIP (sigmoid) loss in float64, in row
    blocks of `block` logits (memory O(block + N d)); rows: the gradient rows checked (None: all).

    L = s X Y^T + b. softmax: loss = (sum_i r_i + sum_j c_j - 2 sum_i L_ii) / (2N), r / c the row /
    column log-sum-exp, G = (exp(L - r) + exp(L - c)) / (2N); sigmoid: loss = (sum_ij softplus(L_ij)
    - sum_i L_ii) / N, G = sigmoid(L) / N. dX = s (G Y - Y / N), dY = s (G^T X - X / N).
    """
    X, Y = x.detach().double(), y.detach().double()
    n = X.shape[0]
    sc = s.detach().double().reshape(())
    bias = b.detach().double().reshape(()) if b is not None else torch.zeros((), dtype=torch.float64, device=X.device)
    softmax = kind == "softmax"
    step = max(1, (block or REFERENCE_BLOCK["cuda" if X.is_cuda else "cpu"]) // n)
    row = torch.empty(n, dtype=torch.float64, device=X.device)
    col = torch.full((n,), float("-inf"), dtype=torch.float64, device=X.device) if softmax else None
    zero = torch.zeros((), dtype=torch.float64, device=X.device)
    for i0 in range(0, n, step):
        logits = (X[i0:i0 + step] @ Y.T).mul_(sc).add_(bias)
        if softmax:
            row[i0:i0 + step] = torch.logsumexp(logits, dim=1)
            col = torch.logaddexp(col, torch.logsumexp(logits, dim=0))
        else:
            row[i0:i0 + step] = torch.logaddexp(logits, zero).sum(dim=1)  # exact softplus (no threshold)
        del logits
    diag = sc * (X * Y).sum(dim=1) + bias
    if softmax:
        loss = (row.sum() + col.sum() - 2 * diag.sum()) / (2 * n)
    else:
        loss = (row.sum() - diag.sum()) / n
    idx = torch.arange(n, device=X.device) if rows is None else rows.to(X.device)
    dx = _grad_rows(X, Y, idx, sc, bias, n, softmax, row, col, step)
    dy = _grad_rows(Y, X, idx, sc, bias, n, softmax, col, row, step)  # L^T = s Y X^T + b: roles swap
    return loss, dx, dy


def _grad_rows(P, Q, idx, sc, bias, n, softmax, stat_p, stat_q, step):
    """d loss / d P[idx] for L = s P Q^T + b (P = X: stat_p = row LSE; P = Y: the column LSE)."""
    out = []
    for k0 in range(0, idx.numel(), step):
        sel = idx[k0:k0 + step]
        logits = (P[sel] @ Q.T).mul_(sc).add_(bias)
        if softmax:
            grad = (logits - stat_p[sel, None]).exp_()
            grad += (logits - stat_q[None, :]).exp_()
            grad /= 2 * n
        else:
            grad = logits.sigmoid_().div_(n)
        del logits
        out.append(sc * (grad @ Q - Q[sel] / n))
        del grad
    return torch.cat(out) if out else P.new_zeros((0, P.shape[1]))
