"""fmkit: fused C++/CUDA/Triton kernels and the methods of ten foundation-model papers."""
from __future__ import annotations

__version__ = "0.1.0"

# torch first: _C and torch both need libgomp.so.1, and the copy loaded first serves both
# (one OpenMP runtime); it should be the one torch ships with.
import torch  # noqa: E402,F401

try:  # a bad FMKIT_SIMD must fail the import, not quietly leave fmkit without its compiled kernels
    from fmkit import _C  # noqa: F401
except ImportError as _exc:
    if "FMKIT_SIMD" in str(_exc):
        raise
from fmkit import ops  # noqa: E402


def info() -> dict:
    """Version, compiled backends (with CUDA architectures), triton availability, torch version."""
    import torch

    from fmkit.ops import _backend

    c = _backend._C
    return {
        "fmkit": __version__,
        "compiled_backends": _backend.compiled_backends(),
        "cuda_archs": (c.cuda_archs.split(",") if c is not None and c.with_cuda else []),
        "openmp": bool(c is not None and c.with_openmp),
        # CPU kernels' SIMD level: best the CPU supports, in use (FMKIT_SIMD overrides), built in
        "simd_detected": c.simd_detected if c is not None else None,
        "simd_selected": c.simd_selected if c is not None else None,
        "simd_compiled": list(c.simd_compiled) if c is not None else [],
        "triton": _backend.triton_available(),
        "torch": torch.__version__,
        "torch_cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "cpu_threads": torch.get_num_threads(),
    }


__all__ = ["info", "ops", "__version__"]
