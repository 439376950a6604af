"""CPU inference of a model's float32 `nn.Linear` layers through oneDNN with weights reordered once.

torch's CPU `F.linear` hands float32 products to MKL's sgemm, which re-packs the weight on every
call and, on AMD CPUs, runs MKL's generic AVX2 code. oneDNN (bundled with every CPU build of torch:
`torch.backends.mkldnn`) can reorder a weight once into its own blocked layout and then run each
product from it. On the project's 2-core AMD EPYC (Zen 4) that measured 195-221 against 141-181
GFLOP/s for SmolLM2's shapes (M = 1024-2150 rows), and 53 against 26 GFLOP/s for one row
(2026-12-04). This is what torch.compile's CPU "freezing" mode does for linear layers; here it needs
no compilation.

`packed_linears(model)` is a context manager: inside it, every float32 CPU `nn.Linear` of the model
runs from a reordered copy of its weight while grad mode is off, and as before otherwise (training,
or a weight that changed: the copy is keyed to the weight's version counter). The results are the
same products, summed in another order: float32 rounding differences (~1e-6 relative), as between
any two GEMM libraries. The copies cost the weights' memory once more for the context's lifetime,
so `packed_linears` leaves a model alone above `max_bytes` (default 2 GiB of linear weights).
Products under `MIN_MACS` multiply-adds (one row through a small layer) stay with `F.linear`: there,
oneDNN's fixed cost per call outweighs its faster inner loop.
"""
from __future__ import annotations

import contextlib

import torch

DEFAULT_MAX_BYTES = 2 << 30
# oneDNN's call costs ~15-20 us more than MKL's (measured 2026-12-04): a product smaller than this
# many multiply-adds (~20 us of work at 200 GFLOP/s) stays with F.linear
MIN_MACS = 1 << 21


def available() -> bool:
    """Whether this torch build can run oneDNN linear products from reordered weights."""
    if not torch.backends.mkldnn.is_available():
        return False
    ops = torch.ops.mkldnn
    return hasattr(ops, "_linear_pointwise") and hasattr(ops, "_reorder_linear_weight")


def _eligible(module) -> bool:
    w = getattr(module, "weight", None)
    # exact type: quantised, LoRA and other subclasses have forwards of their own; an instance-level
    # forward (accelerate's offload hooks) moves or replaces weights, so it stays untouched
    return (type(module) is torch.nn.Linear and isinstance(w, torch.Tensor) and w.device.type == "cpu"
            and w.dtype == torch.float32 and w.dim() == 2 and "forward" not in vars(module))


def _reorder(w, rows_hint):
    with torch.no_grad():
        return torch.ops.mkldnn._reorder_linear_weight(w.detach(), rows_hint)


def _packed_forward(module, packed_for, original):
    ops = torch.ops.mkldnn

    def forward(x):
        w = module.weight
        # autocast (e.g. verify's bf16 screen) must see F.linear to cast it; oneDNN's op is not on its list
        if (torch.is_grad_enabled() and (w.requires_grad or x.requires_grad)) or x.dtype != torch.float32 \
                or x.device.type != "cpu" or x.shape[-1] != w.shape[1] or torch.is_autocast_enabled("cpu") \
                or x.numel() * w.shape[0] < MIN_MACS:
            return original(x)
        packed = packed_for(w)
        return original(x) if packed is None else ops._linear_pointwise(x, packed, module.bias, "none", [], "")
    return forward


@contextlib.contextmanager
def packed_linears(model: torch.nn.Module, *, enabled: bool = True, max_bytes: int = DEFAULT_MAX_BYTES,
                   rows_hint: int = 1024):
    """Runs `model`'s float32 CPU linear layers from oneDNN-reordered weights inside the block (see the
    module docstring). Yields the number of layers patched (0: nothing changed: disabled, no oneDNN,
    no eligible layer, or the weights exceed `max_bytes`). Weights shared by several layers (tied
    embeddings) are reordered once. `rows_hint` is the typical number of input rows, for oneDNN's
    choice of layout."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(max_bytes, int) or max_bytes < 0:
        raise ValueError(f"max_bytes: expected an int >= 0, got {max_bytes!r}")
    modules = [m for m in model.modules() if _eligible(m)] if enabled and available() else []
    weights = {id(m.weight): m.weight for m in modules}
    if sum(w.numel() * w.element_size() for w in weights.values()) > max_bytes:
        modules = []
    cache = {}  # id(weight) -> (weight version, reordered copy)

    def packed_for(w):
        hit = cache.get(id(w))
        if hit is not None and hit[0] == w._version:
            return hit[1]
        try:
            p = _reorder(w, rows_hint)
        except RuntimeError:  # a layout oneDNN does not take: this layer keeps MKL
            p = None
        cache[id(w)] = (w._version, p)
        return p

    for m in modules:
        m.forward = _packed_forward(m, packed_for, m.forward)
    try:
        yield len(modules)
    finally:
        for m in modules:
            vars(m).pop("forward", None)
        cache.clear()
