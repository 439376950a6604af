"""Perceiver cross-attention with two-source keys/values: `fmkit.ops.perceiver_attention`.

OpenFlamingo's PerceiverAttention lets the 64 latents of each image attend over
[LN(media tokens); LN(latents)]. The reference concatenates the two sources for K and V; the
kernels read them in turn instead (csrc/ops/perceiver_attention.h), with fp32 softmax and the
log-sum-exp saved for a flash-style backward. Backends: cpu (C++), triton (`auto` on CUDA),
torch (the reference, any device, also float64).
"""
from __future__ import annotations

from types import SimpleNamespace

import torch

from fmkit.ops import _backend
from fmkit.reference.perceiver_attention import perceiver_attention_reference

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
GPU_BACKEND_ORDER = ("triton",)


def perceiver_attention(q, k_media, v_media, k_latents, v_latents, *, scale=None, backend="auto"):
    """softmax(scale q [k_media; k_latents]^T) [v_media; v_latents], without the concatenation.

    q [B, H, L, D]; k_media, v_media [B, H, M, D]; k_latents, v_latents [B, H, L2, D]; same dtype
    (float32, float16, bfloat16 or float64; float64 runs the torch reference) and device; torch,
    numpy or cupy arrays. scale defaults to 1/sqrt(D). Returns [B, H, L, D] in the input dtype
    and array kind. Differentiable in every input (torch tensors).
    """
    names = ("q", "k_media", "v_media", "k_latents", "v_latents")
    converted = [_backend.to_torch(t, name) for name, t in zip(names, (q, k_media, v_media, k_latents, v_latents))]
    tensors = tuple(t for t, _ in converted)
    q, k_media, v_media, k_latents, v_latents = tensors
    to_input_kind = converted[0][1]
    _backend.check_dtype(q, "q", DTYPES)
    _backend.check_heads_like_q(zip(names, tensors))
    B, H, _, D = q.shape
    for name, t in zip(names[1:], tensors[1:]):
        if t.shape[0] != B or t.shape[1] != H or t.shape[3] != D:
            raise ValueError(f"{name}: expected [{B}, {H}, rows, {D}] to match q, got {list(t.shape)}")
    for a, b in ((1, 2), (3, 4)):
        if tensors[a].shape != tensors[b].shape:
            raise ValueError(f"{names[b]}: shape {list(tensors[b].shape)} does not match {names[a]} "
                             f"{list(tensors[a].shape)}")
    if k_media.shape[2] + k_latents.shape[2] == 0:
        raise ValueError("k_media: no keys at all (M + L2 = 0)")
    _backend.resolve_backend(backend, q.device, "perceiver_attention", GPU_BACKEND_ORDER)
    _backend.check_float64_backend("q", q, backend)
    scale = float(D ** -0.5 if scale is None else scale)
    out, _ = torch.ops.fmkit.perceiver_attention(q, k_media, v_media, k_latents, v_latents, scale, backend)
    return to_input_kind(out)


@torch.library.custom_op("fmkit::perceiver_attention", mutates_args=())
def _op(q: torch.Tensor, km: torch.Tensor, vm: torch.Tensor, kl: torch.Tensor, vl: torch.Tensor, scale: float,
        backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    return _kernels(backend, q).forward(q, km, vm, kl, vl, scale)


@_op.register_fake
def _fake(q, km, vm, kl, vl, scale, backend):
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            q.new_empty(q.shape[:3], dtype=_backend.accumulation_dtype(q)))


def _setup_context(ctx, inputs, output):
    q, km, vm, kl, vl, scale, backend = inputs
    ctx.save_for_backward(q, km, vm, kl, vl, *output)
    ctx.config = (scale, backend)


def _backward(ctx, dout, _dlse):
    q, km, vm, kl, vl, out, lse = ctx.saved_tensors
    scale, backend = ctx.config
    grads = _kernels(backend, q).backward(q, km, vm, kl, vl, out, lse, dout, scale)
    return (*[g.to(t.dtype) for g, t in zip(grads, (q, km, vm, kl, vl))], None, None)


_op.register_autograd(_backward, setup_context=_setup_context)


def _torch_forward(q, km, vm, kl, vl, scale):
    return perceiver_attention_reference(q, km, vm, kl, vl, scale, return_lse=True)


def _torch_backward(q, km, vm, kl, vl, out, lse, dout, scale):
    return _backend.recompute_grads(lambda *t: perceiver_attention_reference(*t, scale), (q, km, vm, kl, vl), dout)


class _CpuKernels:
    @staticmethod
    def forward(q, km, vm, kl, vl, scale):
        dl = _backend.dlpack
        out = torch.empty(q.shape, dtype=q.dtype)
        lse = torch.empty(q.shape[:3], dtype=torch.float32)
        _backend._C.perceiver_attention_forward_cpu(dl(q), dl(km), dl(vm), dl(kl), dl(vl), scale, dl(out), dl(lse),
                                                    _backend.cpu_threads())
        return out, lse

    @staticmethod
    def backward(q, km, vm, kl, vl, out, lse, dout, scale):
        dl = _backend.dlpack
        grads = [torch.empty(t.shape, dtype=torch.float32) for t in (q, km, vm, kl, vl)]
        _backend._C.perceiver_attention_backward_cpu(dl(q), dl(km), dl(vm), dl(kl), dl(vl), dl(out), dl(lse),
                                                     dl(dout), scale, *[dl(g) for g in grads], _backend.cpu_threads())
        return grads


_TorchKernels = SimpleNamespace(forward=_torch_forward, backward=_torch_backward)


def _kernels(backend, x):
    return _backend.select_kernels("perceiver_attention", backend, x, cpu=_CpuKernels, torch_impl=_TorchKernels,
                                   triton_module="perceiver_attention", gpu_order=GPU_BACKEND_ORDER)
