"""PGD step benchmark: fmkit's fused in-place step (linf, l2) against the eager torchattacks formulas
(and, on CUDA, torch.compile of those formulas). Anchors: shared/specs/adversarial.md §1.3.

The op moves bytes, it does no FLOP-bound work: the "flops" field is elements * 4, so the table's
GFLOP/s column reads as (G elements * 4)/s, i.e. GB/s of fp32 traffic at the 4-transfer minimum of
the linf step (read x, g, x0; write x). '% peak' against the GEMM peak is meaningless for this op.

Error column ("rel err vs fp64"): ||x_new - x_new64|| / ||x_new64|| of the updated tensor after one
step from the same (x, g, x0), against fmkit.reference.pgd_step's update computed in float64
(computed once per case). fmkit's in-place contenders step a copy of x for it (outside the timing);
the anchors return the new tensor. 16-bit cases carry the output's rounding (~1e-3 in bf16).
The torch.compile anchor runs at mode="default": max-autotune(-no-cudagraphs) would spend device
time autotuning kernels that are pure bandwidth, and was not tried; the setting column says so.
"""
from __future__ import annotations

import sys

import torch

from fmkit.bench import LazyCases, accuracy, auto_backend
from fmkit.bench._shapes import embedded_shapes
from fmkit.ops.pgd_step import pgd_step_
from fmkit.reference.pgd_step import pgd_step_values

SHAPES = {  # (B, C, H, W, dtype, norm)
    ("cpu", "quick"): [(16, 3, 224, 224, torch.float32, norm) for norm in ("linf", "l2")],
    ("cpu", "full"): [(64, 3, 224, 224, torch.float32, norm) for norm in ("linf", "l2")],
    ("cuda", "quick"): [(64, 3, 224, 224, torch.float32, norm) for norm in ("linf", "l2")],
    ("cuda", "full"): [(256, 3, 224, 224, torch.float32, norm) for norm in ("linf", "l2")]
    + [(256, 3, 224, 224, torch.bfloat16, norm) for norm in ("linf", "l2")],
}


def eager_linf(x, g, x0, eps, alpha):
    """torchattacks PGD step (returns the new x)."""
    adv = x + alpha * g.sign()
    delta = torch.clamp(adv - x0, min=-eps, max=eps)
    return torch.clamp(x0 + delta, min=0, max=1)


def eager_l2(x, g, x0, eps, alpha):
    """torchattacks PGDL2 step (returns the new x)."""
    B = x.shape[0]
    gn = torch.norm(g.view(B, -1), p=2, dim=1) + 1e-10
    adv = x + alpha * g / gn.view(B, 1, 1, 1)
    delta = adv - x0
    dn = torch.norm(delta.view(B, -1), p=2, dim=1)
    factor = torch.min(eps / dn, torch.ones_like(dn))
    return torch.clamp(x0 + delta * factor.view(B, 1, 1, 1), min=0, max=1)


# The torch.compile anchor (tests switch it off: compiling costs seconds).
COMPILE_ANCHOR = True


def _inductor_cpu_available() -> bool:
    """torch.compile's CPU backend (inductor) needs a C++ compiler at run time."""
    import shutil

    return any(shutil.which(c) for c in ("g++", "c++", "clang++"))


def cases(device: torch.device, quick: bool, shapes=None):
    """The cases, each built (inputs, float64 reference, error column) when the run reaches it."""
    shapes = embedded_shapes(SHAPES, device, quick, shapes)
    return LazyCases([lambda s=s: _case(*s, device) for s in shapes])




def reference_fp64(x, g, x0, eps, alpha, norm):
    """The new x of one step in float64 (fmkit.reference.pgd_step, clamp to [0, 1])."""
    B = x.shape[0]
    e = torch.full((B,), eps, dtype=torch.float64, device=x.device)
    a = torch.full((B,), alpha, dtype=torch.float64, device=x.device)
    return pgd_step_values(x.double(), g.double(), x0.double(), e, a, norm, 0.0, 1.0)


def _case(B, C, H, W, dtype, norm, device):
    gen = torch.Generator().manual_seed(0)
    eps, alpha = (8 / 255, 2 / 255) if norm == "linf" else (0.5, 0.1)
    x0 = torch.rand(B, C, H, W, generator=gen).to(device, dtype)
    x = (x0.float() + (torch.rand(B, C, H, W, generator=gen).to(device) * 2 - 1) * eps).clamp(0, 1).to(dtype)
    g = torch.randn(B, C, H, W, generator=gen).to(device, dtype)
    xf = x.clone()
    eager = eager_linf if norm == "linf" else eager_l2
    contenders = [(f"fmkit pgd_step_ ({norm})",
                   lambda: pgd_step_(xf, g, x0, eps=eps, step_size=alpha, norm=norm), False)]
    if device.type == "cuda":
        contenders.append((f"fmkit pgd_step_ ({norm}, triton)",
                           lambda: pgd_step_(xf, g, x0, eps=eps, step_size=alpha, norm=norm, backend="triton"), False))
    contenders.append((f"eager torchattacks {norm}", lambda: eager(x, g, x0, eps, alpha), True))
    if COMPILE_ANCHOR and (device.type == "cuda" or _inductor_cpu_available()):
        compiled = torch.compile(eager)
        contenders.append((f"torch.compile torchattacks {norm}", lambda: compiled(x, g, x0, eps, alpha), True))
    # The error column: one step from x (fmkit's in-place contenders on a copy, xf) against the
    # float64 reference update on the same inputs.
    def output_of(fn):
        if fn in fmkit_fns:
            xf.copy_(x)
            fn()
            return xf.clone()
        return fn()

    fmkit_fns = [fn for _, fn, anchor in contenders if not anchor]
    try:
        acc = accuracy(contenders, output_of, reference_fp64(x, g, x0, eps, alpha, norm))
    except Exception as exc:  # e.g. out of memory for the float64 copies: no error column, the timing still runs
        print(f"\npgd_step: float64 reference failed ({type(exc).__name__}: {exc})"[:300], file=sys.stderr)
        acc = {name: float("nan") for name, _, _ in contenders}
    if device.type == "cuda":
        torch.cuda.empty_cache()
    settings = {contenders[0][0]: f"backend=auto ({auto_backend(device, 'pgd_step_')})",
                f"eager torchattacks {norm}": "torchattacks formulas, eager"}
    if device.type == "cuda":
        settings[f"fmkit pgd_step_ ({norm}, triton)"] = "backend=triton"
    settings[f"torch.compile torchattacks {norm}"] = "torch.compile mode=default (max-autotune not tried: compile time)"
    settings = {name: settings[name] for name, _, _ in contenders if name in settings}
    return {
        "shape": f"{B}x{C}x{H}x{W} {str(dtype).replace('torch.', '')} {norm}",
        "flops": 4.0 * x.numel(),
        "contenders": contenders,
        "repeats": 5,
        "accuracy": acc,
        "settings": settings,
    }
