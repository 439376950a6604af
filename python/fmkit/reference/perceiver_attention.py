"""Perceiver cross-attention in plain PyTorch, open_flamingo's math: the oracle and `torch` backend.

Keys and values are the media rows followed by the latent rows (an explicit concatenation
here); q is multiplied by the scale before q k^T; no mask; softmax in fp32 (fp64 for fp64
inputs); the output is cast back to the input dtype.
"""
from __future__ import annotations

import torch


def perceiver_attention_reference(q, k_media, v_media, k_latents, v_latents, scale, return_lse=False):
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    k = torch.cat([k_media, k_latents], dim=2).to(acc)
    v = torch.cat([v_media, v_latents], dim=2).to(acc)
    s = (q.to(acc) * scale) @ k.transpose(-1, -2)
    out = (torch.softmax(s, dim=-1) @ v).to(q.dtype)
    return (out, torch.logsumexp(s, dim=-1)) if return_lse else out
