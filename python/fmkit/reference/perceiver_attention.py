"""Perceiver cross-attention in plain PyTorch, open_flamingo's math: the oracle and `torch` backend.

Keys and values are the media rows followed by the latent rows (an explicit concatenation
here); q is multiplied by the scale before q k^T; no mask; softmax in fp32 (fp64 for fp64
inputs); the output is cast back to the input dtype.
"""
from __future__ import annotations

import torch

from fmkit.reference import without_autocast


@without_autocast
def perceiver_attention_reference(q, k_media, v_media, k_latents, v_latents, scale, return_lse=False):
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    k = torch.cat([k_media, k_latents], dim=2).to(acc)
    v = torch.cat([v_media, v_latents], dim=2).to(acc)
    s = (q.to(acc) * scale) @ k.transpose(-1, -2)
    out = (torch.softmax(s, dim=-1) @ v).to(q.dtype)
    return (out, torch.logsumexp(s, dim=-1)) if return_lse else out


def perceiver_block_reference(m, x, latents):
    """open_flamingo's PerceiverAttention.forward transcribed (explicit concatenation), for `m`'s weights."""
    x, latents = m.norm_media(x), m.norm_latents(latents)
    h = m.heads
    split = lambda t: t.reshape(*t.shape[:-1], h, -1).transpose(-3, -2)  # noqa: E731
    q = split(m.to_q(latents)) * m.scale
    k, v = m.to_kv(torch.cat((x, latents), dim=-2)).chunk(2, dim=-1)
    sim = q @ split(k).transpose(-1, -2)
    sim = sim - sim.amax(dim=-1, keepdim=True).detach()
    out = (sim.softmax(dim=-1) @ split(v)).transpose(-3, -2).flatten(-2)
    return m.to_out(out)
