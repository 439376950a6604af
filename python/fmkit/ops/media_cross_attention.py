"""Media-masked text-to-image cross-attention, block-diagonal: `fmkit.ops.media_cross_attention`.

In OpenFlamingo each text token attends only to the 64 latents of the most recent image before
it (media_index = running count of `<image>` tokens). The reference builds a dense
[T, n_media * 64] mask and does n_media times the useful work; the kernels
(csrc/ops/media_cross_attention.h) compute only each query's own image. media_index 0 (text
before any image) gives exactly 0; an index above the number of images raises instead of the
reference's silent average over every image.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch

from fmkit.ops import _backend
from fmkit.reference.media_cross_attention import media_cross_attention_reference

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
GPU_BACKEND_ORDER = ("triton",)


def media_cross_attention(q, k, v, media_index, *, latents_per_media=64, scale=None, backend="auto",
                          validate=True, check_index=None):
    """Attention of each query (b, t) over the `latents_per_media` keys of image media_index[b, t].

    q [B, H, T, D]; k, v [B, H, n_media * latents_per_media, D]; media_index int [B, T] in
    0..n_media. scale defaults to 1/sqrt(D). Returns [B, H, T, D] in q's dtype; differentiable
    in q, k and v (torch tensors). q, k, v: float32, float16, bfloat16 or float64 (the torch
    reference); torch, numpy or cupy arrays, the output in q's kind. `validate=False` skips the
    range check of media_index (one reduction and host sync); `check_index` is its deprecated
    old name.
    """
    validate = _backend.deprecated_switch("media_cross_attention", validate, check_index=check_index)
    q, to_input_kind = _backend.to_torch(q, "q")
    k, _ = _backend.to_torch(k, "k")
    v, _ = _backend.to_torch(v, "v")
    media_index, _ = _backend.to_torch(media_index, "media_index")
    _backend.check_dtype(q, "q", DTYPES)
    _backend.check_heads_like_q((("q", q), ("k", k), ("v", v)))
    B, H, T, D = q.shape
    if k.shape != v.shape or k.shape[0] != B or k.shape[1] != H or k.shape[3] != D:
        raise ValueError(f"k, v: expected equal shapes [{B}, {H}, n_media * P, {D}], got {list(k.shape)} and "
                         f"{list(v.shape)}")
    if not isinstance(latents_per_media, int) or latents_per_media < 1 or k.shape[2] % latents_per_media:
        raise ValueError(f"latents_per_media: expected a positive divisor of k's {k.shape[2]} rows, "
                         f"got {latents_per_media!r}")
    if media_index.dtype.is_floating_point or media_index.dtype == torch.bool:
        raise TypeError(f"media_index: expected an integer dtype, got {_backend.dtype_name(media_index.dtype)}")
    if media_index.shape != (B, T):
        raise ValueError(f"media_index: expected an integer tensor of shape [{B}, {T}], got {list(media_index.shape)}")
    media_index = media_index.to(device=q.device, dtype=torch.int64)
    n_media = k.shape[2] // latents_per_media
    if validate and media_index.numel():
        check_media_index(media_index, n_media)
    _backend.resolve_backend(backend, q.device, "media_cross_attention", GPU_BACKEND_ORDER)
    _backend.check_float64_backend("q", q, backend)
    scale = float(D ** -0.5 if scale is None else scale)
    out, _ = torch.ops.fmkit.media_cross_attention(q, k, v, media_index, latents_per_media, scale, backend)
    return to_input_kind(out)


def check_media_index(media_index, n_media):
    """ValueError naming the first sample whose `<image>` count is negative or exceeds n_media."""
    per_sample = media_index.amax(dim=1)
    low = media_index.amin(dim=1)
    bad = ((per_sample > n_media) | (low < 0)).nonzero()
    if bad.numel():
        b = int(bad[0])
        raise ValueError(f"media_index: sample {b} refers to image {int(per_sample[b])} "
                         f"(lowest index {int(low[b])}) but only {n_media} images were supplied; "
                         "each text token's index must be in 0..n_media (more <image> tokens than images?)")


@torch.library.custom_op("fmkit::media_cross_attention", mutates_args=())
def _op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, media_index: torch.Tensor, latents_per_media: int,
        scale: float, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    return _kernels(backend, q).forward(q, k, v, media_index, latents_per_media, scale)


@_op.register_fake
def _fake(q, k, v, media_index, latents_per_media, scale, backend):
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            q.new_empty(q.shape[:3], dtype=_backend.accumulation_dtype(q)))


def _setup_context(ctx, inputs, output):
    q, k, v, media_index, latents_per_media, scale, backend = inputs
    ctx.save_for_backward(q, k, v, media_index, *output)
    ctx.config = (latents_per_media, scale, backend)


def _backward(ctx, dout, _dlse):
    q, k, v, media_index, out, lse = ctx.saved_tensors
    latents_per_media, scale, backend = ctx.config
    dq, dk, dv = _kernels(backend, q).backward(q, k, v, media_index, latents_per_media, out, lse, dout, scale)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None, None


_op.register_autograd(_backward, setup_context=_setup_context)


def _torch_forward(q, k, v, media_index, latents_per_media, scale):
    return media_cross_attention_reference(q, k, v, media_index, latents_per_media, scale, return_lse=True)


def _torch_backward(q, k, v, media_index, latents_per_media, out, lse, dout, scale):
    def fn(q, k, v):
        return media_cross_attention_reference(q, k, v, media_index, latents_per_media, scale)

    return _backend.recompute_grads(fn, (q, k, v), dout)


class _CpuKernels:
    @staticmethod
    def forward(q, k, v, media_index, latents_per_media, scale):
        dl = _backend.dlpack
        out = torch.empty(q.shape, dtype=q.dtype)
        lse = torch.empty(q.shape[:3], dtype=torch.float32)
        _backend._C.media_cross_attention_forward_cpu(dl(q), dl(k), dl(v), dl(media_index), latents_per_media, scale,
                                                      dl(out), dl(lse), _backend.cpu_threads())
        return out, lse

    @staticmethod
    def backward(q, k, v, media_index, latents_per_media, out, lse, dout, scale):
        dl = _backend.dlpack
        grads = [torch.empty(t.shape, dtype=torch.float32) for t in (q, k, v)]
        _backend._C.media_cross_attention_backward_cpu(dl(q), dl(k), dl(v), dl(media_index), latents_per_media,
                                                       dl(out), dl(lse), dl(dout), scale, *[dl(g) for g in grads],
                                                       _backend.cpu_threads())
        return grads


_TorchKernels = SimpleNamespace(forward=_torch_forward, backward=_torch_backward)


def _kernels(backend, x):
    return _backend.select_kernels("media_cross_attention", backend, x, cpu=_CpuKernels, torch_impl=_TorchKernels,
                                   triton_module="media_cross_attention", gpu_order=GPU_BACKEND_ORDER)
