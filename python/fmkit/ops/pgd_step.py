"""Fused in-place PGD step (spec: shared/specs/adversarial.md §1.1, §2.3).

Per sample b, norms over all non-batch dims, C(v) = clamp(v, lo, hi):

    linf: x' = x + a sign(g);              d = clamp(x' - x0, -eps, eps);     x <- C(x0 + d)
          (torchattacks PGD, in that order; fp32 results equal the formula bitwise)
    l2:   x' = x + a g / (|g|_2 + 1e-10);  d = x' - x0;  d <- d min(1, eps / |d|_2);  x <- C(x0 + d)
          (torchattacks PGDL2: project, then clip; advertorch clips first and can differ)
    l1:   x' = x + a g / (|g|_1 + 1e-10);  d = x' - x0;  d <- P_eps(d);     x <- C(x0 + d)
          P_eps: exact Euclidean projection onto the L1 ball of radius eps (sort-based, Duchi et al.
          2008). This is fmkit's own definition (a normalised-gradient step), NOT AutoAttack's
          APGD-L1 step (sparse top-k direction). It has no compiled or Triton kernel: it runs
          the torch formulas (torch.sort, no host sync) under backend "auto" or "torch", and
          naming "cpu", "cuda" or "triton" for it is an error rather than a silent fallback.

sign(0) = 0; eps = inf never projects; samples with active[b] = False stay bit-identical.
Reductions accumulate in fp32; 16-bit tensors are computed in fp32 and rounded once on store.

Backends: "cpu" (C++/OpenMP, CPU tensors), "cuda" (kernels/pgd_step.cu), "triton", "torch"
(fmkit.reference.pgd_step, the oracle); "auto" picks cpu for CPU tensors and cuda (else triton)
for CUDA tensors. The compiled and Triton kernels need contiguous tensors: grad and x_orig are
made contiguous (a copy when they are not), and a non-contiguous x_adv is updated through a
contiguous copy written back with copy_.

No host synchronisation on the kernel path, so a fixed-shape attack loop can be captured in a
CUDA graph. The one exception is `validate=True` (the default) with tensor eps / step_size:
checking that they are >= 0 reads them on the host. Pass validate=False inside graphs.

Arrays: torch tensors, or numpy / cupy arrays, which are updated in place through a zero-copy
DLPack view (so x_adv must be writable) and returned as they came. float64 is not accepted:
the kernels are fp32 / 16-bit (convert with x.astype(numpy.float32) or x.float()).
"""
from __future__ import annotations

import math
from numbers import Real

import torch

from fmkit.ops import _backend
from fmkit.reference import pgd_step as _reference

NORMS = ("linf", "l2", "l1")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
GPU_BACKEND_ORDER = ("cuda", "triton")


def pgd_step_(x_adv, grad, x_orig, *, eps, step_size, norm="linf", active=None, clamp=(0.0, 1.0), backend="auto",
              validate=True, check_values=None):
    """One projected-gradient ascent step, in place on x_adv [B, ...]; returns x_adv.

    grad, x_orig: same shape, dtype (float32, float16, bfloat16) and device as x_adv.
    eps, step_size: Python floats (>= 0; eps may be inf: unbounded) or per-sample tensors [B]
    on x_adv's device. active: optional bool [B]; inactive samples are not touched.
    clamp: (lo, hi) with lo <= hi, or None for no box constraint.
    validate: check tensor eps / step_size values (>= 0, not NaN); this synchronises the host,
    so pass False in CUDA-graph captures. Python floats are always checked. `check_values` is
    its deprecated old name.
    Ascent on `grad`: minimising attacks pass the negated gradient.
    """
    check_values = _backend.deprecated_switch("pgd_step_", validate, check_values=check_values)
    given = x_adv
    x_adv, _ = _backend.to_torch(x_adv, "x_adv")
    grad, _ = _backend.to_torch(grad, "grad")
    x_orig, _ = _backend.to_torch(x_orig, "x_orig")
    B = _check_tensors(x_adv, grad, x_orig)
    if norm not in NORMS:
        raise ValueError(f"norm: expected one of {NORMS}, got {norm!r}")
    eps_t = _per_sample(eps, "eps", x_adv, B, check_values)
    step_t = _per_sample(step_size, "step_size", x_adv, B, check_values)
    if active is not None:
        if not isinstance(active, torch.Tensor) or active.dtype != torch.bool:
            got = _backend.dtype_name(active.dtype) if isinstance(active, torch.Tensor) else type(active).__name__
            raise TypeError(f"active: expected a bool tensor of shape [{B}], got {got}")
        if active.shape != (B,):
            raise ValueError(f"active: expected a bool tensor of shape [{B}], got shape {list(active.shape)}")
        if active.device != x_adv.device:
            raise ValueError(f"active: on {active.device}, but x_adv is on {x_adv.device}")
    lo, hi = _check_clamp(clamp)
    _backend.resolve_backend(backend, x_adv.device, "pgd_step_", GPU_BACKEND_ORDER)
    if norm == "l1" and backend not in ("auto", "torch"):
        raise ValueError(f"backend={backend!r} has no kernel for norm='l1' (the L1-ball projection runs in "
                         "torch); pass backend='auto' or backend='torch'")
    if _backend.plain_eager(x_adv, grad, x_orig, eps_t, step_t, active):
        _pgd_step_impl(x_adv, grad, x_orig, eps_t, step_t, active, norm, lo, hi, backend)
    else:
        torch.ops.fmkit.pgd_step(x_adv, grad, x_orig, eps_t, step_t, active, norm, lo, hi, backend)
    return given


def _check_tensors(x, g, x0):
    for name, t in (("x_adv", x), ("grad", g), ("x_orig", x0)):
        _backend.check_dtype(t, name, DTYPES, "; convert first, e.g. x.astype(numpy.float32) or x.float()")
    if x.dim() < 1:
        raise ValueError("x_adv: expected a batched tensor [B, ...], got a 0-d tensor")
    for name, t in (("grad", g), ("x_orig", x0)):
        if t.shape != x.shape:
            raise ValueError(f"{name}: shape {list(t.shape)} does not match x_adv {list(x.shape)}")
        if t.dtype != x.dtype:
            raise TypeError(f"{name}: dtype {_backend.dtype_name(t.dtype)} does not match x_adv {_backend.dtype_name(x.dtype)}")
        if t.device != x.device:
            raise ValueError(f"{name}: on {t.device}, but x_adv is on {x.device}")
    return x.shape[0]


def _per_sample(v, name, x, B, check_values):
    """fp32 [B] tensor on x's device (no host sync for tensor inputs unless check_values)."""
    if isinstance(v, torch.Tensor):
        if v.dim() > 1 or (v.dim() == 1 and v.shape[0] != B):
            raise ValueError(f"{name}: expected a Python float or a tensor of shape [{B}], got shape {list(v.shape)}")
        if not v.is_floating_point():
            raise TypeError(f"{name}: expected a floating-point tensor, got {_backend.dtype_name(v.dtype)}")
        if v.device != x.device:
            raise ValueError(f"{name}: on {v.device}, but x_adv is on {x.device}")
        if check_values and bool(((v < 0) | torch.isnan(v)).any()):
            raise ValueError(f"{name}: expected values >= 0 (inf allowed for eps), got a negative or NaN entry")
        return v.detach().to(torch.float32).expand(B).contiguous()
    if isinstance(v, bool) or not isinstance(v, Real):
        raise TypeError(f"{name}: expected a Python float or a [B] tensor, got {type(v).__name__}")
    v = float(v)
    if not v >= 0 or (name == "step_size" and math.isinf(v)):
        raise ValueError(f"{name}: expected a finite value >= 0{' (or inf)' if name == 'eps' else ''}, got {v}")
    return torch.full((B,), v, dtype=torch.float32, device=x.device)


def _check_clamp(clamp):
    if clamp is None:
        return -math.inf, math.inf
    try:
        lo, hi = (float(c) for c in clamp)
    except (TypeError, ValueError):
        raise ValueError(f"clamp: expected (low, high) floats or None, got {clamp!r}") from None
    if not lo <= hi:
        raise ValueError(f"clamp: expected low <= high, got ({lo}, {hi})")
    return lo, hi


def _pgd_step_impl(x_adv: torch.Tensor, grad: torch.Tensor, x_orig: torch.Tensor, eps: torch.Tensor,
                   step_size: torch.Tensor, active: torch.Tensor | None, norm: str, lo: float, hi: float,
                   backend: str) -> None:
    name = "torch" if norm == "l1" else _backend.resolve_backend(backend, x_adv.device, "pgd_step_",
                                                                 GPU_BACKEND_ORDER)
    if name == "torch":
        _reference.pgd_step_(x_adv, grad, x_orig, eps, step_size, active, norm, lo, hi)
        return
    B = x_adv.shape[0]
    x = x_adv if x_adv.is_contiguous() else x_adv.contiguous()
    x2, g2, z2 = x.view(B, -1), grad.contiguous().view(B, -1), x_orig.contiguous().view(B, -1)
    act = active.contiguous() if active is not None else None
    if name == "triton":
        import fmkit.triton.pgd_step as tk

        tk.pgd_step_(x2, g2, z2, eps, step_size, act, norm, lo, hi)
    else:
        dl = _backend.dlpack
        args = (dl(x2), dl(g2), dl(z2), dl(eps), dl(step_size), dl(act) if act is not None else None, norm, lo, hi)
        if name == "cpu":
            _backend._C.pgd_step_cpu(*args, _backend.cpu_threads())
        else:  # cuda
            ws = torch.empty(_backend._C.pgd_step_workspace_floats_cuda(B, x2.shape[1]), dtype=torch.float32,
                             device=x.device)
            with torch.cuda.device(x.device):
                _backend._C.pgd_step_cuda(*args, dl(ws), _backend.current_stream(x.device))
    if x is not x_adv:
        x_adv.copy_(x)


_pgd_step_op = torch.library.custom_op("fmkit::pgd_step", _pgd_step_impl, mutates_args=("x_adv",))


@_pgd_step_op.register_fake
def _pgd_step_fake(x_adv, grad, x_orig, eps, step_size, active, norm, lo, hi, backend):
    return None
