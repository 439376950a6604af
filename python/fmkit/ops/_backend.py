"""Backend choice, argument checks and the DLPack hand-off to the compiled extension.

Every public op calls `resolve_backend` with the tensor it will run on; `cpu_threads` and
`dlpack` are what the op passes across the boundary. Checks here use the user's
vocabulary (argument names, expected shapes); the C++ side re-checks what it relies on.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Any, Callable

import torch
import torch.utils.dlpack

BACKENDS = ("auto", "cuda", "triton", "cpu", "torch")

try:
    from fmkit import _C  # noqa: F401

    _C_ERROR = None
except ImportError as exc:  # a source checkout that was never built
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
    """Maps `backend` to a concrete backend for tensors on `device`, or raises ValueError."""
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    on_cuda = device.type == "cuda"
    if backend == "auto":
        if on_cuda:
            for candidate in auto_gpu_order:
                if _available(candidate, on_cuda):
                    return candidate
            return "torch"
        return "cpu" if _available("cpu", on_cuda) else "torch"
    if not _available(backend, on_cuda):
        raise ValueError(f"backend={backend!r} is not available for {op} on {device.type} tensors: {_why(backend, on_cuda)}")
    return backend


def _available(backend: str, on_cuda: bool) -> bool:
    return _why(backend, on_cuda) is None


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
    if name == "cuda":
        raise ValueError(f"backend='cuda': {op} has no CUDA kernel yet; use 'triton' or 'auto'")
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
    raise ValueError(f"{name}: expected a torch.Tensor, numpy.ndarray or cupy.ndarray, got {type(x).__name__}")


def check_matrix(x: torch.Tensor, name: str, dtypes: tuple[torch.dtype, ...]) -> None:
    if x.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D [rows, dim] tensor, got shape {list(x.shape)}")
    if x.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise ValueError(f"{name}: expected dtype {names}, got {str(x.dtype).replace('torch.', '')}")


def check_finite(x: torch.Tensor, name: str, limit: float) -> None:
    """Rejects NaN/inf, and magnitudes whose squares would overflow float32 accumulation."""
    if x.numel() == 0:
        return
    peak = torch.linalg.vector_norm(x.detach(), float("inf")).item()  # max |x| without a temporary
    if not peak <= limit:  # also catches NaN
        what = "NaN or inf" if not torch.isfinite(torch.tensor(peak)) else f"values of magnitude {peak:.3g}"
        raise ValueError(
            f"{name}: contains {what}; expected finite values with |x| <= {limit:.0e} "
            "(pass check_finite=False to skip this check)"
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
