import os

import random

import numpy as np
import pytest
import torch
from hypothesis import settings

# Property tests draw the same examples on every run: a failure CI found is one anyone can
# replay, and a green run means the same cases passed.
settings.register_profile("fmkit", derandomize=True, deadline=None, print_blob=True)
settings.load_profile("fmkit")

# Without a GPU, Triton kernels run in the interpreter on CPU tensors (must be set before
# any triton.jit function is defined). With a GPU they run on CUDA tensors: the suites take their
# (backend, device) cases from tests/_backends.py, which follows this switch.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

HAS_CUDA = torch.cuda.is_available()

# Under pytest-xdist (the README's `-n 2`) each worker is one process on a 2-core machine: one
# torch thread per worker keeps the workers from spinning against each other's OpenMP pools.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _factscore_offline(request, monkeypatch):
    """The issue asks for sockets blocked for the whole fmkit.factscore suite: every
    tests/test_factscore*.py test runs with socket.socket / create_connection refused."""
    if request.module.__name__.rsplit(".", 1)[-1].startswith("test_factscore"):
        from fmkit.factscore._tiny import block_sockets

        block_sockets(monkeypatch)


@pytest.fixture(autouse=True)
def _deterministic_and_isolated():
    """Every test starts from the same global seeds and leaves torch's global switches as it
    found them (a test that flips TF32 or the default dtype must not change later tests)."""
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.get_default_dtype(), torch.get_num_threads(), torch.is_grad_enabled(),
             torch.are_deterministic_algorithms_enabled())
    yield
    now = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
           torch.get_default_dtype(), torch.get_num_threads(), torch.is_grad_enabled(),
           torch.are_deterministic_algorithms_enabled())
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[0], saved[1]
    torch.set_default_dtype(saved[2])
    torch.set_num_threads(saved[3])
    torch.set_grad_enabled(saved[4])
    torch.use_deterministic_algorithms(saved[5])
    assert now == saved, f"the test changed torch's global state: {saved} -> {now}"
