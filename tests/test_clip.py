"""fmkit.clip: the tiny CLIP model, the training recipe (accumulation, DDP, checkpoints) and evaluation."""
import functools
import math
import os
import socket

import pytest
import torch

from fmkit.clip import (CONFIGS, SCALES, OpenClipAdapter, WarmupCosine, contrastive_backward, create_model,
                        datacomp_average, encode_images, encode_texts, recall_from_features, retrieval_recall,
                        train_clip, zero_shot_accuracy, zero_shot_classifier)
from fmkit.losses import ClipLoss

# The training logic these tests pin (bit-identical resumes, accumulation, rank equivalence) is
# device-independent; on a GPU machine the trainer would default to CUDA and bf16, so pin the CPU.
train_clip = functools.partial(train_clip, device="cpu")

VOCAB, CTX, CLASSES = 64, 12, 8
EOT = VOCAB - 1
WORDS = {"a": 2, "photo": 3, "of": 4, "the": 5, "picture": 6, "an": 7, "image": 8}
WORDS.update({f"class{c}": 10 + c for c in range(CLASSES)})


def tokenize(prompts):
    """Word-level toy tokenizer: [BOS=1, words..., EOT=63], zero-padded to CTX."""
    out = torch.zeros(len(prompts), CTX, dtype=torch.long)
    for i, prompt in enumerate(prompts):
        ids = [1] + [WORDS[w] for w in prompt.replace(".", "").split()] + [EOT]
        out[i, : len(ids)] = torch.tensor(ids)
    return out


def tiny(seed=0):
    torch.manual_seed(seed)
    return create_model("tiny", vocab_size=VOCAB, context_length=CTX)


_PATTERNS = torch.randn(CLASSES, 3, 32, 32, generator=torch.Generator().manual_seed(123))


def separable(n, seed):
    """n (image, caption) pairs: class-specific image pattern + noise, caption names the class."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, CLASSES, (n,), generator=g)
    images = _PATTERNS[labels] + 0.5 * torch.randn(n, 3, 32, 32, generator=g)
    texts = tokenize([f"a photo of a class{int(c)}" for c in labels])
    return images, texts, labels


def batches(count, size, seed=0):
    return [separable(size, seed * 1000 + i)[:2] for i in range(count)]


FAST = dict(progress=False, lr=1e-3, warmup=1)


@pytest.fixture(autouse=True)
def _one_thread():
    """The tiny model gains nothing from intra-op threads, and on a busy machine OpenMP
    barriers make it ~100x slower; restore the setting afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- model ----

def test_tiny_shapes_normalisation_and_logit_scale_init():
    model = tiny()
    images, texts, _ = separable(5, 0)
    image_features, text_features, scale = model(images, texts)
    assert image_features.shape == (5, 32) and text_features.shape == (5, 32)
    torch.testing.assert_close(image_features.norm(dim=-1), torch.ones(5))
    torch.testing.assert_close(text_features.norm(dim=-1), torch.ones(5))
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert scale.item() == pytest.approx(1 / 0.07, rel=1e-6)
    assert model(images, None)[1] is None and model(None, texts)[0] is None
    assert CONFIGS["tiny"]["vision"] == dict(image_size=32, patch_size=8, width=64, layers=2, heads=2)


def test_open_clip_parameter_counts():
    # With open_clip's dims and layout, the parameter counts equal open_clip's ViT-B-32 / B-16 / L-14.
    with torch.device("meta"):
        counts = {name: sum(p.numel() for p in create_model(name).parameters()) for name in ("B-32", "B-16", "L-14")}
    assert counts == {"B-32": 151_277_313, "B-16": 149_620_737, "L-14": 427_616_513}


def test_causal_text_and_eot_pooling():
    model = tiny().eval()
    texts = tokenize(["a photo of a class1", "a class2"])
    changed = texts.clone()
    changed[:, -1] = 9  # after the EOT: invisible to the pooled (EOT) position under the causal mask
    torch.testing.assert_close(model.encode_text(texts), model.encode_text(changed))
    last = create_model("tiny", vocab_size=VOCAB, context_length=CTX, text_pool="last")
    assert torch.equal(last.text.pool_index(texts), model.text.pool_index(texts))
    texts[0, 2] = 5  # an earlier token changes the feature
    assert not torch.allclose(model.encode_text(texts)[0], model.encode_text(changed)[0])


# ---- training ----

def test_training_lowers_the_loss():
    model = tiny()
    result = train_clip(model, batches(30, 32), steps=30, batch_size=32, progress=False, lr=2e-3, warmup=3)
    assert result.step == 30 and len(result.losses) == 30
    assert sum(result.losses[-5:]) / 5 < result.losses[0] - 0.5
    assert result.samples_per_second > 0
    assert result.lr[0] == pytest.approx(2e-3 / 3)


def test_bf16_autocast_with_accumulation_and_progress_bar(capsys):
    r = train_clip(tiny(), batches(3, 16), steps=3, batch_size=16, precision="bf16", accum_freq=2, log_every=1,
                   lr=1e-3, warmup=1)
    assert r.step == 3 and all(math.isfinite(v) for v in r.losses)
    assert "samples_per_s" in capsys.readouterr().err


def test_amp_fp16_with_loss_scaling(tmp_path):
    """DataComp's own precision: fp16 autocast + a dynamic GradScaler. Training runs, the loss
    falls, the scaler's state is checkpointed, and one scaled step equals the fp32-loss
    gradient after unscaling (loss scaling must not change what is learned)."""
    model = tiny()
    r = train_clip(model, batches(12, 16), steps=12, batch_size=16, precision="amp", lr=2e-3, warmup=2,
                   checkpoint_dir=str(tmp_path), progress=False)
    assert r.step == 12 and all(math.isfinite(v) for v in r.losses)
    assert sum(r.losses[-3:]) / 3 < r.losses[0]
    state = torch.load(tmp_path / "latest.pt", weights_only=False)
    assert state["extra"]["scaler"]["scale"] > 0
    images, texts = batches(1, 8)[0]
    grads = []
    for scale in (1.0, 1024.0):
        m = tiny()
        contrastive_backward(m, images, texts, loss_scale=scale)
        grads.append([p.grad / scale for p in m.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_amp_skips_a_step_with_inf_gradients():
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = lambda x, y, s: ClipLoss()(x, y, s) * float("inf")  # noqa: E731
    train_clip(model, batches(1, 8), steps=1, batch_size=8, loss=loss, precision="amp", **FAST)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_schedule_warmup_then_cosine():
    f = WarmupCosine(warmup=4, steps=12)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(8) == pytest.approx(0.5) and f(12) == pytest.approx(0.0)


def test_logit_scale_clamped_after_every_step():
    # A loss that pushes logit_scale past the bound: the step overshoots, the clamp brings it back.
    for start, push, expect in ((math.log(100) - 5e-4, -1.0, math.log(100)), (5e-4, 1.0, 0.0)):
        model = tiny()
        with torch.no_grad():
            model.logit_scale.fill_(start)
        loss = lambda x, y, s, push=push: ClipLoss()(x, y, s) + push * 100 * s.log()  # noqa: E731
        train_clip(model, batches(1, 8), steps=1, batch_size=8, loss=loss, **FAST)
        assert model.logit_scale.item() == pytest.approx(expect, abs=1e-7)


def test_weight_decay_groups_and_scales():
    from fmkit.clip import param_groups

    model = tiny()
    no_decay, decay = param_groups(model, 0.2)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.2 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"])
    assert "logit_scale" in {names[id(p)] for p in no_decay["params"]}
    assert SCALES["small"]["batch_size"] == 4096 and SCALES["xlarge"]["beta2"] == 0.95
    assert SCALES["large"]["steps"] == 156_250 and SCALES["medium"]["model"] == "B-32"


def test_checkpoint_resume_equals_continuing(tmp_path):
    data = batches(4, 16, seed=3)
    straight = tiny()
    train_clip(straight, iter(data), steps=4, batch_size=16, checkpoint_dir=str(tmp_path / "a"), **FAST)

    first = tiny()
    with pytest.warns(UserWarning, match="data ran out at step 2"):
        r = train_clip(first, iter(data[:2]), steps=4, batch_size=16, checkpoint_dir=str(tmp_path / "b"), **FAST)
    assert r.stopped_early and r.step == 2
    resumed = tiny(seed=7)  # a different init: everything must come from the checkpoint
    r = train_clip(resumed, iter(data[2:]), steps=4, batch_size=16, checkpoint_dir=str(tmp_path / "b"), **FAST)
    assert r.step == 4 and len(r.losses) == 2

    for (name, p), q in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(p, q), name
    a = torch.load(tmp_path / "a" / "latest.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "latest.pt", weights_only=False)
    assert a["step"] == b["step"] == 4 and a["scheduler"] == b["scheduler"]
    for key, state in a["optimizer"]["state"].items():
        for k, v in state.items():
            assert torch.equal(v, b["optimizer"]["state"][key][k]), (key, k)
    # Already finished: resuming again does nothing.
    assert train_clip(resumed, iter(data), steps=4, batch_size=16, checkpoint_dir=str(tmp_path / "b"),
                      **FAST).losses == []


def test_accumulation_equals_full_batch_gradient():
    images, texts, _ = separable(12, 5)
    grads = []
    for accum in (1, 2, 3):
        model = tiny()
        loss = contrastive_backward(model, images, texts, loss=ClipLoss(), accum_freq=accum)
        grads.append((loss, {n: p.grad.clone() for n, p in model.named_parameters()}))
    for loss, g in grads[1:]:
        assert loss.item() == pytest.approx(grads[0][0].item(), rel=1e-5)
        for name, ref in grads[0][1].items():
            torch.testing.assert_close(g[name], ref, rtol=1e-4, atol=1e-6, msg=name)
    assert grads[0][1]["logit_scale"].abs() > 1e-4  # k times too large under open_clip's accumulation

    one, two = tiny(), tiny()
    data = batches(1, 16, seed=4)
    train_clip(one, data, steps=1, batch_size=16, **FAST)
    train_clip(two, data, steps=1, batch_size=16, accum_freq=2, **FAST)
    for (name, p), q in zip(one.named_parameters(), two.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5, msg=name)


def test_rebatching_and_epochs():
    model = tiny()
    data = batches(3, 10, seed=8)  # 30 samples: batches of 12 cross batch and epoch boundaries
    r = train_clip(model, data, steps=5, batch_size=12, **FAST)
    assert r.step == 5 and not r.stopped_early
    r = train_clip(tiny(), lambda: iter(data), steps=3, batch_size=12, **FAST)
    assert r.step == 3


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank, world, port, results):
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        images, texts = batches(1, 16, seed=9)[0]
        rows = slice(rank * 8, rank * 8 + 8)
        model = tiny()
        r = train_clip(model, [(images[rows], texts[rows])], steps=1, batch_size=16, distributed=True, **FAST)
        # Gradients with accumulation under DDP (no_sync + one all-reduce).
        grad_model = torch.nn.parallel.DistributedDataParallel(tiny())
        loss = ClipLoss(local_loss=True, gather_with_grad=True, rank=rank, world_size=world)
        contrastive_backward(grad_model, images[rows], texts[rows], loss=loss, accum_freq=2, world_size=world)
        results[rank] = ({k: v.clone() for k, v in model.state_dict().items()}, r.losses,
                         {n: p.grad.clone() for n, p in grad_model.module.named_parameters()})
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_distributed_two_process_step_equals_single_process():
    import torch.multiprocessing as mp

    results = mp.Manager().dict()
    mp.spawn(_ddp_worker, args=(2, _free_port(), results), nprocs=2, join=True)
    data = batches(1, 16, seed=9)
    single = tiny()
    r = train_clip(single, data, steps=1, batch_size=16, **FAST)
    grad_model = tiny()
    contrastive_backward(grad_model, *data[0], loss=ClipLoss())
    # The mean of the per-rank local losses is the global loss.
    assert (results[0][1][0] + results[1][1][0]) / 2 == pytest.approx(r.losses[0], rel=1e-5)
    full_grads = dict(grad_model.named_parameters())
    for rank in range(2):
        params, _, grads = results[rank]
        for name, p in grad_model.named_parameters():
            diff = (grads[name] - p.grad).abs().max().item()
            assert diff <= 1e-6 + 1e-4 * p.grad.abs().max().item(), f"rank {rank} {name}: {diff}"
        for name, p in single.named_parameters():
            # Adam's first update is lr g / (|g| + eps): where g is zero up to round-off (the
            # key bias) it amplifies round-off, so compare tightly only where |g| >> eps.
            well_conditioned = full_grads[name].grad.abs() > 1e-4
            diff = (params[name] - p.detach()).abs()
            assert diff[well_conditioned].max().item() <= 1e-6 if well_conditioned.any() else True, name
            assert diff.max().item() <= 2e-3 * 1.01, name  # nothing moves more than lr elsewhere


# ---- evaluation ----

@pytest.mark.slow
def test_zero_shot_accuracy_after_brief_training():
    model = tiny()
    train_clip(model, batches(40, 32, seed=1), steps=40, batch_size=32, progress=False, lr=2e-3, warmup=4)
    classnames = [f"class{c}" for c in range(CLASSES)]
    templates = ["a photo of a {}.", "a picture of the {c}", lambda c: f"an image of {c}"]
    classifier = zero_shot_classifier(model, tokenize, classnames, templates)
    assert classifier.shape == (32, CLASSES)
    torch.testing.assert_close(classifier.norm(dim=0), torch.ones(CLASSES))
    images, _, labels = separable(64, 999)
    acc = zero_shot_accuracy(model, classifier, images, labels, topk=(1, 5))
    assert acc["acc1"] > 0.9 and acc["acc5"] >= acc["acc1"] and acc["mean_per_class_recall"] > 0.9
    assert model.training  # evaluation restores the mode


def _brute_force_recall(x, y, text_to_image, k):
    sims = x @ y.T  # [N, M]
    top_images = sims.T.topk(k, dim=1).indices  # per text
    img = (top_images == text_to_image[:, None]).any(1).float().mean().item()
    top_texts = sims.topk(k, dim=1).indices  # per image
    txt = (text_to_image[top_texts] == torch.arange(x.shape[0])[:, None]).any(1).float().mean().item()
    return img, txt


def test_retrieval_recall_matches_brute_force():
    model = tiny()
    images, texts, _ = separable(40, 17)
    texts[:, 6] = torch.randint(2, 60, (40,))  # make captions distinct
    out = retrieval_recall(model, images, texts, ks=(1, 5, 10), batch_size=16)
    x, y = encode_images(model, images), encode_texts(model, texts)
    for k in (1, 5, 10):
        img, txt = _brute_force_recall(x, y, torch.arange(40), k)
        assert out[f"image_retrieval_recall@{k}"] == pytest.approx(img)
        assert out[f"text_retrieval_recall@{k}"] == pytest.approx(txt)
    assert out["mean_recall@1"] == pytest.approx((out["image_retrieval_recall@1"] +
                                                  out["text_retrieval_recall@1"]) / 2)
    # Several captions per image.
    g = torch.Generator().manual_seed(2)
    x = torch.nn.functional.normalize(torch.randn(30, 16, generator=g), dim=-1)
    y = torch.nn.functional.normalize(torch.randn(90, 16, generator=g), dim=-1)
    owner = torch.arange(30).repeat_interleave(3)
    out = recall_from_features(x, y, owner, ks=(1, 5))
    for k in (1, 5):
        img, txt = _brute_force_recall(x, y, owner, k)
        assert out[f"image_retrieval_recall@{k}"] == pytest.approx(img)
        assert out[f"text_retrieval_recall@{k}"] == pytest.approx(txt)


def test_retrieval_recall_with_tied_scores():
    """Identical captions tie exactly. As in clip_benchmark (DataComp's evaluator), a hit needs
    the positive among the k candidates returned, here with ties ordered by index: caption i is
    among the first k of its tie group only if fewer than k identical captions come before it."""
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(8, 16, generator=g), dim=-1)
    classes = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    y = torch.nn.functional.normalize(torch.randn(2, 16, generator=g), dim=-1)[classes]  # 2 distinct captions
    out = recall_from_features(x, y, ks=(1, 2, 4))
    best = classes[(x @ y.T).argmax(1)]  # per image, the 4 captions of the better class tie
    for k in (1, 2, 4):
        # image i hits if its own caption is in its better class and among the k lowest indices of that class
        hits = [(best[i] == classes[i]) and (i % 4) < k for i in range(8)]
        assert out[f"text_retrieval_recall@{k}"] == pytest.approx(sum(hits) / 8)


def test_datacomp_average():
    results = {"imagenet1k": {"acc1": 0.5, "acc5": 0.8}, "vtab/caltech101": {"acc1": 0.9, "mean_per_class_recall": 0.7},
               "retrieval/flickr_1k_test_image_text_retrieval": {"image_retrieval_recall@1": 0.2,
                                                                 "text_retrieval_recall@1": 0.4},
               "fairness/fairface": {"acc1": 0.1}, "wilds/fmow": {"acc1": 0.3, "worst_region_acc": 0.1}}
    out = datacomp_average(results)
    assert out["n_tasks"] == 4 and "fairness/fairface" not in out["per_task"]
    assert out["average"] == pytest.approx((0.5 + 0.7 + 0.3 + 0.1) / 4)


# ---- adapters ----

def test_adapter_trains_with_fmkit_loss():
    adapter = OpenClipAdapter(tiny())  # anything with encode_image / encode_text(normalize=) / logit_scale
    r = train_clip(adapter, batches(2, 8), steps=2, batch_size=8, **FAST)
    assert r.step == 2 and adapter.logit_scale is adapter.model.logit_scale


def test_open_clip_adapter():
    open_clip = pytest.importorskip("open_clip")
    model = open_clip.create_model("ViT-B-32")
    adapter = OpenClipAdapter(model)
    image_features, text_features, scale = adapter(torch.randn(2, 3, 224, 224), torch.randint(0, 49407, (2, 77)))
    torch.testing.assert_close(image_features.norm(dim=-1), torch.ones(2))
    loss = ClipLoss()(image_features, text_features, scale)
    loss.backward()
    assert model.logit_scale.grad is not None


# ---- bad input ----

@pytest.mark.parametrize("call, match", [
    (lambda: create_model("nope"), "unknown CLIP config"),
    (lambda: create_model("tiny", text_pool="mean"), "text_pool"),
    (lambda: tiny()(torch.randn(2, 3, 16, 16), None), r"expected shape \[B, 3, 32, 32\]"),
    (lambda: tiny()(None, torch.zeros(2, CTX + 1, dtype=torch.long)), "exceeds the context length"),
    (lambda: tiny()(None, torch.full((2, 4), VOCAB)), "token ids must lie in"),
    (lambda: tiny()(None, torch.zeros(2, 4)), "integer"),
    (lambda: train_clip(tiny(), batches(1, 8), scale="huge"), "unknown scale"),
    (lambda: train_clip(tiny(), batches(1, 8), precision="fp16", **FAST), "precision: expected one of"),
    (lambda: train_clip(tiny(), batches(1, 8), accum_freq=0, **FAST), "accum_freq"),
    (lambda: train_clip(tiny(), batches(1, 8), batch_size=9, accum_freq=2, **FAST), "not divisible"),
    (lambda: train_clip(tiny(), batches(1, 8), distributed=True, **FAST), "not initialised"),
    (lambda: train_clip(tiny(), [], batch_size=8, **FAST), "no batches"),
    (lambda: train_clip(tiny(), [(torch.zeros(2, 3, 32, 32), torch.zeros(3, 4, dtype=torch.long))], **FAST),
     "2 images but 3 token rows"),
    (lambda: train_clip(tiny(), [(torch.zeros(2, 3, 32, 32), torch.zeros(2, 4))], **FAST), "long tensor"),
    (lambda: train_clip(torch.nn.Linear(2, 2), batches(1, 8), **FAST), "logit_scale"),
    (lambda: zero_shot_classifier(tiny(), tokenize, [], ["a {}"]), "classnames"),
    (lambda: zero_shot_classifier(tiny(), tokenize, ["class1"], ["no slot"]), "templates"),
    (lambda: zero_shot_accuracy(tiny(), torch.randn(32, 3), torch.randn(4, 3, 32, 32), torch.zeros(5)), "labels"),
    (lambda: zero_shot_accuracy(tiny(), torch.randn(32, 3), torch.randn(4, 3, 32, 32),
                                torch.tensor([0, 1, 2, 3])), r"class indices must lie in \[0, 3\)"),
    (lambda: recall_from_features(torch.randn(3, 4), torch.randn(5, 4)), "text_to_image: required"),
    (lambda: recall_from_features(torch.randn(3, 4), torch.randn(3, 4), ks=(0,)), "ks"),
    (lambda: datacomp_average({"wilds/fmow": {"acc1": 0.3}}), "worst_region_acc"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
