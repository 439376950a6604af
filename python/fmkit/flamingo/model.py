"""Flamingo around any Hugging Face causal LM (open_flamingo v2's `flamingo.py`, `flamingo_lm.py`,
`factory.py`), with the deliberate differences of the spec (§1.2):

- an `<image>` count above the number of supplied images raises instead of averaging;
- `generate` encodes each image once and expands the latents across beams (no repeated pixels),
  and every cross-attention block caches its media K/V at prefill, so decode steps project
  nothing; the LM's own KV cache is used as usual;
- the vision encoder is any module mapping pixels (N, 3, H, W) to patch tokens (N, v, d_vis).
"""
from __future__ import annotations

import re
import warnings
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import nn

from fmkit.flamingo.modules import GatedCrossAttentionBlock, PerceiverResampler
from fmkit.ops.media_cross_attention import check_media_index

IMAGE_TOKEN = "<image>"
END_OF_CHUNK_TOKEN = "<|endofchunk|>"
PAD_TOKEN = "<PAD>"
# Where each family keeps its decoder layers (open_flamingo's `_infer_decoder_layers_attr_name` idea).
DECODER_LAYER_PATHS = ("transformer.h", "gpt_neox.layers", "model.layers", "transformer.blocks",
                       "model.decoder.layers", "transformer.layers")


def find_decoder_layers(lm: nn.Module) -> tuple[str, nn.ModuleList]:
    for path in DECODER_LAYER_PATHS:
        obj = lm
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList):
            return path, obj
    raise ValueError(f"lang_model: no decoder layer list found at any of {DECODER_LAYER_PATHS}; "
                     "supported families: GPT-2, GPT-NeoX, LLaMA/Mistral, MPT, OPT")


class FlamingoLayer(nn.Module):
    """Runs the gated cross-attention block (if any) on the hidden states, then the LM layer.

    The LM layer receives every argument unchanged (attention mask, KV cache); the block sees
    only the hidden states and the conditioning that Flamingo sets on it.
    """

    def __init__(self, gated_cross_attn_layer: GatedCrossAttentionBlock | None, decoder_layer: nn.Module):
        super().__init__()
        self.gated_cross_attn_layer = gated_cross_attn_layer
        self.decoder_layer = decoder_layer
        self.media = None
        self.media_index = None
        self.use_cached_media = False

    def forward(self, hidden_states, *args, **kwargs):
        if self.gated_cross_attn_layer is not None and self.media is not None:
            hidden_states = self.gated_cross_attn_layer(hidden_states, self.media, self.media_index,
                                                        self.use_cached_media)
        return self.decoder_layer(hidden_states, *args, **kwargs)


def freeze_for_training(model: Flamingo, *, train_embeddings: bool = True) -> Flamingo:
    """OpenFlamingo's freezing policy (spec §2.6), applied by the constructor; returns `model`.

    Trainable: the perceiver and the gated cross-attention blocks. Frozen: the vision encoder
    and every LM weight. With `train_embeddings` the LM's input embedding matrix is trainable
    too, but a gradient hook zeroes every row except `<image>` and `<|endofchunk|>`, so only
    the two new tokens learn (as the reference does outside FSDP). The hook is on the
    Parameter: wrapping the embedding itself in FSDP replaces that Parameter and drops the mask.
    Call again to change `train_embeddings`; full fine-tuning is `model.requires_grad_(True)`.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.perceiver.parameters():
        p.requires_grad_(True)
    for p in model.lang_encoder.gated_cross_attn_layers.parameters():
        p.requires_grad_(True)
    if model._embedding_grad_hook is not None:
        model._embedding_grad_hook.remove()
        model._embedding_grad_hook = None
    if train_embeddings:
        emb = model.lang_encoder.get_input_embeddings().weight
        emb.requires_grad_(True)
        keep = torch.zeros(emb.shape[0], 1, dtype=emb.dtype, device=emb.device)
        keep[[model.image_token_id, model.end_of_chunk_token_id]] = 1
        model._embedding_grad_hook = emb.register_hook(lambda g: g * keep.to(g.device, g.dtype))
    return model


class FlamingoParameterCount(NamedTuple):
    perceiver: int
    per_block: int
    num_blocks: int
    blocks: int  # num_blocks * per_block
    total: int  # perceiver + blocks: what Flamingo adds and trains, embeddings excluded


def flamingo_parameter_count(lang_dim: int, num_lang_layers: int, cross_attn_every_n_layers: int = 1, *,
                             vis_dim: int = 1024, heads: int = 8, dim_head: int = 64, ff_mult: int = 4,
                             num_latents: int = 64, perceiver_depth: int = 6) -> FlamingoParameterCount:
    """Parameters Flamingo adds to an LM of width `lang_dim` with `num_lang_layers` decoder layers
    (spec §2.10), without building anything. The defaults are the released models'; e.g. D = 4096,
    32 layers: n = 4 adds 1.18B parameters, n = 1 adds 4.53B (the OOM of open_flamingo #259).

    Per gated block (inner = heads * dim_head = 512): 8 D^2 (FF) + 2 inner D (q, out)
    + 2 inner vis_dim (K/V) + 4 D (two LayerNorms) + 2 (gates) = 8 D^2 + 1024 D + 1024^2 + 4 D + 2.
    """
    if cross_attn_every_n_layers < 1:
        raise ValueError(f"cross_attn_every_n_layers: expected >= 1, got {cross_attn_every_n_layers}")
    inner = heads * dim_head

    def feed_forward(d):
        return 2 * d + 2 * int(d * ff_mult) * d  # LayerNorm + two bias-free linears

    perceiver_attention = 4 * vis_dim + vis_dim * inner + vis_dim * 2 * inner + inner * vis_dim
    perceiver = (num_latents * vis_dim + perceiver_depth * (perceiver_attention + feed_forward(vis_dim))
                 + 2 * vis_dim)
    per_block = 2 * lang_dim + 2 * inner * lang_dim + 2 * inner * vis_dim + feed_forward(lang_dim) + 2
    num_blocks = num_lang_layers // cross_attn_every_n_layers  # layers i with (i + 1) % n == 0
    return FlamingoParameterCount(perceiver, per_block, num_blocks, num_blocks * per_block,
                                  perceiver + num_blocks * per_block)


class Flamingo(nn.Module):
    """vision_encoder -> PerceiverResampler -> gated cross-attention inside `lang_encoder`."""

    def __init__(self, vision_encoder: nn.Module, lang_encoder: nn.Module, *, image_token_id: int,
                 end_of_chunk_token_id: int, pad_token_id: int, vis_dim: int, cross_attn_every_n_layers: int = 1,
                 backend: str = "auto"):
        super().__init__()
        if cross_attn_every_n_layers < 1:
            raise ValueError(f"cross_attn_every_n_layers: expected >= 1, got {cross_attn_every_n_layers}")
        self.vision_encoder = vision_encoder
        self.perceiver = PerceiverResampler(dim=vis_dim, backend=backend)
        self.lang_encoder = lang_encoder
        self.image_token_id = image_token_id
        self.end_of_chunk_token_id = end_of_chunk_token_id
        self.pad_token_id = pad_token_id
        self.cross_attn_every_n_layers = cross_attn_every_n_layers
        path, layers = find_decoder_layers(lang_encoder)
        self.decoder_layers_path = path
        dim = lang_encoder.config.hidden_size
        # The new modules follow the LM's device and dtype, so a bf16 or fp16 LM gets bf16 or fp16
        # blocks and perceiver instead of a Half/Float mismatch at the first forward.
        emb = lang_encoder.get_input_embeddings().weight
        self.perceiver.to(device=emb.device, dtype=emb.dtype)
        blocks = [GatedCrossAttentionBlock(dim=dim, dim_visual=vis_dim, backend=backend).to(emb.device, emb.dtype)
                  if (i + 1) % cross_attn_every_n_layers == 0 else None for i in range(len(layers))]
        lang_encoder.gated_cross_attn_layers = nn.ModuleList(blocks)
        for i in range(len(layers)):
            layers[i] = FlamingoLayer(blocks[i], layers[i])
        self._layers = list(layers)
        self._media_count = None
        self._generating = False
        lang_encoder.register_forward_pre_hook(self._set_media_index, with_kwargs=True)
        self._embedding_grad_hook = None
        freeze_for_training(self)

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute the perceiver layers and the gated cross-attention blocks in backward instead
        of storing their activations (torch.utils.checkpoint, non-reentrant); same loss and gradients.
        The LM's decoder layers are checkpointed by transformers' own switch on `model.lang_encoder`
        (`activation_checkpointing_enable`, formerly `gradient_checkpointing_enable`); the two compose."""
        self.perceiver.gradient_checkpointing = enabled
        for block in self.lang_encoder.gated_cross_attn_layers:
            if block is not None:
                block.gradient_checkpointing = enabled

    # ---- conditioning ----
    def encode_vision_x(self, vision_x: torch.Tensor) -> torch.Tensor:
        """[B, T_img, F, C, H, W] pixels -> [B, T_img, 64, d_vis] latents (vision encoder frozen)."""
        if vision_x.dim() != 6:
            raise ValueError(f"vision_x: expected [B, T_img, F, C, H, W], got shape {list(vision_x.shape)}")
        b, t, f = vision_x.shape[:3]
        if f != 1:
            raise ValueError(f"vision_x: only single-frame media are supported (F = 1), got F = {f}")
        # Pixels in the encoder's dtype and tokens in the perceiver's, so fp32 pixels feed a
        # half-precision encoder and a frozen fp32 encoder feeds a half-precision perceiver.
        vision_param = next((p for p in self.vision_encoder.parameters() if p.is_floating_point()), None)
        if vision_param is not None:
            vision_x = vision_x.to(vision_param.dtype)
        # The encoder is frozen; gradients flow through it only when the pixels want them (attacks).
        with torch.set_grad_enabled(vision_x.requires_grad and torch.is_grad_enabled()):
            tokens = self.vision_encoder(vision_x.flatten(0, 2))
        if tokens.dim() != 3:
            raise ValueError(f"vision_encoder: expected patch tokens [N, v, d_vis], got shape {list(tokens.shape)}")
        latents = self.perceiver.latents
        return self.perceiver(tokens.reshape(b, t, f, *tokens.shape[1:]).to(latents.device, latents.dtype))

    def _condition(self, latents, use_cached_media=False):
        for layer in self._layers:
            layer.media = latents
            layer.use_cached_media = use_cached_media
            if layer.gated_cross_attn_layer is not None and not use_cached_media:
                layer.gated_cross_attn_layer.attn.cached_kv = None

    def _clear(self):
        for layer in self._layers:
            layer.media = layer.media_index = None
            layer.use_cached_media = False
            if layer.gated_cross_attn_layer is not None:
                layer.gated_cross_attn_layer.attn.cached_kv = None
        self._media_count = None
        self._generating = False

    def _set_media_index(self, module, args, kwargs):
        """Before every LM call: each token's image index (running `<image>` count)."""
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None or self._layers[0].media is None:
            return None
        counts = torch.cumsum(input_ids == self.image_token_id, dim=1)
        # transformers >= 5 passes the KV cache as `cache`, earlier versions as `past_key_values`.
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        decoding = cache is not None and hasattr(cache, "get_seq_length") and cache.get_seq_length() > 0
        if decoding and self._media_count is not None:
            if self._generating:
                # As the reference generates: the prompt's media locations are kept, so a generated
                # <image> token starts no new image and every new token attends the last image.
                counts = self._media_count[:, None].expand_as(input_ids)
            else:
                counts = counts + self._media_count[:, None]  # new tokens continue after the prompt's images
        n_media = self._layers[0].media.shape[1]
        check_media_index(counts, n_media)
        self._media_count = counts[:, -1]
        for layer in self._layers:
            layer.media_index = counts
        return None

    # ---- training forward ----
    def forward(self, vision_x: torch.Tensor, lang_x: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **kwargs):
        """HF causal-LM output (with `.loss` when labels are given; see `make_labels`)."""
        if lang_x.dim() != 2:
            raise ValueError(f"lang_x: expected [B, T] token ids, got shape {list(lang_x.shape)}")
        if vision_x.shape[0] != lang_x.shape[0]:
            raise ValueError(f"vision_x: batch {vision_x.shape[0]} does not match lang_x batch {lang_x.shape[0]}")
        self._condition(self.encode_vision_x(vision_x))
        try:
            return self.lang_encoder(input_ids=lang_x, attention_mask=attention_mask, labels=labels, **kwargs)
        finally:
            self._clear()

    def make_labels(self, lang_x: torch.Tensor, interleaved: bool = False) -> torch.Tensor:
        """Training labels with the reference's masking (-100 on pad and `<image>` tokens; with
        `interleaved=True`, MMC4-style, also before the first `<image>` and between each
        `<|endofchunk|>` and the next `<image>`)."""
        labels = lang_x.clone()
        labels[lang_x == self.pad_token_id] = -100
        if interleaved:
            for row in range(lang_x.shape[0]):
                inside = False
                for i, tok in enumerate(lang_x[row].tolist()):
                    if tok == self.image_token_id:
                        inside = True
                    elif tok == self.end_of_chunk_token_id:
                        inside = False
                        continue
                    if not inside:
                        labels[row, i] = -100
        labels[lang_x == self.image_token_id] = -100
        return labels

    # ---- generation ----
    @torch.no_grad()
    def generate(self, vision_x: torch.Tensor | None, lang_x: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 *, use_media_cache: bool = True, media: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """HF `generate` conditioned on the images; eos defaults to `<|endofchunk|>`.

        Each image is encoded once and its latents are repeated across `num_beams`; with
        `use_media_cache` each block projects the media K/V once, at prefill. `media` takes
        latents [B, T_img, 64, d_vis] encoded earlier (`encode_vision_x`) instead of `vision_x`
        (few-shot evaluation encodes each demonstration image once for all queries).
        """
        num_beams = kwargs.get("num_beams", 1)
        if (media is None) == (vision_x is None):
            raise ValueError("vision_x, media: give exactly one of them")
        if media is not None and (media.dim() != 4 or media.shape[0] != lang_x.shape[0]):
            raise ValueError(f"media: expected latents [B={lang_x.shape[0]}, T_img, n, d_vis], got {list(media.shape)}")
        latents = self.encode_vision_x(vision_x) if media is None else media
        if num_beams > 1:
            latents = latents.repeat_interleave(num_beams, dim=0)
        kwargs.setdefault("eos_token_id", self.end_of_chunk_token_id)
        kwargs.setdefault("pad_token_id", self.pad_token_id)
        self._condition(latents, use_cached_media=use_media_cache)
        self._generating = True
        try:
            return self.lang_encoder.generate(input_ids=lang_x, attention_mask=attention_mask, **kwargs)
        finally:
            self._clear()


def create_flamingo(vision_encoder: nn.Module, lang_model: nn.Module, tokenizer, *, cross_attn_every_n_layers: int = 1,
                    vis_dim: int | None = None, backend: str = "auto", device: torch.device | str | None = None,
                    dtype: torch.dtype | None = None) -> Flamingo:
    """Wraps a Hugging Face causal LM: adds `<image>`, `<|endofchunk|>` (and `<PAD>` if missing) to
    the tokenizer, resizes the embeddings, inserts a gated cross-attention block before every
    layer i with (i + 1) % cross_attn_every_n_layers == 0, and freezes all but the perceiver,
    the blocks and the two new embedding rows (`freeze_for_training`).

    `device` and `dtype` move and cast the vision encoder and the LM first; the perceiver and the
    blocks then follow the LM's device and dtype (None: leave each part where and as it is)."""
    if vis_dim is None:
        vis_dim = getattr(vision_encoder, "output_dim", None) or getattr(vision_encoder, "width", None)
        if vis_dim is None:
            raise ValueError("vis_dim: cannot infer the vision token width; pass vis_dim=")
    tokenizer.add_special_tokens({"additional_special_tokens": [END_OF_CHUNK_TOKEN, IMAGE_TOKEN]})
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    lang_model.resize_token_embeddings(len(tokenizer))
    if device is not None or dtype is not None:
        vision_encoder.to(device=device, dtype=dtype)
        lang_model.to(device=device, dtype=dtype)
    ids = lambda tok: tokenizer.encode(tok, add_special_tokens=False)[-1]  # noqa: E731 (the reference's rule)
    return Flamingo(vision_encoder, lang_model, image_token_id=ids(IMAGE_TOKEN),
                    end_of_chunk_token_id=ids(END_OF_CHUNK_TOKEN), pad_token_id=tokenizer.pad_token_id,
                    vis_dim=vis_dim, cross_attn_every_n_layers=cross_attn_every_n_layers, backend=backend)


_OLD_DECODER_BLOCK = re.compile(r"^lang_encoder\.old_decoder_blocks\.(\d+)\.(.+)$")


def _resolve_old_decoder_blocks(model: Flamingo, state_dict: dict) -> tuple[dict, int]:
    """(state_dict without open_flamingo's `lang_encoder.old_decoder_blocks.*` aliases, how many).

    A live open_flamingo model keeps the LM's original decoder-layer list under a second attribute,
    `old_decoder_blocks`, so its state_dict() holds every decoder weight twice: as
    `lang_encoder.<layers>.{i}.decoder_layer.<name>` and as `lang_encoder.old_decoder_blocks.{i}.<name>`
    (its own checkpoint saver deletes the aliases). An alias whose canonical key is present must
    hold the same values and is dropped; one whose canonical key is absent is loaded under it.
    """
    out, aliases = {}, 0
    for k, v in state_dict.items():
        m = _OLD_DECODER_BLOCK.match(k)
        if m is None:
            out[k] = v
            continue
        aliases += 1
        canonical = f"lang_encoder.{model.decoder_layers_path}.{m.group(1)}.decoder_layer.{m.group(2)}"
        if canonical in state_dict:
            other = state_dict[canonical]
            if v.shape != other.shape or not (v.data_ptr() == other.data_ptr() or torch.equal(v, other)):
                raise ValueError(f"state_dict: {k} and {canonical} name the same decoder weight in open_flamingo "
                                 "but hold different values")
        else:
            out[canonical] = v
    return out, aliases


def load_openflamingo_state_dict(model: Flamingo, state_dict: dict, strict_trainable: bool = True):
    """Loads an open_flamingo checkpoint (its parameter names) into `model`.

    fmkit keeps the released module names (`perceiver.*`, `lang_encoder.gated_cross_attn_layers.*`,
    decoder layers wrapped as `<path>.{i}.gated_cross_attn_layer` / `.decoder_layer`), so the map
    is by name; the released checkpoints hold only the trained parameters, so frozen LM and
    vision weights may be absent. A live open_flamingo model's `state_dict()` loads too: its
    `lang_encoder.old_decoder_blocks.*` aliases of the decoder weights are dropped (one warning
    says how many). Returns (missing, unexpected) key lists, aliases not counted; with
    `strict_trainable`, a missing trainable parameter or any unexpected key raises ValueError.
    """
    state_dict, aliases = _resolve_old_decoder_blocks(model, state_dict)
    if aliases:
        warnings.warn(f"load_openflamingo_state_dict: dropped {aliases} lang_encoder.old_decoder_blocks.* keys, "
                      "open_flamingo's second name for the decoder-layer weights (a live model's state_dict())",
                      stacklevel=2)
    own = model.state_dict()
    unexpected = [k for k in state_dict if k not in own]
    loadable = {k: v for k, v in state_dict.items() if k in own}
    for k, v in loadable.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise ValueError(f"state_dict: {k} has shape {list(v.shape)}, the model expects {list(own[k].shape)}")
    missing = [k for k in own if k not in state_dict]
    if strict_trainable:
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        missing_trainable = [k for k in missing if k in trainable]
        if unexpected or missing_trainable:
            raise ValueError(f"state_dict: unexpected keys {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}; "
                             f"missing trainable keys {missing_trainable[:5]}")
    model.load_state_dict(loadable, strict=False)
    return missing, unexpected


@contextmanager
def conditioned(model: Flamingo, vision_x: torch.Tensor | None = None, *, media: torch.Tensor | None = None):
    """Conditions the LM on `vision_x` (or on latents `media` from `encode_vision_x`) for several
    calls (log-likelihood evaluation), then clears."""
    if (media is None) == (vision_x is None):
        raise ValueError("vision_x, media: give exactly one of them")
    model._condition(model.encode_vision_x(vision_x) if media is None else media)
    try:
        yield model.lang_encoder
    finally:
        model._clear()
