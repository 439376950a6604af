"""The one path every public op takes: validate -> resolve backend -> dispatch.

The contract (README "Op conventions"):
* arrays: torch tensors, numpy arrays and cupy arrays in (`to_torch`, zero-copy through
  DLPack), the same kind out;
* `validate=True`: the switch that skips the checks which read values (NaN/inf, ranges) and
  may synchronise a GPU; `deprecated_switch` maps the old names (check_finite, check_values,
  check_index) onto it for one release with a DeprecationWarning;
* TypeError for a wrong type (not an array, a wrong dtype), ValueError for a wrong value
  (shape, range, device, unknown option), each starting with the argument's name and saying
  what is accepted;
* `resolve_backend`: "auto" picks the fastest available backend of the op, a named backend is
  that backend or a ValueError saying why not and which backends the op has. "cuda" means
  fmkit's CUDA kernels, built for the device's architecture (`cuda_arch_problem`);
* `plain_eager` dispatch: eager calls of ops without an autograd formula run the Python
  implementation directly, compiled or traced calls go through the torch.library op.
`cpu_threads` and `dlpack` are what an op passes across the C++ boundary, which re-checks
what it relies on.
"""
from __future__ import annotations

import importlib.util
import os
import warnings
from typing import Any, Callable

import torch
import torch.utils.dlpack

BACKENDS = ("auto", "cuda", "triton", "cpu", "torch")
# The backends each op has ("torch" is the plain-PyTorch reference, on any device).
OP_BACKENDS = {
    "knn": ("cuda", "triton", "cpu", "torch"),
    "kmeans": ("cuda", "triton", "cpu", "torch"),
    "pgd_step_": ("cuda", "triton", "cpu", "torch"),
    "gaussian_kde": ("triton", "cpu", "torch"),
    "clip_loss": ("triton", "cpu", "torch"),
    "perceiver_attention": ("triton", "cpu", "torch"),
    "media_cross_attention": ("triton", "cpu", "torch"),
    "stain_jitter": ("triton", "cpu", "torch"),
    "class_spectrum": ("cpu", "torch"),
}

try:
    from fmkit import _C  # noqa: F401

    _C_ERROR = None
except ImportError as exc:  # a source checkout that was never built
    if "FMKIT_SIMD" in str(exc):  # a bad FMKIT_SIMD fails loudly, not by falling back to torch
        raise
    _C = None
    _C_ERROR = exc


def compiled_backends() -> list[str]:
    if _C is None:
        return []
    return ["cpu"] + (["cuda"] if _C.with_cuda else [])


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(backend: str, device: torch.device, op: str, auto_gpu_order: tuple[str, ...]) -> str:
    """Maps `backend` to a concrete backend of `op` for tensors on `device`, or raises ValueError."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
    has = OP_BACKENDS.get(op, BACKENDS[1:])
    on_cuda = device.type == "cuda"
    if backend == "auto":
        if on_cuda:
            for candidate in auto_gpu_order:
                if candidate == "cuda" and _available("cuda", on_cuda) and cuda_arch_problem(device):
                    _warn_cuda_fallback_once(device)
                    continue
                if _available(candidate, on_cuda):
                    return candidate
            return "torch"
        return "cpu" if _available("cpu", on_cuda) else "torch"
    if backend not in has:
        raise ValueError(f"backend={backend!r}: {op} has no {backend} kernel; its backends are "
                         f"{', '.join(map(repr, ('auto',) + has))}")
    why = _why(backend, on_cuda) or (cuda_arch_problem(device) if backend == "cuda" else None)
    if why:
        raise ValueError(f"backend={backend!r} is not available for {op} on {device.type} tensors: {why}")
    return backend


def _available(backend: str, on_cuda: bool) -> bool:
    return _why(backend, on_cuda) is None


def built_cuda_archs() -> list[str]:
    """CMake CUDA architecture entries compiled into fmkit._C, e.g. ["80", "90-real", "90a"]."""
    if _C is None or not _C.with_cuda:
        return []
    return [a.strip() for a in _C.cuda_archs.replace(";", ",").split(",") if a.strip()]


def arch_runs_on(entry: str, capability: tuple[int, int]) -> bool:
    """Whether code built for the CMake architecture `entry` runs on a device of `capability`.

    "NN-real" is machine code (SASS): the same major version, minor >= its own. "NN" also
    embeds PTX, and "NN-virtual" is PTX only: the driver compiles it for any newer device.
    Arch-specific targets ("90a", "100a") run only on that exact architecture.
    """
    number, _, kind = entry.partition("-")
    specific = number[-1:].isalpha()
    digits = number.rstrip("abcdefghijklmnopqrstuvwxyz")
    if not digits.isdigit():
        return False
    built = (int(digits) // 10, int(digits) % 10)
    if specific:
        return capability == built
    if kind == "real":
        return capability[0] == built[0] and capability[1] >= built[1]
    return capability >= built


def cuda_arch_problem(device: torch.device) -> str | None:
    """None if fmkit's CUDA kernels can run on `device`, else a message naming the card and the
    architectures built into this install."""
    capability = torch.cuda.get_device_capability(device)
    archs = built_cuda_archs()
    if any(arch_runs_on(a, capability) for a in archs):
        return None
    name = torch.cuda.get_device_name(device)
    return (f"fmkit's CUDA kernels were built for {', '.join('sm_' + a for a in archs) or 'no architecture'}, "
            f"which cannot run on {name} (sm_{capability[0]}{capability[1]}); rebuild with "
            f"FMKIT_CUDA_ARCHS={capability[0]}{capability[1]}, or use backend='triton'")


_warned_cuda_fallback: set[str] = set()


def _warn_cuda_fallback_once(device: torch.device) -> None:
    key = str(device)
    if key not in _warned_cuda_fallback:
        _warned_cuda_fallback.add(key)
        warnings.warn(f"{cuda_arch_problem(device)}. backend='auto' runs the Triton kernels (or the torch "
                      "reference) instead; this is said once per device.", RuntimeWarning, stacklevel=4)


def _why(backend: str, on_cuda: bool) -> str | None:
    if backend == "torch":
        return None
    if backend == "cpu":
        if on_cuda:
            return "the cpu backend needs CPU tensors"
        return None if _C is not None else f"fmkit._C is not built ({_C_ERROR})"
    if backend == "cuda":
        if not on_cuda:
            return "the cuda backend needs CUDA tensors"
        if _C is None or not _C.with_cuda:
            return "fmkit was built without CUDA kernels (rebuild with FMKIT_CUDA=ON)"
        return None
    if backend == "triton":
        if not triton_available():
            return "triton is not installed"
        if not on_cuda and not triton_interpreted():
            return "triton kernels need CUDA tensors (or TRITON_INTERPRET=1 on the CPU)"
        return None
    return f"unknown backend {backend!r}"


def select_kernels(op: str, backend: str, x: torch.Tensor, *, cpu, torch_impl, triton_module: str,
                   gpu_order: tuple[str, ...]):
    """The kernel set (an object with the op's contract functions) for tensors like `x`.

    float64 always runs the torch reference (the compiled and Triton kernels are fp32/16-bit).
    """
    if x.dtype == torch.float64:
        return torch_impl
    name = resolve_backend(backend, x.device, op, gpu_order)
    if name == "cpu":
        return cpu
    if name == "triton":
        return importlib.import_module(f"fmkit.triton.{triton_module}")
    return torch_impl


def plain_eager(*tensors: torch.Tensor) -> bool:
    """True when an op may run its Python implementation directly instead of through its
    torch.library registration: not under torch.compile / export tracing, no dispatch mode
    (FakeTensorMode, make_fx) active, no functorch transform wrapping the inputs.

    The registered op's first eager call imports torch._dynamo (torch wraps every custom-op
    kernel in a dynamo-disable guard), about 3 s in a fresh process, and each call adds
    dispatcher overhead; the ops that need no autograd formula take this shortcut.
    """
    if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() > 0:
        return False
    is_wrapped = torch._C._functorch.is_functorch_wrapped_tensor
    return all(type(t) is torch.Tensor and not is_wrapped(t) for t in tensors if t is not None)


def accumulation_dtype(x: torch.Tensor) -> torch.dtype:
    """fp32 for fp32/16-bit inputs, fp64 for fp64 inputs (the gradcheck path)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def check_float64_backend(name: str, x: torch.Tensor, backend: str) -> None:
    if x.dtype == torch.float64 and backend not in ("auto", "torch"):
        raise ValueError(f"{name}: float64 runs only on backend='torch' (the reference), not {backend!r}")


def deprecated_switch(op: str, validate: bool, **old: bool | None) -> bool:
    """The `validate` switch; an old name (check_finite=, check_values=, check_index=) still
    works for one release, with a DeprecationWarning."""
    for name, value in old.items():
        if value is not None:
            warnings.warn(f"{op}: {name}= is deprecated and will be removed in the next release; "
                          f"pass validate={bool(value)} instead", DeprecationWarning, stacklevel=3)
            return bool(value) and bool(validate)
    return bool(validate)


def check_int(value: Any, name: str, low: int | None = None, high: int | None = None, what: str = "") -> None:
    """TypeError unless `value` is an int (not a bool), ValueError outside [low, high]."""
    import numbers

    bounds = f" in [{low}, {high if what == '' else what}]" if high is not None else (f" >= {low}" if low is not None else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an integer{bounds}, got {type(value).__name__} {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name}: expected an integer{bounds}, got {value!r}")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def dtypes_text(dtypes) -> str:
    names = [dtype_name(d) for d in dtypes]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def check_dtype(x: torch.Tensor, name: str, dtypes, hint: str = "") -> None:
    """TypeError naming the argument, the accepted dtypes and (hint) how to convert."""
    if x.dtype not in dtypes:
        raise TypeError(f"{name}: expected dtype {dtypes_text(dtypes)}, got {dtype_name(x.dtype)}{hint}")


def cpu_threads() -> int:
    return torch.get_num_threads()


def dlpack(t: torch.Tensor) -> Any:
    return torch.utils.dlpack.to_dlpack(t.detach())


def current_stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


# ---- foreign arrays (numpy, cupy) in, the same kind out, zero-copy through DLPack ----

def to_torch(x: Any, name: str) -> tuple[torch.Tensor, Callable[[torch.Tensor], Any]]:
    """Returns (torch view of x, function converting a torch result back to x's kind)."""
    if isinstance(x, torch.Tensor):
        return x, lambda t: t
    module = type(x).__module__.split(".")[0]
    if module == "numpy":
        return torch.from_numpy(x), lambda t: t.numpy(force=True)
    if module == "cupy":
        import cupy

        return torch.from_dlpack(x), lambda t: cupy.from_dlpack(t.detach())
    if hasattr(x, "__dlpack__"):
        return torch.from_dlpack(x), lambda t: t
    raise TypeError(f"{name}: expected a torch.Tensor, numpy.ndarray or cupy.ndarray, got {type(x).__name__}")


def check_matrix(x: torch.Tensor, name: str, dtypes: tuple[torch.dtype, ...], hint: str = "") -> None:
    if x.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D [rows, dim] tensor, got shape {list(x.shape)}")
    check_dtype(x, name, dtypes, hint)


def check_finite(x: torch.Tensor, name: str, limit: float) -> None:
    """Rejects NaN/inf, and magnitudes whose squares would overflow float32 accumulation."""
    if x.numel() == 0:
        return
    peak = torch.linalg.vector_norm(x.detach(), float("inf")).item()  # max |x| without a temporary
    if not peak <= limit:  # also catches NaN
        what = "NaN or inf" if not torch.isfinite(torch.tensor(peak)) else f"values of magnitude {peak:.3g}"
        raise ValueError(
            f"{name}: contains {what}; expected finite values with |x| <= {limit:.0e} "
            "(pass validate=False to skip this check)"
        )


def recompute_grads(fn, inputs, grad_output):
    """Gradients of fn(*inputs) against grad_output by re-running fn under autograd.

    The `torch` backend of an op uses this as its backward: its forward ran without a graph.
    """
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(t.dtype.is_floating_point) for t in inputs]
        out = fn(*leaves)
        wrt = [t for t in leaves if t.requires_grad]
        grads = iter(torch.autograd.grad(out, wrt, grad_output, allow_unused=True))
    return [next(grads) if t.requires_grad else None for t in leaves]


def check_heads_like_q(named_tensors) -> None:
    """Attention inputs: each (name, tensor) is 4-D [B, H, rows, D] with the dtype and device of
    the first one, q."""
    named_tensors = list(named_tensors)
    q = named_tensors[0][1]
    for name, t in named_tensors:
        if t.dim() != 4:
            raise ValueError(f"{name}: expected a 4-D [B, H, rows, D] tensor, got shape {list(t.shape)}")
        if t.dtype != q.dtype:
            raise TypeError(f"{name}: expected dtype {dtype_name(q.dtype)} like q, got {dtype_name(t.dtype)}")
        if t.device != q.device:
            raise ValueError(f"{name}: expected device {q.device} like q, got {t.device}")
