"""OpenFlamingo's building blocks, faithful to open_flamingo v2 (`helpers.py`), on fmkit's kernels.

Module and parameter names match the released code, so released checkpoints load by name
(see `load_openflamingo_state_dict`). Defaults are the ones the released models use:
perceiver depth 6, 64 latents, 8 heads x 64, FF x4, exact GELU, final LayerNorm, no time
embeddings; cross-attention 8 x 64, only the immediately preceding image, tanh gates at 0.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from fmkit.ops.media_cross_attention import media_cross_attention
from fmkit.ops.perceiver_attention import perceiver_attention


def FeedForward(dim: int, mult: int = 4) -> nn.Sequential:  # noqa: N802 (the reference's name)
    """LayerNorm -> Linear(dim, mult dim, no bias) -> exact GELU -> Linear(mult dim, dim, no bias)."""
    inner = int(dim * mult)
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, inner, bias=False), nn.GELU(),
                         nn.Linear(inner, dim, bias=False))


def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """[..., n, heads * d] -> [..., heads, n, d]."""
    *lead, n, hd = t.shape
    return t.reshape(*lead, n, heads, hd // heads).transpose(-3, -2)


def _merge_heads(t: torch.Tensor) -> torch.Tensor:
    """[..., heads, n, d] -> [..., n, heads * d]."""
    *lead, h, n, d = t.shape
    return t.transpose(-3, -2).reshape(*lead, n, h * d)


class PerceiverAttention(nn.Module):
    """Latents attend over [LN(media); LN(latents)] (one bias-free K/V projection, q scaled by 1/sqrt(d))."""

    def __init__(self, *, dim: int, dim_head: int = 64, heads: int = 8, backend: str = "auto"):
        super().__init__()
        self.scale = dim_head ** -0.5
        self.heads = heads
        self.backend = backend
        inner = dim_head * heads
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """x [B, T, n1, D] media features, latents [B, T, n2, D] -> [B, T, n2, D]."""
        x = self.norm_media(x)
        latents = self.norm_latents(latents)
        b, t = x.shape[:2]
        q = self.to_q(latents)
        # The K/V projection of the concatenation equals the concatenation of the projections,
        # so the two sources are projected separately and never concatenated.
        k_media, v_media = self.to_kv(x).chunk(2, dim=-1)
        k_lat, v_lat = self.to_kv(latents).chunk(2, dim=-1)
        flat = lambda a: _heads(a, self.heads).flatten(0, 1)  # noqa: E731  [B*T, H, n, d]
        out = perceiver_attention(flat(q), flat(k_media), flat(v_media), flat(k_lat), flat(v_lat),
                                  scale=self.scale, backend=self.backend)
        out = _merge_heads(out.unflatten(0, (b, t)))
        return self.to_out(out)


def _perceiver_layer(attn, ff, x, latents):
    latents = attn(x, latents) + latents
    return ff(latents) + latents


class PerceiverResampler(nn.Module):
    """Maps each image's patch tokens to `num_latents` latents, independently per image."""

    def __init__(self, *, dim: int, depth: int = 6, dim_head: int = 64, heads: int = 8, num_latents: int = 64,
                 max_num_media: int | None = None, max_num_frames: int | None = None, ff_mult: int = 4,
                 backend: str = "auto"):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(num_latents, dim))
        self.frame_embs = nn.Parameter(torch.randn(max_num_frames, dim)) if max_num_frames is not None else None
        self.media_time_embs = (nn.Parameter(torch.randn(max_num_media, 1, dim))
                                if max_num_media is not None else None)
        self.layers = nn.ModuleList([
            nn.ModuleList([PerceiverAttention(dim=dim, dim_head=dim_head, heads=heads, backend=backend),
                           FeedForward(dim=dim, mult=ff_mult)])
            for _ in range(depth)
        ])
        self.norm = nn.LayerNorm(dim)
        # True: each layer's activations are recomputed in backward instead of stored
        # (torch.utils.checkpoint, non-reentrant); see Flamingo.set_gradient_checkpointing.
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, T, F, v, D] -> [B, T, num_latents, D]."""
        if x.dim() != 5:
            raise ValueError(f"x: expected [B, T_img, F, v, D] media features, got shape {list(x.shape)}")
        b, t, f, v, d = x.shape
        if self.frame_embs is not None:
            x = x + self.frame_embs[:f][None, None, :, None, :]
        x = x.reshape(b, t, f * v, d)
        if self.media_time_embs is not None:
            x = x + self.media_time_embs[:t]
        latents = self.latents.expand(b, t, *self.latents.shape)
        for attn, ff in self.layers:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                latents = checkpoint(_perceiver_layer, attn, ff, x, latents, use_reentrant=False)
            else:
                latents = _perceiver_layer(attn, ff, x, latents)
        return self.norm(latents)


class MaskedCrossAttention(nn.Module):
    """Text tokens attend to the latents of the most recent preceding image only.

    `media_index` [B, T_txt] is the running count of `<image>` tokens (0: no image yet -> 0).
    With `kv_cache` enabled (generation), the media K/V projection is computed once per
    conditioning and reused by every decode step.
    """

    def __init__(self, *, dim: int, dim_visual: int, dim_head: int = 64, heads: int = 8,
                 only_attend_immediate_media: bool = True, backend: str = "auto"):
        super().__init__()
        if not only_attend_immediate_media:
            raise ValueError("only_attend_immediate_media: only True (the released models' setting) is supported")
        self.scale = dim_head ** -0.5
        self.heads = heads
        self.backend = backend
        inner = dim_head * heads
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim_visual, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)
        self.cached_kv = None

    def media_kv(self, media: torch.Tensor, use_cache: bool = False):
        if use_cache and self.cached_kv is not None:
            return self.cached_kv
        b, t, n, _ = media.shape
        k, v = self.to_kv(media.reshape(b, t * n, -1)).chunk(2, dim=-1)
        kv = (_heads(k, self.heads), _heads(v, self.heads))
        if use_cache:
            self.cached_kv = kv
        return kv

    def forward(self, x: torch.Tensor, media: torch.Tensor, media_index: torch.Tensor,
                use_cached_media: bool = False) -> torch.Tensor:
        """x [B, T_txt, D], media [B, T_img, n, d_vis], media_index [B, T_txt] -> [B, T_txt, D]."""
        q = _heads(self.to_q(self.norm(x)), self.heads)
        k, v = self.media_kv(media, use_cached_media)
        out = media_cross_attention(q, k, v, media_index, latents_per_media=media.shape[2], scale=self.scale,
                                    backend=self.backend, validate=False)
        return self.to_out(_merge_heads(out))


class GatedCrossAttentionBlock(nn.Module):
    """x + tanh(attn_gate) xattn(x) then x + tanh(ff_gate) FF(x); gates start at 0 (identity)."""

    def __init__(self, *, dim: int, dim_visual: int, dim_head: int = 64, heads: int = 8, ff_mult: int = 4,
                 only_attend_immediate_media: bool = True, backend: str = "auto"):
        super().__init__()
        self.attn = MaskedCrossAttention(dim=dim, dim_visual=dim_visual, dim_head=dim_head, heads=heads,
                                         only_attend_immediate_media=only_attend_immediate_media, backend=backend)
        self.attn_gate = nn.Parameter(torch.tensor([0.0]))
        self.ff = FeedForward(dim, mult=ff_mult)
        self.ff_gate = nn.Parameter(torch.tensor([0.0]))
        self.gradient_checkpointing = False

    def forward(self, x, media, media_index, use_cached_media=False):
        # Inside the module's own forward, so an FSDP-wrapped block recomputes with its
        # parameters gathered; generation runs under no_grad and keeps filling the K/V cache.
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(self._forward, x, media, media_index, use_cached_media, use_reentrant=False)
        return self._forward(x, media, media_index, use_cached_media)

    def _forward(self, x, media, media_index, use_cached_media):
        x = self.attn(x, media, media_index, use_cached_media) * self.attn_gate.tanh() + x
        x = self.ff(x) * self.ff_gate.tanh() + x
        return x
