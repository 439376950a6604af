"""Media-masked cross-attention in plain PyTorch, open_flamingo's math: the oracle and `torch` backend.

A dense boolean mask: query t may attend key j iff media_index[t] == j // P + 1. Masked logits
are filled with -finfo.max (finite, as the reference does), so rows without an image get a
uniform softmax that is then overwritten with 0 (output and gradient exactly 0).
"""
from __future__ import annotations

import torch

from fmkit.reference import without_autocast


@without_autocast
def media_cross_attention_reference(q, k, v, media_index, latents_per_media, scale, return_lse=False):
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    key_media = torch.arange(k.shape[2], device=k.device) // latents_per_media + 1
    allowed = media_index[:, None, :, None] == key_media[None, None, None, :]  # [B, 1, T, S]
    s = (q.to(acc) * scale) @ k.to(acc).transpose(-1, -2)
    s = s.masked_fill(~allowed, -torch.finfo(acc).max)
    p = torch.softmax(s, dim=-1)
    no_media = (media_index == 0)[:, None, :, None]
    out = (p.masked_fill(no_media, 0.0) @ v.to(acc)).to(q.dtype)
    if not return_lse:
        return out
    lse = torch.logsumexp(s.masked_fill(~allowed, float("-inf")), dim=-1)
    return out, lse
