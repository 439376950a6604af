"""fmkit.flamingo training features: parameter counts (spec §2.10), the freezing policy (§2.6),
activation checkpointing, FSDP2 wrapping, fp32/bf16/fp16, and the factory's device and dtype."""
import os
import socket
from contextlib import nullcontext

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from fmkit.flamingo import (  # noqa: E402
    GatedCrossAttentionBlock,
    PerceiverResampler,
    create_flamingo,
    flamingo_parameter_count,
    freeze_for_training,
)
from test_flamingo import TinyVision, batch, tiny_tokenizer  # noqa: E402

TEXTS = ["<image> a photo of a cat <|endofchunk|> <image> a dog", "<image> a red car",
         "<image> two birds in the sky", "<image> the cat sat <|endofchunk|> <image> on a mat"]


def tiny(every=1, layers=2, **factory):
    """A tiny Flamingo without dropout (train mode is deterministic) and with open gates (the
    images and the perceiver reach the loss)."""
    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    config = transformers.GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=layers, n_head=2,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = create_flamingo(TinyVision(), transformers.GPT2LMHeadModel(config), tokenizer,
                            cross_attn_every_n_layers=every, **factory)
    with torch.no_grad():
        for block in model.lang_encoder.gated_cross_attn_layers:
            if block is not None:
                block.attn_gate.fill_(1.0)
                block.ff_gate.fill_(0.5)
    return model, tokenizer


def numel(*modules):
    return sum(p.numel() for p in {id(p): p for m in modules for p in m.parameters()}.values())


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# ---- parameter counts (§2.10) ----

def test_parameter_count_reproduces_the_spec_table():
    for dim, layers, every, block, blocks, total in [(2048, 24, 1, 36.71, 881.0, 944.0),    # OF-3B
                                                     (2560, 32, 2, 56.11, 897.7, 960.8),    # OF-4B
                                                     (4096, 32, 4, 139.48, 1115.8, 1178.8)]:  # OF-9B
        c = flamingo_parameter_count(dim, layers, every)
        assert round(c.perceiver / 1e6, 2) == 63.02 and round(c.per_block / 1e6, 2) == block
        assert round(c.blocks / 1e6, 1) == blocks and round(c.total / 1e6, 1) == total
        assert c.per_block == 8 * dim ** 2 + 1024 * dim + 1024 ** 2 + 4 * dim + 2
    assert round(flamingo_parameter_count(4096, 32, 1).total / 1e9, 2) == 4.53  # LLaMA-7B at n = 1 (#259)
    with pytest.raises(ValueError, match="cross_attn_every_n_layers"):
        flamingo_parameter_count(64, 4, 0)


def test_parameter_count_matches_built_modules():
    with torch.device("meta"):  # full-size modules without allocating them
        assert numel(PerceiverResampler(dim=1024)) == flamingo_parameter_count(2048, 1).perceiver
        for dim in (2048, 2560, 4096):
            block = GatedCrossAttentionBlock(dim=dim, dim_visual=1024)
            assert numel(block) == flamingo_parameter_count(dim, 1).per_block
        odd = dict(heads=4, dim_head=16, ff_mult=2)
        c = flamingo_parameter_count(40, 3, vis_dim=48, num_latents=5, perceiver_depth=3, **odd)
        assert numel(PerceiverResampler(dim=48, depth=3, num_latents=5, **odd)) == c.perceiver
        assert numel(GatedCrossAttentionBlock(dim=40, dim_visual=48, **odd)) == c.per_block


@pytest.mark.parametrize("every,layers", [(1, 2), (4, 8), (2, 5)])
def test_parameter_count_matches_a_built_model(every, layers):
    model, _ = tiny(every=every, layers=layers)
    c = flamingo_parameter_count(32, layers, every, vis_dim=TinyVision.output_dim)
    blocks = [b for b in model.lang_encoder.gated_cross_attn_layers if b is not None]
    assert len(blocks) == c.num_blocks
    assert numel(model.perceiver, *blocks) == c.total
    emb = model.lang_encoder.get_input_embeddings().weight
    assert sum(p.numel() for p in model.parameters() if p.requires_grad and p is not emb) == c.total


# ---- freezing policy (§2.6) ----

def test_freeze_for_training_policy():
    model, tok = tiny(every=2, layers=4)
    emb = model.lang_encoder.get_input_embeddings().weight
    expected = {id(p) for p in [*model.perceiver.parameters(), *model.lang_encoder.gated_cross_attn_layers.parameters(),
                                emb]}
    assert {id(p) for p in model.parameters() if p.requires_grad} == expected  # applied by the constructor

    def embedding_rows_with_grad():
        emb.grad = None
        vision_x, ids, mask = batch(tok, TEXTS[:2])
        model(vision_x, ids, mask, labels=model.make_labels(ids)).loss.backward()
        return set(emb.grad.abs().sum(1).nonzero().flatten().tolist())

    assert embedding_rows_with_grad() <= {model.image_token_id, model.end_of_chunk_token_id}
    assert freeze_for_training(model, train_embeddings=False) is model
    assert not emb.requires_grad and not emb._backward_hooks
    assert {id(p) for p in model.parameters() if p.requires_grad} == expected - {id(emb)}
    freeze_for_training(model)  # back on, with one hook, not two
    assert emb.requires_grad and len(emb._backward_hooks) == 1
    assert embedding_rows_with_grad() == {model.image_token_id, model.end_of_chunk_token_id}


# ---- activation checkpointing ----

@pytest.mark.slow
@pytest.mark.parametrize("lm_too", [False, True])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(lm_too):
    def run(enabled):
        model, tok = tiny(layers=3)
        model.train()
        model.set_gradient_checkpointing(enabled)
        if enabled and lm_too:  # transformers' own switch (renamed in transformers 5)
            lm = model.lang_encoder
            enable = getattr(lm, "activation_checkpointing_enable", None) or lm.gradient_checkpointing_enable
            enable({"use_reentrant": False})
        calls = []
        inner = [model.perceiver.layers[0][0], model.lang_encoder.gated_cross_attn_layers[0].attn,
                 model.lang_encoder.transformer.h[0].decoder_layer.attn]  # submodules of what is checkpointed
        for i, m in enumerate(inner):
            m.register_forward_hook(lambda *_, i=i: calls.append(i))
        vision_x, ids, mask = batch(tok, TEXTS[:2])
        loss = model(vision_x, ids, mask, labels=model.make_labels(ids)).loss
        loss.backward()
        return loss.detach(), grads(model), sorted(calls)

    loss, g, calls = run(False)
    loss_ck, g_ck, calls_ck = run(True)
    assert calls == [0, 1, 2]
    assert calls_ck == ([0, 0, 1, 1, 2, 2] if lm_too else [0, 0, 1, 1, 2])  # recomputed in backward
    torch.testing.assert_close(loss_ck, loss, rtol=0, atol=1e-6)
    assert g_ck.keys() == g.keys() and len(g) > 0
    for name in g:
        torch.testing.assert_close(g_ck[name], g[name], rtol=1e-6, atol=1e-6, msg=name)


def test_gradient_checkpointing_leaves_generation_alone():
    model, tok = tiny()
    vision_x, ids, mask = batch(tok, TEXTS[:2])
    plain = model.generate(vision_x, ids, mask, max_new_tokens=4, num_beams=2)
    model.set_gradient_checkpointing(True)
    assert torch.equal(model.generate(vision_x, ids, mask, max_new_tokens=4, num_beams=2), plain)


# ---- FSDP2 (fully_shard) on 2 CPU processes with gloo ----

def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _training_setup():
    model, tok = tiny()
    # The embedding would need its own data-parallel reduction; this test is about the FSDP units.
    freeze_for_training(model, train_embeddings=False)
    vision_x, ids, mask = batch(tok, TEXTS)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    return model.train(), opt, vision_x, ids, mask, model.make_labels(ids)


def _fsdp_worker(rank, world, port, results):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model, _, vision_x, ids, mask, labels = _training_setup()
        model.set_gradient_checkpointing(True)  # checkpointing inside the FSDP units
        mesh = init_device_mesh("cpu", (world,))
        fully_shard(model.perceiver, mesh=mesh)
        for block in model.lang_encoder.gated_cross_attn_layers:
            fully_shard(block, mesh=mesh)
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        assert all(isinstance(p, DTensor) for _, p in trainable)
        # The optimizer is built after wrapping, on the sharded parameters.
        opt = torch.optim.AdamW([p for _, p in trainable], lr=1e-3)
        rows = slice(rank * 2, rank * 2 + 2)
        loss = model(vision_x[rows], ids[rows], mask[rows], labels=labels[rows]).loss
        loss.backward()
        grad = {n: p.grad.full_tensor() for n, p in trainable}
        opt.step()
        results[rank] = (loss.item(), grad, {n: p.detach().full_tensor() for n, p in trainable})
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_fsdp2_two_process_step_equals_single_process():
    import torch.multiprocessing as mp

    shared = mp.Manager().dict()
    mp.spawn(_fsdp_worker, args=(2, _free_port(), shared), nprocs=2, join=True)
    results = dict(shared)
    model, _, vision_x, ids, mask, labels = _training_setup()
    # FSDP averages the ranks' gradients: the single-process loss is the mean of the two halves'.
    losses = [model(vision_x[rows], ids[rows], mask[rows], labels=labels[rows]).loss
              for rows in (slice(0, 2), slice(2, 4))]
    sum(losses).div(2).backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    start = {n: p.detach().clone() for n, p in trainable.items()}
    for rank in range(2):
        loss, rank_grad, rank_params = results[rank]
        assert loss == pytest.approx(losses[rank].item(), rel=1e-6)
        assert rank_grad.keys() == trainable.keys()
        for n, p in trainable.items():
            torch.testing.assert_close(rank_grad[n], p.grad, rtol=1e-5, atol=1e-7, msg=f"rank {rank} grad {n}")
        # Adam's first step is about lr * sign(grad): a gradient that is 0 up to rounding makes the
        # parameters differ by up to lr. So the sharded step is checked against an unsharded AdamW
        # step taken from the same (FSDP-reduced) gradient, which isolates the optimizer on shards.
        with torch.no_grad():
            for n, p in trainable.items():
                p.copy_(start[n])
                p.grad = rank_grad[n].clone()
        reference_opt = torch.optim.AdamW(list(trainable.values()), lr=1e-3)
        reference_opt.step()
        for n, p in trainable.items():
            torch.testing.assert_close(rank_params[n], p.detach(), rtol=1e-6, atol=1e-7, msg=f"rank {rank} {n}")


# ---- precisions, device and dtype ----

@pytest.mark.slow
@pytest.mark.parametrize("mode,tol", [("bfloat16", 2e-2), ("float16", 5e-3), ("autocast_bf16", 2e-2)])
def test_precision_end_to_end(mode, tol):
    reference, tok = tiny()
    vision_x, ids, mask = batch(tok, TEXTS[:2])  # fp32 pixels in every mode: the model casts them
    labels = reference.make_labels(ids)
    loss32 = reference(vision_x, ids, mask, labels=labels).loss
    if mode == "autocast_bf16":
        model, dtype, param_dtype = reference, torch.bfloat16, torch.float32
        precision = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    else:
        dtype = param_dtype = getattr(torch, mode)
        model, _ = tiny(dtype=dtype)
        precision = nullcontext
    model.train()
    with precision():
        out = model(vision_x, ids, mask, labels=labels)
    out.loss.backward()
    assert out.logits.dtype == dtype and torch.isfinite(out.loss)
    assert abs(out.loss.item() - loss32.item()) <= tol
    for name, p in model.named_parameters():
        assert p.dtype == param_dtype, name
        if p.requires_grad:
            assert p.grad is not None and p.grad.dtype == param_dtype and torch.isfinite(p.grad).all(), name
    assert model.perceiver.latents.grad.abs().sum() > 0
    with precision():
        tokens = model.generate(vision_x, ids, mask, max_new_tokens=4, num_beams=2)
    assert tokens.shape[0] == 2 and tokens.shape[1] > ids.shape[1]


def test_factory_device_and_dtype():
    fp32, _ = tiny()
    bf16, tok = tiny(device="cpu", dtype=torch.bfloat16)
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    for (name, a), b in zip(fp32.state_dict().items(), bf16.state_dict().values()):
        assert torch.equal(a.to(torch.bfloat16), b), name  # same initialisation, cast
    on_meta, _ = tiny(device="meta")  # every part honours the device, including the new modules
    assert {p.device.type for p in on_meta.parameters()} == {"meta"}

    # Without dtype=, the perceiver and blocks follow the LM: a bf16 LM with an fp32 vision encoder works.
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=2)
    model = create_flamingo(TinyVision(), transformers.GPT2LMHeadModel(config).to(torch.bfloat16), tiny_tokenizer())
    assert model.perceiver.latents.dtype == torch.bfloat16 and model.vision_encoder.patch.weight.dtype == torch.float32
    assert model.lang_encoder.gated_cross_attn_layers[0].attn.to_q.weight.dtype == torch.bfloat16
    vision_x, ids, mask = batch(tok, TEXTS[:2])
    out = model(vision_x, ids, mask, labels=model.make_labels(ids))
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.logits.dtype == torch.bfloat16
