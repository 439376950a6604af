"""Contrastive-loss benchmark: fmkit's fused CLIP / SigLIP loss, forward + backward, against the
naive materialised loss (open_clip's math; bf16 logits and fp32 logits) and inf-cl where importable.

FLOPs are the useful 6 N^2 d of a forward + backward (one logits GEMM, two gradient GEMMs);
'% torch.mm' is against torch.mm's rate in the input dtype measured in the same run. Extra MiB (CUDA)
is the peak memory one step allocates beyond its inputs.
"""
from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

from fmkit.bench import accuracy
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


def _step(loss_fn, x, y, s, b):
    def run():
        for t in (x, y, s, b):
            if t is not None:
                t.grad = None
        loss_fn().backward()
    return run


def _inf_cl(x, y, s):
    from inf_cl import cal_inf_loss

    labels = torch.arange(x.shape[0], device=x.device)
    return lambda: ((cal_inf_loss(x, y, labels, s) + cal_inf_loss(y, x, labels, s)) / 2).mean()


def cases(device: torch.device, quick: bool, shapes=None):
    shapes = embedded_shapes(SHAPES, device, quick, shapes)
    return [_case(n, d, dtype, kind, device) for n, d, dtype, kind in shapes]


def _case(n, d, dtype, kind, device):
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(n, d, generator=g), dim=1).to(device, dtype).requires_grad_()
    y = F.normalize(torch.randn(n, d, generator=g), dim=1).to(device, dtype).requires_grad_()
    s = torch.tensor(14.3 if kind == "softmax" else 10.0, device=device, requires_grad=True)
    b = torch.tensor(-10.0, device=device, requires_grad=True) if kind == "sigmoid" else None
    fused = _step(lambda: clip_loss(x, y, s, logit_bias=b, kind=kind), x, y, s, b)
    contenders = [(f"fmkit fused ({kind})", fused, False)]
    if n <= 65536:
        contenders.append(("naive, fp32 logits", _step(lambda: naive_clip_loss(x, y, s, b, kind, torch.float32),
                                                        x, y, s, b), True))
        if dtype != torch.float32:
            contenders.append(("naive, bf16 logits", _step(lambda: naive_clip_loss(x, y, s, b, kind), x, y, s, b), True))
    if kind == "softmax" and device.type == "cuda" and importlib.util.find_spec("inf_cl") is not None:
        contenders.append(("inf-cl (2 directions)", _step(_inf_cl(x, y, s), x, y, s, None), True))
    case = {
        "shape": f"N={n} d={d} {str(dtype).replace('torch.', '')} {kind}",
        "flops": 6.0 * n * n * d,
        "contenders": contenders,
        "peak_dtype": dtype,
        "repeats": 3,
        "settings": {name: ("fp32 GEMM (TF32 off)" if "fp32" in name and dtype == torch.float32 else "")
                     for name, _, _ in contenders},
    }
    if n <= REFERENCE_MAX_N:
        case["accuracy"] = accuracy(contenders, lambda fn: _grads(fn, x, y), _reference_grads(x, y, s, b, kind))
    return case


# Above this batch the float64 reference (6 N^2 d float64 FLOPs, blocked) costs seconds of device time.
REFERENCE_MAX_N = 32768


def _grads(step, x, y):
    """The error column compares the gradients w.r.t. both embeddings (what training uses)."""
    step()
    return x.grad.detach().clone(), y.grad.detach().clone()


def _reference_grads(x, y, s, b, kind):
    """Gradients of the loss in float64, by fmkit's plain-PyTorch blocked reference (bounded memory)."""
    xd, yd = x.detach().double().requires_grad_(), y.detach().double().requires_grad_()
    bd = None if b is None else b.detach().double()
    clip_loss(xd, yd, s.detach().double(), logit_bias=bd, kind=kind, backend="torch").backward()
    return xd.grad, yd.grad
