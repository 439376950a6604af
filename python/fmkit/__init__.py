"""fmkit: fused C++/CUDA/Triton kernels and the methods of ten foundation-model papers."""
from __future__ import annotations

__version__ = "0.1.0"



def __getattr__(name):
    # `fmkit.ops` (and with it torch) loads on first use, so that `fmkit --help` and the CLI's
    # argument errors do not wait seconds for torch.
    if name == "ops":
        import importlib

        return importlib.import_module("fmkit.ops")
    raise AttributeError(f"module 'fmkit' has no attribute {name!r}")


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
