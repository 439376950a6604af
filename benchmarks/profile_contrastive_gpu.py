"""Profile fmkit's fused contrastive loss (Triton forward, chunked G + GEMM backward) on one GPU.

    python benchmarks/profile_contrastive_gpu.py                    # CUDA, ~30-60 s on an H100
    FMKIT_PROFILE_CPU=1 python benchmarks/profile_contrastive_gpu.py  # tiny shapes on CPU (TRITON_INTERPRET),
                                                                      # checks the script's logic only

Times (CUDA events, median of REPS after WARMUP runs), d = 768, unit-norm bf16 features:
  fwd    fmkit.triton.clip_loss.forward alone (row + column statistics)
  bwd    fmkit.triton.clip_loss.backward alone (G recompute + both gradient products)
  full   forward + backward through fmkit.ops.clip_loss (what training pays)
  naive  open_clip's materialised loss with bf16 logits, forward + backward
and the peak memory each allocates beyond its inputs. Then, at the largest N, the tile configs
of the module constants (_FWD_CONFIG / _GRAD_CONFIG), the gradient-product GEMM (cuBLAS vs the
Triton GEMM) and the G chunk budget, each with a loss / gradient check against the fp32-logits
naive loss at the smallest N, so one run can pick the best setting. A variant that fails prints
its error and the run goes on.
"""
from __future__ import annotations

import math
import os
import statistics
import time
import traceback

CPU = os.environ.get("FMKIT_PROFILE_CPU") == "1"
if CPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

import torch
import torch.nn.functional as F
from fmkit.ops import clip_loss
from fmkit.reference.clip_loss import naive_clip_loss
from fmkit.triton import clip_loss as tcl

DEV = torch.device("cpu" if CPU else "cuda")
D = 32 if CPU else 768
SIZES = (64, 96) if CPU else (8192, 32768)
WARMUP, REPS = (1, 2) if CPU else (3, 10)
KINDS = ("softmax", "sigmoid")
# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages); the first is the module default.
CONFIGS = ([(32, 32, 16, 4, 1), (16, 32, 16, 4, 1)] if CPU else
           [tcl._FWD_CONFIG, (128, 128, 64, 4, 4), (128, 256, 64, 8, 3)])
CONFIG_ATTRS = ("_CPU_CONFIG",) if CPU else ("_FWD_CONFIG", "_GRAD_CONFIG")
G_BUDGETS = (1 << 10, 1 << 12) if CPU else (1 << 27, 1 << 28, 1 << 29)


def sync():
    if DEV.type == "cuda":
        torch.cuda.synchronize()


def median_ms(fn):
    for _ in range(WARMUP):
        fn()
    sync()
    if DEV.type != "cuda":
        times = []
        for _ in range(REPS):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(REPS)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events)


def peak_extra_mib(fn):
    """Peak memory fn allocates beyond what was allocated before it (CUDA only)."""
    if DEV.type != "cuda":
        return math.nan
    sync()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    sync()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def attempt(label, fn, *args, default=math.nan):
    """fn(*args), or default after printing the error: one broken variant must not end the run."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 (OOM, compile errors, missing torch features...)
        print(f"  [{label}] failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        if os.environ.get("FMKIT_PROFILE_TRACE") == "1":
            traceback.print_exc()
        if DEV.type == "cuda":
            torch.cuda.empty_cache()
        return default


def features(n):
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(n, D, generator=g), dim=1).to(DEV, torch.bfloat16)
    y = F.normalize(torch.randn(n, D, generator=g), dim=1).to(DEV, torch.bfloat16)
    return x, y


def scalars(kind):
    # open_clip's init: scale exp(log(1/0.07)) = 14.3; SigLIP's: scale 10, bias -10.
    s = torch.tensor(14.3 if kind == "softmax" else 10.0, device=DEV, requires_grad=True)
    b = torch.tensor(-10.0, device=DEV, requires_grad=True) if kind == "sigmoid" else None
    return s, b


def weights(n, kind):
    """The per-row / per-column weights fmkit.ops passes to the kernel backward (symmetric softmax: 1/(2N))."""
    if kind == "softmax":
        w = torch.full((n,), 1 / (2 * n), device=DEV)
        return w, w.clone()
    return torch.full((n,), 1 / n, device=DEV), None


def step(loss_fn, tensors):
    def run():
        for t in tensors:
            if t is not None:
                t.grad = None
        loss_fn().backward()
    return run


class Case:
    """Callables for one (N, kind): fwd / bwd of the kernels, full and naive steps."""

    def __init__(self, n, kind):
        self.n, self.kind = n, kind
        self.x, self.y = features(n)
        self.s, self.b = scalars(kind)
        self.bias = self.b if self.b is not None else torch.zeros((), device=DEV)
        self.w_row, self.w_col = weights(n, kind)
        self.xg = self.x.clone().requires_grad_()
        self.yg = self.y.clone().requires_grad_()

    def fwd(self):
        return tcl.forward(self.x, self.y, self.s.detach(), self.bias.detach(), self.kind, self.kind == "softmax")

    def bwd_fn(self):
        row, col = self.fwd()  # statistics under the current config, outside the timed region
        s, b = self.s.detach(), self.bias.detach()
        return lambda: tcl.backward(self.x, self.y, s, b, self.kind, row, col, self.w_row, self.w_col)

    def full_fn(self):
        return step(lambda: clip_loss(self.xg, self.yg, self.s, logit_bias=self.b, kind=self.kind, backend="triton"),
                    (self.xg, self.yg, self.s, self.b))

    def naive_fn(self):
        return step(lambda: naive_clip_loss(self.xg, self.yg, self.s, self.b, self.kind),
                    (self.xg, self.yg, self.s, self.b))


def reference(kind):
    """Loss and feature gradients of the fp32-logits naive loss at the smallest N (for checks)."""
    c = Case(SIZES[0], kind)
    x = c.x.float().requires_grad_()
    y = c.y.float().requires_grad_()
    loss = naive_clip_loss(x, y, c.s.detach(), c.b.detach() if c.b is not None else None, kind)
    loss.backward()
    return c, loss.item(), x.grad, y.grad


def check(refs):
    """Max over kinds of (loss rel. error, grad rel. error) of fmkit.ops.clip_loss vs the fp32 naive loss."""
    worst = (0.0, 0.0)
    for kind in KINDS:
        c, ref_loss, ref_gx, ref_gy = refs[kind]
        xg, yg = c.x.clone().requires_grad_(), c.y.clone().requires_grad_()
        loss = clip_loss(xg, yg, c.s.detach(), logit_bias=c.b.detach() if c.b is not None else None, kind=kind,
                         backend="triton")
        loss.backward()
        lerr = abs(loss.item() - ref_loss) / abs(ref_loss)
        gerr = max(((g.float() - r).abs().max() / r.abs().max()).item() for g, r in ((xg.grad, ref_gx), (yg.grad, ref_gy)))
        worst = (max(worst[0], lerr), max(worst[1], gerr))
    return worst


def with_settings(settings, fn, *args):
    """fn(*args) with tcl's module constants temporarily replaced."""
    old = {k: getattr(tcl, k) for k in settings}
    try:
        for k, v in settings.items():
            setattr(tcl, k, v)
        return fn(*args)
    finally:
        for k, v in old.items():
            setattr(tcl, k, v)


def timed(label, fn):
    return attempt(label, median_ms, fn) if fn is not None else math.nan


def fmt(v, width=9, prec=2):
    return f"{'-':>{width}}" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:>{width}.{prec}f}"


def main():
    if DEV.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device (set FMKIT_PROFILE_CPU=1 for the CPU dry run)")
        return
    name = torch.cuda.get_device_name() if DEV.type == "cuda" else "cpu (TRITON_INTERPRET)"
    print(f"device: {name}; torch {torch.__version__}; d={D} bf16; median of {REPS} after {WARMUP} warm-up")
    print(f"defaults: fwd {tcl._FWD_CONFIG} grad {tcl._GRAD_CONFIG} mm {tcl._MM_CONFIG} "
          f"gemm={tcl._GEMM} G budget=2^{int(math.log2(tcl._G_SCRATCH_ELEMS))}")
    if DEV.type == "cuda":
        print(f"cuBLAS fp32-output 16-bit GEMM available: {tcl._cublas_fp32_out(DEV)}")
        a = torch.randn(SIZES[-1], D, device=DEV, dtype=torch.bfloat16)
        t = timed("mm peak", lambda: a @ a.T)
        print(f"bf16 torch.mm {SIZES[-1]}x{D}x{SIZES[-1]}: {fmt(t, 0)} ms = "
              f"{fmt(2 * SIZES[-1] ** 2 * D / t / 1e9, 0, 0)} TFLOP/s")
        del a

    refs = {kind: attempt(f"reference {kind}", reference, kind, default=None) for kind in KINDS}
    refs_ok = all(r is not None for r in refs.values())
    if refs_ok:
        lerr, gerr = attempt("check default", check, refs, default=(math.nan, math.nan))
        print(f"default check vs fp32 naive at N={SIZES[0]}: loss rel err {lerr:.1e}, grad rel err {gerr:.1e}")

    print("\n    N kind    |    fwd ms    bwd ms   full ms  naive ms | full/naive | TFLOP/s* | full MiB naive MiB")
    for n in SIZES:
        for kind in KINDS:
            c = attempt(f"N={n} {kind} setup", Case, n, kind, default=None)
            if c is None:
                continue
            fwd = timed("fwd", c.fwd)
            bwd = timed("bwd", attempt("bwd setup", c.bwd_fn, default=None))
            full_fn, naive_fn = c.full_fn(), c.naive_fn()
            full = timed("full", full_fn)
            full_mem = attempt("full mem", peak_extra_mib, full_fn)
            naive = timed("naive", naive_fn)
            naive_mem = attempt("naive mem", peak_extra_mib, naive_fn)
            tflops = 6 * n * n * D / full / 1e9
            print(f"{n:>6} {kind:<7} | {fmt(fwd)} {fmt(bwd)} {fmt(full)} {fmt(naive)} | {fmt(full / naive, 10)} "
                  f"| {fmt(tflops, 8, 0)} | {fmt(full_mem, 8, 0)} {fmt(naive_mem, 9, 0)}")
            del c, full_fn, naive_fn
    print("* useful 6 N^2 d FLOPs of a forward + backward over the full time; target full/naive <= 0.40")

    n = SIZES[-1]
    print(f"\nvariants at N={n} (fwd / bwd ms per kind; check = worst loss / grad rel. err at N={SIZES[0]}):")
    variants = [(f"tiles {cfg}", {attr: cfg for attr in CONFIG_ATTRS}) for cfg in CONFIGS]
    variants += [(f"gemm {g}", {"_GEMM": g}) for g in ("triton",)]
    if not CPU:
        variants += [(f"mm tiles {cfg}", {"_GEMM": "triton", "_MM_CONFIG": cfg}) for cfg in CONFIGS[1:2]]
    variants += [(f"G budget 2^{int(math.log2(g))}", {"_G_SCRATCH_ELEMS": g}) for g in G_BUDGETS]
    cases = {kind: attempt(f"N={n} {kind} setup", Case, n, kind, default=None) for kind in KINDS}

    def run(label):
        cols = []
        for kind, c in cases.items():
            if c is None:
                cols += [math.nan, math.nan]
                continue
            cols.append(timed(f"{label} {kind} fwd", c.fwd))
            cols.append(timed(f"{label} {kind} bwd", attempt(f"{label} {kind} bwd setup", c.bwd_fn, default=None)))
        err = attempt(f"{label} check", check, refs, default=(math.nan,) * 2) if refs_ok else (math.nan,) * 2
        return cols, err

    for label, settings in variants:
        cols, err = with_settings(settings, run, label)
        times = "  ".join(f"{k[:4]} {fmt(f, 7)} /{fmt(b, 7)}" for k, f, b in zip(KINDS, cols[0::2], cols[1::2]))
        print(f"  {label:<38} {times}   check {err[0]:.1e} / {err[1]:.1e}")


if __name__ == "__main__":
    main()
