"""Where each op's backends can run in this test process: (backend, device) pairs.

The suites that parametrise over backends take their cases from `placements`, so the same
assertions run on a machine without a GPU and on one with a GPU. The rule is the library's
own (fmkit.ops._backend: `_why`, `cuda_arch_problem`, `OP_BACKENDS`, `triton_interpreted`),
with the test-process choice of device added:

* torch: always, on CPU tensors (the plain-PyTorch reference);
* cpu: on CPU tensors when fmkit._C is built;
* triton: on CPU tensors only while the Triton interpreter is on (TRITON_INTERPRET=1, which
  conftest.py sets when there is no GPU); on CUDA tensors only with a GPU and the interpreter
  off. On a GPU machine the triton cases therefore run on CUDA tensors instead of failing on
  CPU ones;
* cuda: on CUDA tensors with a GPU and fmkit._C built with CUDA kernels for its architecture.
"""
import pytest
import torch

from fmkit.ops import _backend

HAS_CUDA = torch.cuda.is_available()


def why_not(backend: str, device, op: str | None = None) -> str | None:
    """None if `op` (any op when None) can run `backend` on `device` tensors here, else why not."""
    device = torch.device(device)
    if op is not None and backend not in _backend.OP_BACKENDS[op]:
        return f"{op} has no {backend} kernel"
    if device.type == "cuda":
        if not HAS_CUDA:
            return "no CUDA device"
        if backend == "triton" and _backend.triton_interpreted():
            return "the Triton interpreter is on (TRITON_INTERPRET=1): triton runs on CPU tensors"
    elif device.type != "cpu":
        return f"the tests run on cpu or cuda, not {device.type}"
    why = _backend._why(backend, device.type == "cuda")
    if why is None and backend == "cuda":
        why = _backend.cuda_arch_problem(device)
    return why


def placements(op: str, *backends: str, slow_on_cpu=(), devices=("cpu", "cuda")) -> list:
    """pytest params (backend, device) for `backends` (default: all of op's) of `op`: each
    backend on the first of `devices` where it runs here, left out where it runs on none.

    A CPU case keeps the bare backend as its id (the ids of a machine without a GPU do not
    change), another device is added to it ("triton-cuda"). Backends in `slow_on_cpu` are
    marked slow on CPU tensors (the Triton interpreter), not on the GPU.
    Loops take the pairs as `[p.values for p in placements(...)]`.
    """
    params = []
    for backend in backends or _backend.OP_BACKENDS[op]:
        device = next((d for d in devices if why_not(backend, d, op) is None), None)
        if device is None:
            continue
        marks = [pytest.mark.slow] if backend in slow_on_cpu and device == "cpu" else []
        params.append(pytest.param(backend, device, marks=marks,
                                   id=backend if device == "cpu" else f"{backend}-{device}"))
    return params


def device_of(op: str, backend: str) -> str | None:
    """The device `placements` gives `backend` of `op` here, or None where it runs on none."""
    found = placements(op, backend)
    return found[0].values[1] if found else None
