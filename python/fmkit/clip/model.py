"""A small CLIP family: ViT image tower + causal text transformer, open_clip's layout and dims.

Architecture (Radford et al. 2021, as open_clip's `CLIP` builds it for ViT towers):
  image: conv patch embedding (no bias) -> [CLS; patches] + learned positions -> LayerNorm ->
         pre-LN transformer -> LayerNorm -> CLS token -> linear projection (no bias).
  text:  token embedding + learned positions -> pre-LN transformer with a causal mask ->
         LayerNorm -> the EOT position -> linear projection (no bias).
  Blocks: x + attn(LN(x)); x + MLP(LN(x)), MLP = Linear(w, 4w) -> GELU -> Linear(4w, w).

Text pooling: `text_pool="argmax"` (default, what open_clip and OpenAI CLIP do) takes the
position of the highest token id in each row: with the CLIP BPE tokenizer the end-of-text
token has the largest id (49407), so that is the EOT token. `text_pool="last"` takes the last
position whose id is not `pad_id` (for tokenizers whose EOT is not the largest id). Either
way the causal mask makes the pooled feature independent of everything after it (padding).

`forward(image, text)` returns (image_features, text_features, logit_scale.exp()) with both
features L2-normalised, exactly like open_clip's CLIP.forward without output_dict; either
input may be None (its output is then None). `logit_scale` starts at ln(1/0.07).

CONFIGS: "tiny" (CPU tests), "small" (open_clip ViT-S-32 dims), "B-32", "B-16", "L-14"
(open_clip ViT-B-32 / ViT-B-16 / ViT-L-14 dims; at the default vocab 49408 and context 77 the
parameter counts equal open_clip's). Note that DataComp's "small" *scale* trains ViT-B/32;
the "small" *model* here is ViT-S/32.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

CONFIGS: dict[str, dict] = {
    "tiny": dict(embed_dim=32,
                 vision=dict(image_size=32, patch_size=8, width=64, layers=2, heads=2),
                 text=dict(context_length=77, vocab_size=49408, width=64, layers=2, heads=2)),
    "small": dict(embed_dim=384,
                  vision=dict(image_size=224, patch_size=32, width=384, layers=12, heads=6),
                  text=dict(context_length=77, vocab_size=49408, width=384, layers=12, heads=6)),
    "B-32": dict(embed_dim=512,
                 vision=dict(image_size=224, patch_size=32, width=768, layers=12, heads=12),
                 text=dict(context_length=77, vocab_size=49408, width=512, layers=12, heads=8)),
    "B-16": dict(embed_dim=512,
                 vision=dict(image_size=224, patch_size=16, width=768, layers=12, heads=12),
                 text=dict(context_length=77, vocab_size=49408, width=512, layers=12, heads=8)),
    "L-14": dict(embed_dim=768,
                 vision=dict(image_size=224, patch_size=14, width=1024, layers=24, heads=16),
                 text=dict(context_length=77, vocab_size=49408, width=768, layers=12, heads=12)),
}
# open_clip's names for the same configs.
ALIASES = {"ViT-S-32": "small", "ViT-B-32": "B-32", "ViT-B-16": "B-16", "ViT-L-14": "L-14"}
TEXT_POOLS = ("argmax", "last")


class Attention(nn.Module):
    """Multi-head self-attention with a fused in-projection (open_clip's `in_proj_weight` layout)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"heads: width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.in_proj = nn.Linear(width, 3 * width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        b, n, w = x.shape
        q, k, v = self.in_proj(x).reshape(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, w))


class ResidualBlock(nn.Module):
    """Pre-LN block: x + attn(ln_1(x)); x + mlp(ln_2(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), causal=causal)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, causal: bool = False):
        super().__init__()
        self.width, self.layers, self.causal = width, layers, causal
        self.resblocks = nn.ModuleList([ResidualBlock(width, heads) for _ in range(layers)])
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, self.causal, use_reentrant=False)
            else:
                x = block(x, causal=self.causal)
        return x

    def init_weights(self) -> None:
        """open_clip's scheme: attn std w^-0.5, out/fc2 std w^-0.5 (2 L)^-0.5, fc1 std (2 w)^-0.5."""
        attn_std = self.width ** -0.5
        proj_std = attn_std * (2 * self.layers) ** -0.5
        fc_std = (2 * self.width) ** -0.5
        for block in self.resblocks:
            nn.init.normal_(block.attn.in_proj.weight, std=attn_std)
            nn.init.zeros_(block.attn.in_proj.bias)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.zeros_(block.attn.out_proj.bias)
            nn.init.normal_(block.mlp[0].weight, std=fc_std)
            nn.init.normal_(block.mlp[2].weight, std=proj_std)


class VisionTransformer(nn.Module):
    """ViT image tower: images [B, 3, S, S] -> features [B, embed_dim] (CLS-token pooling)."""

    def __init__(self, *, image_size: int, patch_size: int, width: int, layers: int, heads: int, embed_dim: int):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"patch_size: image_size {image_size} is not divisible by patch_size {patch_size}")
        self.image_size, self.patch_size = image_size, patch_size
        grid = image_size // patch_size
        scale = width ** -0.5
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, embed_dim))
        self.transformer.init_weights()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x).flatten(2).transpose(1, 2)  # [B, grid^2, width]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj


class TextTransformer(nn.Module):
    """Causal text tower: token ids [B, T] (T <= context_length) -> features [B, embed_dim]."""

    def __init__(self, *, context_length: int, vocab_size: int, width: int, layers: int, heads: int, embed_dim: int,
                 text_pool: str = "argmax", pad_id: int = 0):
        super().__init__()
        if text_pool not in TEXT_POOLS:
            raise ValueError(f"text_pool: expected 'argmax' or 'last', got {text_pool!r}")
        self.context_length, self.vocab_size = context_length, vocab_size
        self.text_pool, self.pad_id = text_pool, pad_id
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.transformer = Transformer(width, layers, heads, causal=True)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, embed_dim))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=width ** -0.5)
        self.transformer.init_weights()

    def pool_index(self, text: torch.Tensor) -> torch.Tensor:
        """The pooled position of each row: the (first) highest id, or the last non-pad token."""
        if self.text_pool == "argmax":
            return text.argmax(dim=-1)
        positions = torch.arange(text.shape[1], device=text.device).expand_as(text)
        return torch.where(text != self.pad_id, positions, 0).amax(dim=-1)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        t = text.shape[1]
        x = self.token_embedding(text) + self.positional_embedding[:t].to(self.token_embedding.weight.dtype)
        x = self.ln_final(self.transformer(x))
        x = x[torch.arange(x.shape[0], device=x.device), self.pool_index(text)]
        return x @ self.text_projection


class CLIP(nn.Module):
    """Two towers and a learned temperature; forward -> (image_features, text_features, scale)."""

    def __init__(self, *, embed_dim: int, vision: dict, text: dict, init_logit_scale: float = math.log(1 / 0.07),
                 text_pool: str = "argmax", pad_id: int = 0):
        super().__init__()
        self.embed_dim = embed_dim
        self.visual = VisionTransformer(embed_dim=embed_dim, **vision)
        self.text = TextTransformer(embed_dim=embed_dim, text_pool=text_pool, pad_id=pad_id, **text)
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))

    @property
    def image_size(self) -> int:
        return self.visual.image_size

    @property
    def context_length(self) -> int:
        return self.text.context_length

    @property
    def vocab_size(self) -> int:
        return self.text.vocab_size

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.transformer.grad_checkpointing = enable
        self.text.transformer.grad_checkpointing = enable

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        self._check_image(image)
        x = self.visual(image)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        self._check_text(text)
        x = self.text(text)
        return F.normalize(x, dim=-1) if normalize else x

    def forward(self, image: torch.Tensor | None = None, text: torch.Tensor | None = None):
        image_features = self.encode_image(image, normalize=True) if image is not None else None
        text_features = self.encode_text(text, normalize=True) if text is not None else None
        return image_features, text_features, self.logit_scale.exp()

    def _check_image(self, image) -> None:
        s = self.visual.image_size
        if not isinstance(image, torch.Tensor):
            raise ValueError(f"image: expected a torch.Tensor, got {type(image).__name__}")
        if image.dim() != 4 or image.shape[1] != 3 or image.shape[2] != s or image.shape[3] != s:
            raise ValueError(f"image: expected shape [B, 3, {s}, {s}], got {list(image.shape)}")
        if not image.is_floating_point():
            raise ValueError(f"image: expected a floating-point tensor, got {image.dtype}")

    def _check_text(self, text) -> None:
        if not isinstance(text, torch.Tensor):
            raise ValueError(f"text: expected a torch.Tensor of token ids, got {type(text).__name__}")
        if text.dim() != 2 or text.shape[1] == 0:
            raise ValueError(f"text: expected token ids of shape [B, T], got {list(text.shape)}")
        if text.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"text: expected integer (long) token ids, got {text.dtype}")
        if text.shape[1] > self.context_length:
            raise ValueError(f"text: length {text.shape[1]} exceeds the context length {self.context_length}")
        if text.numel() and text.device.type == "cpu":  # a device check would synchronise; CPU only
            lo, hi = int(text.min()), int(text.max())
            if lo < 0 or hi >= self.vocab_size:
                raise ValueError(f"text: token ids must lie in [0, {self.vocab_size}), got [{lo}, {hi}]")


def model_config(name: str) -> dict:
    """A deep copy of CONFIGS[name] (open_clip names such as "ViT-B-32" are accepted)."""
    key = ALIASES.get(name, name)
    if key not in CONFIGS:
        raise ValueError(f"name: unknown CLIP config {name!r}; expected one of {sorted(CONFIGS)}")
    return copy.deepcopy(CONFIGS[key])


def create_model(name: str = "tiny", *, vocab_size: int | None = None, context_length: int | None = None,
                 image_size: int | None = None, text_pool: str = "argmax", pad_id: int = 0,
                 init_logit_scale: float = math.log(1 / 0.07), device=None, dtype=None) -> CLIP:
    """Builds CONFIGS[name]; `vocab_size` should come from the tokenizer (e.g. len(tokenizer))."""
    cfg = model_config(name)
    for key, value, tower in (("vocab_size", vocab_size, "text"), ("context_length", context_length, "text"),
                              ("image_size", image_size, "vision")):
        if value is not None:
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{key}: expected a positive int, got {value!r}")
            cfg[tower][key] = value
    model = CLIP(**cfg, text_pool=text_pool, pad_id=pad_id, init_logit_scale=init_logit_scale)
    return model.to(device=device, dtype=dtype) if device is not None or dtype is not None else model


class OpenClipAdapter(nn.Module):
    """Wraps an open_clip model so that fmkit's trainer, loss and evaluation can use it.

    forward(image, text) -> (normalised image features, normalised text features,
    logit_scale.exp()); `logit_scale` is the wrapped model's parameter (so the trainer's clamp
    and weight-decay rules apply), and encode_image / encode_text delegate.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        if not hasattr(model, "encode_image") or not hasattr(model, "encode_text"):
            raise ValueError("model: expected an open_clip model with encode_image / encode_text")
        if not isinstance(getattr(model, "logit_scale", None), torch.Tensor):
            raise ValueError("model: expected a `logit_scale` parameter")
        self.model = model

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale

    def encode_image(self, image, normalize: bool = False):
        return self.model.encode_image(image, normalize=normalize)

    def encode_text(self, text, normalize: bool = False):
        return self.model.encode_text(text, normalize=normalize)

    def forward(self, image=None, text=None):
        image_features = self.encode_image(image, normalize=True) if image is not None else None
        text_features = self.encode_text(text, normalize=True) if text is not None else None
        return image_features, text_features, self.model.logit_scale.exp()


def from_open_clip(name: str, pretrained: str | None = None, **kwargs):
    """(OpenClipAdapter(model), preprocess_val, tokenizer) from open_clip (an optional dependency)."""
    try:
        import open_clip
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("from_open_clip needs open_clip: pip install open_clip_torch") from exc
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained, **kwargs)
    return OpenClipAdapter(model), preprocess, open_clip.get_tokenizer(name)
