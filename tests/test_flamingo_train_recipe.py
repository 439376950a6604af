"""fmkit.flamingo.train and the training streams: MMC4-style documents (Hungarian assignment,
threshold, <= 6 images, single-image documents kept w.p. 0.5), LAION pairs, the recipe's
parameter groups and schedule, loss going down on each data kind, bit-identical resume,
clear errors on bad documents, and (slow) 2-process DDP equal to single-process accumulation."""
import functools
import json
import os
import socket

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
PIL = pytest.importorskip("PIL")
pytest.importorskip("scipy")

from fmkit.flamingo.data import InterleavedStream, PairStream, assign_images, image_transform  # noqa: E402
from fmkit.flamingo.train import (  # noqa: E402
    ClipVisionTower,
    ConstantWithWarmup,
    param_groups,
    train_flamingo,
)

# The training logic these tests pin (bit-identical resumes, accumulation, rank equivalence) is
# device-independent; on a GPU machine the trainer would default to CUDA and bf16, so pin the CPU.
train_flamingo = functools.partial(train_flamingo, device="cpu")
from test_flamingo_training import tiny  # noqa: E402

COLOURS = [(230, 30, 30), (30, 200, 30), (30, 60, 230), (240, 220, 20), (20, 20, 20), (235, 235, 235)]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only add synchronisation on busy cores
    yield
    torch.set_num_threads(threads)


def _images(folder, n):
    for i in range(n):
        PIL.Image.new("RGB", (16, 16), COLOURS[i % len(COLOURS)]).save(folder / f"{i}.png")


def _doc(sentences, images, sim=None, **extra):
    doc = {"text_list": sentences, "image_info": [{"image_name": f"{i}.png"} for i in images]}
    if sim is not None:
        doc["similarity_matrix"] = sim
    doc.update(extra)
    return doc


def _write_jsonl(path, docs):
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return path


@pytest.fixture
def data(tmp_path):
    _images(tmp_path, 6)
    docs = [_doc(["a photo of a cat", "a dog on the grass", "the cat sat on a mat"], [0, 1],
                 [[0.9, 0.1, 0.3], [0.2, 0.8, 0.1]]),
            _doc(["two birds in the sky", "a red car"], [2, 3], [[0.7, 0.2], [0.1, 0.6]]),
            _doc(["a small dog and a big cat", "a photo of a dog"], [4, 5], [[0.5, 0.3], [0.2, 0.9]]),
            _doc(["a cat", "a dog on a mat"], [0, 2], [[0.6, 0.3], [0.1, 0.5]])]
    mmc4 = _write_jsonl(tmp_path / "docs.jsonl", docs)
    from fmkit.datacomp.pool import write_tar_shard

    captions = ["a photo of a cat", "a dog on the grass", "two birds in the sky", "a red car"]
    write_tar_shard(tmp_path / "00000.tar", [{"key": f"{i:04d}", "jpg": PIL.Image.new("RGB", (16, 16), COLOURS[i]),
                                              "txt": c} for i, c in enumerate(captions)])
    return tmp_path, mmc4, tmp_path / "00000.tar"


def _streams(tok, mmc4=None, laion=None, batch=2, seed=0, rank=0, world=1):
    proc = image_transform(16)
    m = InterleavedStream(mmc4, tok, proc, batch, max_tokens=24, seed=seed, rank=rank, world_size=world) \
        if mmc4 else None
    p = PairStream(laion, tok, proc, batch, seed=seed, rank=rank, world_size=world) if laion else None
    return m, p


# ---- documents ----

def test_hungarian_assignment_threshold_and_order():
    # Greedy per image would give image 0 sentence 0 (0.9) and image 1 sentence 0 again; the
    # assignment maximises the total: image 0 -> sentence 1, image 1 -> sentence 0 (0.8 + 0.85).
    doc = _doc(["s0", "s1", "s2"], [0, 1, 2], [[0.9, 0.8, 0.0], [0.85, 0.1, 0.0], [0.0, 0.0, 0.1]])
    assert assign_images(doc, "doc", sim_threshold=0.24) == [(1, 0), (0, 1)]  # image 2 (0.1) is below
    assert assign_images(doc, "doc", sim_threshold=0.0) == [(1, 0), (0, 1), (2, 2)]
    matched = _doc(["s0", "s1"], [0, 1, 2], None)
    for i, (j, s) in enumerate([(1, 0.5), (1, 0.4), (0, 0.1)]):
        matched["image_info"][i].update(matched_text_index=j, matched_sim=s)
    assert assign_images(matched, "doc", 0.24) == [(0, 1)]  # one image per sentence; 0.1 dropped
    with pytest.raises(ValueError, match=r"similarity_matrix has shape \[2, 2\], expected \[3 images, 2"):
        assign_images(_doc(["a", "b"], [0, 1, 2], [[1, 0], [0, 1]]), "doc", 0.2)


def test_interleaved_text_format_and_limits(data):
    tmp, mmc4, _ = data
    _, tok = tiny()
    stream, _ = _streams(tok, mmc4)
    names, ids, mask = stream.prepare(0)
    assert [os.path.basename(n) for n in names] == ["0.png", "1.png"]
    text = tok.decode(ids[mask.bool()])
    assert text.replace(" ", "") == ("<image>aphotoofacat<|endofchunk|><image>adogonthegrass"
                                     "thecatsatonamat<|endofchunk|><eos>")
    assert ids.shape == (24,) and mask[-1] == 0  # right-padded to max_tokens
    identity = [[float(i == j) for j in range(8)] for i in range(8)]
    eight = _doc([f"a cat {i}" for i in range(8)], list(range(8)), identity)
    _images(tmp, 8)
    s, _ = _streams(tok, _write_jsonl(tmp / "eight.jsonl", [eight]))
    s.max_tokens = 64
    assert len(s.prepare(0)[0]) == 6  # at most 6 images
    vision_x, ids, _ = s.collate([0])
    assert vision_x.shape == (1, 6, 1, 3, 16, 16) and int((ids == s.image_id).sum()) == 6


def test_single_image_documents_are_kept_half_the_time(tmp_path):
    _images(tmp_path, 1)
    _, tok = tiny()
    docs = [_doc([f"a cat {i}", "a dog"], [0], [[0.9, 0.1]]) for i in range(400)]
    stream, _ = _streams(tok, _write_jsonl(tmp_path / "single.jsonl", docs))
    import random

    kept = sum(stream.accept(i, random.Random(f"0/0/{i}")) for i in range(400))
    assert 160 <= kept <= 240  # Binomial(400, 0.5): mean 200, sd 10
    # An only image at the end (every label masked) is never kept.
    end = _doc(["a cat", "a dog"], [0], [[0.0, 0.9]])
    s, _ = _streams(tok, _write_jsonl(tmp_path / "end.jsonl", [end]))
    s.max_tokens = 4  # "a cat <|endofchunk|>? ..." truncated so that <image> is last
    s.prepare(0)
    assert all(not s.accept(0, random.Random(k)) or s._prepared[0][1][-1] != s.image_id for k in range(20))


def test_bad_documents_raise_clear_errors(tmp_path):
    _images(tmp_path, 2)
    _, tok = tiny()
    bad = _write_jsonl(tmp_path / "bad.jsonl", [_doc(["a <image> cat", "a dog"], [0], [[0.9, 0.1]])])
    s, _ = _streams(tok, bad)
    with pytest.raises(ValueError, match=r"bad.jsonl line 1: the text has 2 <image> tokens but 1 images"):
        s.next()
    missing = _write_jsonl(tmp_path / "missing.jsonl", [_doc(["a cat", "a dog"], [0, 7], [[0.9, 0.1], [0.1, 0.9]])])
    s, _ = _streams(tok, missing, batch=1)
    with pytest.raises(FileNotFoundError, match="missing.jsonl line 1: image file not found"):
        s.next()
    (tmp_path / "broken.jsonl").write_text('{"text_list": ["a"], \n')
    with pytest.raises(ValueError, match="broken.jsonl line 1 is not valid JSON"):
        _streams(tok, tmp_path / "broken.jsonl")
    s, _ = _streams(tok, _write_jsonl(tmp_path / "nolist.jsonl", [{"text_list": "a cat", "image_info": []}]))
    with pytest.raises(ValueError, match="nolist.jsonl line 1: expected a list 'text_list'"):
        s.next()
    s, _ = _streams(tok, _write_jsonl(tmp_path / "none.jsonl", [_doc(["a cat"], [0], [[0.01]])]))
    with pytest.raises(ValueError, match="mmc4: no item passes the filters"):
        s.next()


def test_pair_text_format(data):
    _, _, laion = data
    _, tok = tiny()
    _, pairs = _streams(tok, laion=laion, batch=4)
    vision_x, ids, mask = pairs.next()
    assert vision_x.shape == (4, 1, 1, 3, 16, 16) and ids.shape[1] <= 32
    row = tok.decode(ids[0][mask[0].bool()]).replace(" ", "")
    assert row.startswith("<image>") and row.endswith("<|endofchunk|><eos>")


# ---- the recipe ----

def test_parameter_groups_and_schedule():
    model, _ = tiny(every=1, layers=2)
    decay, rest = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decay_names = {names[id(p)] for p in decay["params"]}
    assert decay["weight_decay"] == 0.1 and rest["weight_decay"] == 0.0
    assert decay_names and all("gated_cross_attn_layer" in n for n in decay_names)
    assert not any(k in n for n in decay_names for k in ("attn_gate", "ff_gate", "norm", "bias"))
    assert any(n.endswith("attn.to_kv.weight") for n in decay_names)
    assert {names[id(p)].split(".")[0] for p in rest["params"]} == {"perceiver", "lang_encoder"}
    schedule = ConstantWithWarmup(4)
    assert [schedule(s) for s in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert ConstantWithWarmup(0)(0) == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mmc4", "laion"])
def test_a_step_on_each_data_kind_lowers_the_loss(data, kind):
    _, mmc4, laion = data
    model, tok = tiny()
    m, p = _streams(tok, mmc4 if kind == "mmc4" else None, laion if kind == "laion" else None, batch=4)
    result = train_flamingo(model, mmc4=m, laion=p, steps=4, lr=3e-3, warmup=0, progress=False)
    losses = result.losses_mmc4 if kind == "mmc4" else result.losses_laion
    assert len(losses) == 4 and losses[-1] < losses[0] - 0.05  # the same 4 samples every step


@pytest.mark.slow
def test_resume_is_bit_identical(data, tmp_path):
    _, mmc4, laion = data

    def run(steps, ckpt, resume=True):
        model, tok = tiny()
        m, p = _streams(tok, mmc4, laion, batch=2)
        r = train_flamingo(model, mmc4=m, laion=p, steps=steps, lr=1e-3, warmup=2, accum_steps=2,
                           loss_multiplier_laion=0.2, checkpoint_dir=ckpt, checkpoint_every=100, progress=False)
        return r, {n: t.detach().clone() for n, t in model.named_parameters() if t.requires_grad}

    straight, params = run(4, str(tmp_path / "a"))
    half, _ = run(2, str(tmp_path / "b"))
    resumed, params_resumed = run(4, str(tmp_path / "b"))
    assert half.step == 2 and resumed.step == 4
    assert resumed.losses == straight.losses and resumed.grad_norms == straight.grad_norms
    for n in params:
        assert torch.equal(params[n], params_resumed[n]), n


def test_train_flamingo_rejects_bad_arguments(data):
    _, mmc4, _ = data
    model, tok = tiny()
    m, _ = _streams(tok, mmc4)
    with pytest.raises(ValueError, match="mmc4, laion: give at least one"):
        train_flamingo(model, steps=1)
    with pytest.raises(ValueError, match="precision: expected one of"):
        train_flamingo(model, mmc4=m, steps=1, precision="fp8")
    with pytest.raises(ValueError, match="distributed: torch.distributed is not initialised"):
        train_flamingo(model, mmc4=m, steps=1, distributed=True)
    with pytest.raises(ValueError, match="stream is sharded for 2 ranks, the run has 1"):
        train_flamingo(model, mmc4=_streams(tok, mmc4, world=2)[0], steps=1)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_steps(data, precision):
    _, mmc4, laion = data
    model, tok = tiny()
    m, p = _streams(tok, mmc4, laion, batch=2)
    r = train_flamingo(model, mmc4=m, laion=p, steps=2, lr=1e-3, warmup=0, precision=precision, progress=False)
    assert all(torch.isfinite(torch.tensor(r.losses)))
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_clip_vision_tower_feeds_flamingo():
    from fmkit.clip import create_model

    torch.manual_seed(0)
    clip = create_model("tiny", vocab_size=50, context_length=8, image_size=16)
    tower = ClipVisionTower(clip)
    tokens = tower(torch.rand(3, 3, 16, 16))
    assert tokens.shape == (3, 1 + (16 // 8) ** 2, 64) and tower.output_dim == 64
    assert torch.allclose(tower.embed(torch.rand(2, 3, 16, 16)).norm(dim=-1), torch.ones(2))
    with pytest.raises(TypeError, match="clip: expected an fmkit.clip CLIP"):
        ClipVisionTower(torch.nn.Linear(2, 2))


# ---- DDP: 2 gloo processes == 1 process with 2-step accumulation ----

def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank, world, port, mmc4, laion, results):
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model, tok = tiny()
        m, p = _streams(tok, mmc4, laion, batch=2, rank=rank, world=world)
        r = train_flamingo(model, mmc4=m, laion=p, steps=2, lr=1e-3, warmup=0, distributed=True, progress=False)
        results[rank] = (r.grad_norms, {n: t.detach().clone() for n, t in model.named_parameters() if t.requires_grad})
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_processes_equal_single_process_accumulation(data):
    import torch.multiprocessing as mp

    _, mmc4, laion = data
    shared = mp.Manager().dict()
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(mmc4), str(laion), shared), nprocs=2, join=True)
    model, tok = tiny()
    m, p = _streams(tok, mmc4, laion, batch=2)
    single = train_flamingo(model, mmc4=m, laion=p, steps=2, lr=1e-3, warmup=0, accum_steps=2, progress=False)
    params = {n: t.detach() for n, t in model.named_parameters() if t.requires_grad}
    for rank in range(2):
        norms, rank_params = shared[rank]
        # The gradient norm sees a missing average (x2) or a wrong batch; Adam would not.
        assert norms == pytest.approx(single.grad_norms, rel=1e-5)
        for n, v in params.items():
            torch.testing.assert_close(rank_params[n], v, rtol=1e-5, atol=1e-6, msg=f"rank {rank} {n}")
