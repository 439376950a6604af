"""fmkit.flamingo: modules against a transcription of open_flamingo's math, a tiny end-to-end model."""
import copy

import pytest
import torch
from _backends import placements
import torch.nn.functional as F
from torch import nn

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from fmkit.flamingo import (  # noqa: E402
    MaskedCrossAttention,
    PerceiverAttention,
    PerceiverResampler,
    create_flamingo,
    load_openflamingo_state_dict,
)
from fmkit.ops import _backend  # noqa: E402

# perceiver_attention and media_cross_attention have the same backends; on a GPU machine triton
# runs on CUDA tensors (tests/_backends.py), with the same assertions.
BACKENDS = placements("perceiver_attention", "torch", "cpu", "triton")
CORPUS = ["a photo of a cat", "a dog on the grass", "two birds in the sky", "Output: a red car",
          "the cat sat on a mat", "a small dog and a big cat"]


# ---- transcriptions of the reference math (open_flamingo helpers.py) ----

def reference_perceiver_attention(m, x, latents):
    x, latents = m.norm_media(x), m.norm_latents(latents)
    h = m.heads
    q = m.to_q(latents)
    kv_input = torch.cat((x, latents), dim=-2)
    k, v = m.to_kv(kv_input).chunk(2, dim=-1)
    split = lambda t: t.reshape(*t.shape[:-1], h, -1).transpose(-3, -2)  # noqa: E731
    q, k, v = split(q) * m.scale, split(k), split(v)
    sim = q @ k.transpose(-1, -2)
    sim = sim - sim.amax(dim=-1, keepdim=True).detach()
    out = sim.softmax(dim=-1) @ v
    out = out.transpose(-3, -2).flatten(-2)
    return m.to_out(out)


def reference_masked_cross_attention(m, x, media, media_locations):
    b, t_img, n = media.shape[:3]
    h = m.heads
    x = m.norm(x)
    q = m.to_q(x)
    k, v = m.to_kv(media.reshape(b, t_img * n, -1)).chunk(2, dim=-1)
    split = lambda t: t.reshape(*t.shape[:-1], h, -1).transpose(-3, -2)  # noqa: E731
    q, k, v = split(q) * m.scale, split(k), split(v)
    sim = q @ k.transpose(-1, -2)
    text_time = media_locations.cumsum(dim=-1)
    media_time = torch.arange(t_img) + 1
    mask = text_time[:, None, :, None] == media_time.repeat_interleave(n)[None, None, None, :]
    sim = sim.masked_fill(~mask, -torch.finfo(sim.dtype).max)
    sim = sim - sim.amax(dim=-1, keepdim=True).detach()
    attn = sim.softmax(dim=-1)
    attn = attn.masked_fill((text_time == 0)[:, None, :, None], 0.0)
    out = (attn @ v).transpose(-3, -2).flatten(-2)
    return m.to_out(out)


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_perceiver_attention_matches_reference(backend, device):
    torch.manual_seed(0)
    m = PerceiverAttention(dim=24, dim_head=16, heads=3, backend=backend)
    x, latents = torch.randn(2, 3, 10, 24), torch.randn(2, 3, 7, 24)
    ref = reference_perceiver_attention(m, x, latents)  # on the CPU
    out = m.to(device)(x.to(device), latents.to(device))
    assert out.device.type == device
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_masked_cross_attention_matches_reference(backend, device):
    torch.manual_seed(1)
    m = MaskedCrossAttention(dim=20, dim_visual=12, dim_head=16, heads=2, backend=backend)
    media = torch.randn(2, 3, 5, 12)
    x = torch.randn(2, 9, 20)
    locations = torch.zeros(2, 9, dtype=torch.bool)
    locations[0, [2, 5, 7]] = True  # text before the first image, then three images
    locations[1, [0]] = True        # one image only
    idx = locations.long().cumsum(-1)
    ref = reference_masked_cross_attention(m, x, media, locations)  # on the CPU
    out = m.to(device)(x.to(device), media.to(device), idx.to(device))
    assert out.device.type == device
    out = out.cpu()
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    assert (out[0, :2] == 0).all()  # text before any image: exactly zero


def test_perceiver_images_are_independent():
    torch.manual_seed(2)
    p = PerceiverResampler(dim=16, depth=2, dim_head=8, heads=2, num_latents=4, backend="torch")
    x = torch.randn(2, 3, 1, 6, 16)
    base = p(x)
    x2 = x.clone()
    x2[1, 2] += torch.randn(1, 6, 16)  # not a constant shift: LayerNorm would remove that
    changed = (p(x2) - base).abs().amax(dim=(-1, -2))
    assert changed[1, 2] > 1e-3 and changed.sum() == changed[1, 2]


# ---- a tiny end-to-end model ----

class TinyVision(nn.Module):
    """Pixels (N, 3, 16, 16) -> 16 patch tokens of width 16."""

    output_dim = 16

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, 16, kernel_size=4, stride=4)

    def forward(self, pixels):
        return self.patch(pixels).flatten(2).transpose(1, 2)


def tiny_tokenizer():
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.train_from_iterator(CORPUS, tokenizers.trainers.WordLevelTrainer(special_tokens=["[UNK]", "<eos>"]))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="<eos>",
                                                padding_side="left")


def tiny_flamingo(every=1, backend="auto", layers=2):
    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    config = transformers.GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=layers, n_head=2)
    lm = transformers.GPT2LMHeadModel(config)
    model = create_flamingo(TinyVision(), lm, tokenizer, cross_attn_every_n_layers=every, backend=backend)
    return model.eval(), tokenizer


def batch(tokenizer, texts, images=2):
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    g = torch.Generator().manual_seed(3)
    vision_x = torch.randn(len(texts), images, 1, 3, 16, 16, generator=g)
    return vision_x, enc["input_ids"], enc["attention_mask"]


def test_special_tokens_placement_and_frozen_parameters():
    model, tok = tiny_flamingo(every=2, layers=4)
    assert "<image>" in tok.get_vocab() and "<|endofchunk|>" in tok.get_vocab() and tok.pad_token is not None
    blocks = model.lang_encoder.gated_cross_attn_layers
    assert [b is not None for b in blocks] == [False, True, False, True]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("perceiver.") for n in trainable)
    assert not any(n.startswith("vision_encoder.") for n in trainable)
    assert not any(".decoder_layer." in n for n in trainable)


def test_identity_at_init_and_label_masking():
    model, tok = tiny_flamingo()
    vision_x, ids, mask = batch(tok, ["<image> a photo of a cat <|endofchunk|> <image> a dog", "<image> a red car"])
    with torch.no_grad():
        out = model(vision_x, ids, mask).logits
        model._clear()
        plain = model.lang_encoder(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(out, plain)  # tanh(0) gates: every block is exactly the identity
    labels = model.make_labels(ids)
    assert (labels[ids == model.image_token_id] == -100).all() and (labels[ids == model.pad_token_id] == -100).all()
    inter = model.make_labels(torch.tensor([[5, model.image_token_id, 6, model.end_of_chunk_token_id, 7,
                                             model.image_token_id, 8]]), interleaved=True)
    assert inter.tolist() == [[-100, -100, 6, model.end_of_chunk_token_id, -100, -100, 8]]


def test_training_step_lowers_loss():
    model, tok = tiny_flamingo()
    model.train()
    vision_x, ids, mask = batch(tok, ["<image> a photo of a cat <|endofchunk|>", "<image> a dog on the grass"], 1)
    labels = model.make_labels(ids)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = model(vision_x, ids, mask, labels=labels).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1
    assert model.lang_encoder.gated_cross_attn_layers[0].attn_gate.abs().item() > 0


@pytest.mark.parametrize("num_beams", [1, 2])
def test_cached_generation_equals_uncached(num_beams):
    model, tok = tiny_flamingo()
    with torch.no_grad():
        for block in model.lang_encoder.gated_cross_attn_layers:  # open the gates so the images matter
            block.attn_gate.fill_(1.0)
            block.ff_gate.fill_(0.5)
    vision_x, ids, mask = batch(tok, ["<image> a photo of <|endofchunk|> <image> a", "<image> two birds"])
    common = dict(max_new_tokens=6, num_beams=num_beams, do_sample=False, output_scores=True,
                  return_dict_in_generate=True)
    cached = model.generate(vision_x, ids, mask, **common)
    media_uncached = model.generate(vision_x, ids, mask, use_media_cache=False, **common)
    uncached = model.generate(vision_x, ids, mask, use_media_cache=False, use_cache=False, **common)
    assert torch.equal(cached.sequences, media_uncached.sequences)
    assert torch.equal(cached.sequences, uncached.sequences)
    for a, b in zip(cached.scores, uncached.scores):  # not just the same argmax: the same scores
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert cached.sequences.shape[1] > ids.shape[1]
    with torch.no_grad():  # and the images matter
        assert not torch.allclose(model(vision_x, ids, mask).logits, model(vision_x.flip(1), ids, mask).logits)


def test_generated_tokens_attend_the_last_image():
    """Decode steps (with the LM's KV cache) continue the prompt's <image> count."""
    model, tok = tiny_flamingo()
    vision_x, ids, mask = batch(tok, ["<image> a photo of <|endofchunk|> <image> a", "<image> two birds"])
    seen = []
    hook = model._set_media_index

    def spy(module, args, kwargs):
        hook(module, args, kwargs)
        seen.append(model._layers[0].media_index.clone())

    model.lang_encoder._forward_pre_hooks.clear()
    model.lang_encoder.register_forward_pre_hook(spy, with_kwargs=True)
    model.generate(vision_x, ids, mask, max_new_tokens=3, do_sample=False)
    assert seen[0].shape == ids.shape
    for step in seen[1:]:
        assert step.shape[1] == 1 and step[:, 0].tolist() == [2, 1]


def test_beam_latents_from_one_encoding_equal_repeated_pixels():
    model, tok = tiny_flamingo()
    vision_x, _, _ = batch(tok, ["a", "b"])
    once = model.encode_vision_x(vision_x).repeat_interleave(3, dim=0)
    repeated = model.encode_vision_x(vision_x.repeat_interleave(3, dim=0))
    torch.testing.assert_close(once, repeated)


def test_bad_inputs():
    model, tok = tiny_flamingo()
    vision_x, ids, mask = batch(tok, ["<image> a <image> b <image> c"], images=2)
    with pytest.raises(ValueError, match="media_index: sample 0 refers to image 3 .* only 2 images"):
        model(vision_x, ids, mask)
    with pytest.raises(ValueError, match=r"vision_x: expected \[B, T_img, F, C, H, W\]"):
        model(vision_x[:, 0], ids, mask)
    with pytest.raises(ValueError, match="vision_x: batch 1 does not match lang_x batch 2"):
        model(vision_x, ids.repeat(2, 1), mask.repeat(2, 1))


def test_load_released_state_dict_names():
    model, _ = tiny_flamingo()
    released = {k: v.clone() + 0.5 for k, v in model.state_dict().items()
                if k.startswith("perceiver.") or "gated_cross_attn_layer" in k or k.endswith("wte.weight")}
    assert "perceiver.layers.0.0.to_kv.weight" in released and "perceiver.layers.0.1.3.weight" in released
    assert "lang_encoder.gated_cross_attn_layers.0.attn.to_q.weight" in released
    fresh, _ = tiny_flamingo()
    missing, unexpected = load_openflamingo_state_dict(fresh, released)
    assert not unexpected
    torch.testing.assert_close(fresh.perceiver.layers[0][0].to_kv.weight, released["perceiver.layers.0.0.to_kv.weight"])
    with pytest.raises(ValueError, match="unexpected keys"):
        load_openflamingo_state_dict(fresh, {**released, "perceiver.bogus": torch.zeros(1)})
    partial = {k: v for k, v in released.items() if not k.startswith("perceiver.latents")}
    with pytest.raises(ValueError, match="missing trainable keys"):
        load_openflamingo_state_dict(copy.deepcopy(fresh), partial)


def open_flamingo_live_state_dict(model):
    """What a live open_flamingo model's state_dict() holds: its FlamingoLMMixin keeps the original
    decoder layers as `lang_encoder.old_decoder_blocks` too, so state_dict() lists each decoder
    weight under both prefixes (the same tensors)."""
    live = copy.deepcopy(model)
    live.lang_encoder.old_decoder_blocks = torch.nn.ModuleList(layer.decoder_layer for layer in live._layers)
    return live.state_dict()


def test_load_live_open_flamingo_state_dict():
    model, _ = tiny_flamingo()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.25)
    live = open_flamingo_live_state_dict(model)
    aliases = [k for k in live if k.startswith("lang_encoder.old_decoder_blocks.")]
    assert "lang_encoder.old_decoder_blocks.0.attn.c_attn.weight" in aliases
    assert live["lang_encoder.old_decoder_blocks.1.mlp.c_fc.weight"].data_ptr() == \
        live["lang_encoder.transformer.h.1.decoder_layer.mlp.c_fc.weight"].data_ptr()
    fresh, _ = tiny_flamingo()
    with pytest.warns(UserWarning, match=f"dropped {len(aliases)} lang_encoder.old_decoder_blocks"):
        missing, unexpected = load_openflamingo_state_dict(fresh, live)
    assert not missing and not unexpected
    for k, v in model.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[k], v, rtol=0, atol=0)
    # Strictness stays on the trainable keys.
    with pytest.raises(ValueError, match="missing trainable keys"), pytest.warns(UserWarning):
        load_openflamingo_state_dict(copy.deepcopy(fresh), {k: v for k, v in live.items() if "perceiver" not in k})
    # An alias that disagrees with its canonical key is an error, not a silent choice.
    bad = dict(live)
    bad["lang_encoder.old_decoder_blocks.0.ln_1.weight"] = bad["lang_encoder.old_decoder_blocks.0.ln_1.weight"] + 1
    with pytest.raises(ValueError, match="old_decoder_blocks.0.ln_1.weight and .*h.0.decoder_layer.ln_1.weight"):
        load_openflamingo_state_dict(copy.deepcopy(fresh), bad)
    # Only the alias present: loaded under the canonical name.
    only_alias = {k: v for k, v in live.items() if ".decoder_layer." not in k}
    other, _ = tiny_flamingo()
    with pytest.warns(UserWarning):
        load_openflamingo_state_dict(other, only_alias)
    torch.testing.assert_close(other.lang_encoder.transformer.h[1].decoder_layer.mlp.c_fc.weight,
                               model.lang_encoder.transformer.h[1].decoder_layer.mlp.c_fc.weight)


def test_ops_gradcheck_float64():
    from fmkit.ops import media_cross_attention, perceiver_attention

    g = torch.Generator().manual_seed(4)
    mk = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)  # noqa: E731
    q, km, vm, kl, vl = mk(1, 2, 3, 4), mk(1, 2, 5, 4), mk(1, 2, 5, 4), mk(1, 2, 3, 4), mk(1, 2, 3, 4)
    assert torch.autograd.gradcheck(lambda *a: perceiver_attention(*a, backend="torch"), (q, km, vm, kl, vl))
    k, v = mk(1, 2, 6, 4), mk(1, 2, 6, 4)
    index = torch.tensor([[0, 1, 1, 3]])
    q2 = mk(1, 2, 4, 4)
    assert torch.autograd.gradcheck(
        lambda q, k, v: media_cross_attention(q, k, v, index, latents_per_media=2, backend="torch"), (q2, k, v))


def test_llama_family_is_wrapped_too():
    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=2,
                                      max_position_embeddings=64)
    model = create_flamingo(TinyVision(), transformers.LlamaForCausalLM(config), tokenizer,
                            cross_attn_every_n_layers=3).eval()
    assert model.decoder_layers_path == "model.layers"
    assert [b is not None for b in model.lang_encoder.gated_cross_attn_layers] == [False, False, True]
    vision_x, ids, mask = batch(tokenizer, ["<image> a photo of a cat", "<image> a dog"], images=1)
    with torch.no_grad():
        out = model(vision_x, ids, mask, labels=model.make_labels(ids))
    assert torch.isfinite(out.loss)
