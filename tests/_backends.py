"""Which backends a test may offer on CPU tensors in this process.

Triton kernels run on CPU tensors only in the Triton interpreter, which conftest.py turns on
when there is no GPU; on a GPU machine the interpreter is off, so the CPU-tensor suites leave
triton out and the gpu-marked suites run it on CUDA tensors instead.
"""
import os

from fmkit.ops import _backend

TRITON_ON_CPU = _backend.triton_available() and os.environ.get("TRITON_INTERPRET") == "1"
WHY_NO_TRITON_ON_CPU = "triton runs on CPU tensors only in the interpreter (no GPU); the gpu tests cover it"


def cpu_backends(*names: str) -> list[str]:
    """`names` less triton where it cannot run on CPU tensors here."""
    return [n for n in names if n != "triton" or TRITON_ON_CPU]
