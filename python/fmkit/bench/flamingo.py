"""OpenFlamingo kernel benchmarks (spec flamingo.md §1.4, §3): the perceiver core with two-source
K/V and the media-masked cross-attention, forward and forward + backward, against what users run
today: SDPA on the concatenated K/V (every SDPA backend on CUDA), SDPA with a dense boolean mask,
SDPA per image on the token runs that see it (no mask), and the eager reference math. Each case
has an error column against the float64 reference (output, or input gradients with backward). FLOPs: 4 L S D per (batch, head) forward; x3.5 with backward.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from fmkit.bench import accuracy
from fmkit.bench._shapes import embedded_shapes
from fmkit.ops import media_cross_attention, perceiver_attention
from fmkit.reference.media_cross_attention import media_cross_attention_reference
from fmkit.reference.perceiver_attention import perceiver_attention_reference

SHAPES = {
    # ("perceiver", BT, M media tokens, L latents) or ("media", B, T_txt, n_images)
    ("cpu", "quick"): [("perceiver", 16, 256, 64), ("media", 2, 512, 5)],
    ("cpu", "full"): [("perceiver", 64, 256, 64), ("media", 4, 2048, 5), ("media", 8, 256, 6),
                      ("media", 24, 1, 1), ("media", 24, 1, 33), ("block", 64, 256, 64)],
    ("cuda", "quick"): [("perceiver", 512, 256, 64), ("media", 16, 2048, 5)],
    ("cuda", "full"): [("perceiver", 64, 256, 64), ("perceiver", 192, 256, 64), ("perceiver", 512, 256, 64),
                       ("perceiver", 792, 256, 64), ("media", 32, 256, 6), ("media", 24, 800, 33),
                       ("media", 16, 2048, 5), ("media", 24, 1, 1), ("media", 24, 1, 33), ("block", 512, 256, 64)],
}
HEADS, DIM_HEAD, LATENTS_PER_MEDIA = 8, 64, 64


def _sdpa_backends():
    from torch.nn.attention import SDPBackend

    return {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}


def _timed_call(fn, tensors, backward):
    def run():
        for t in tensors:
            t.grad = None
        out = fn()
        if backward:
            out.backward(torch.ones_like(out))
        return out
    return run


def _sdpa_contenders(call, tensors, backward, device, suffix=""):
    if device.type != "cuda":
        return [(f"SDPA (default){suffix}", _timed_call(call, tensors, backward), True)]
    from torch.nn.attention import sdpa_kernel

    out = []
    for name, backend in _sdpa_backends().items():
        def run(backend=backend):
            with sdpa_kernel(backend):
                return call()
        try:
            run()
        except RuntimeError:  # this backend does not support the shape / mask
            continue
        out.append((f"SDPA {name}{suffix}", _timed_call(run, tensors, backward), True))
    return out


def _accuracy(contenders, tensors, backward, reference):
    """The error column: the output (fwd cases) or the gradients of sum(output) w.r.t. every
    input (fwd+bwd cases) against `reference` evaluated in float64 on the same inputs."""
    doubles = [t.detach().double().requires_grad_(backward) for t in tensors]
    ref = reference(*doubles)
    if backward:
        ref.backward(torch.ones_like(ref))
        ref = tuple(t.grad for t in doubles)

    def output_of(fn):
        out = fn()
        return tuple(t.grad for t in tensors) if backward else out

    return accuracy(contenders, output_of, ref)


def _perceiver_case(bt, m, latents, device, dtype, backward):
    g = torch.Generator().manual_seed(0)
    mk = lambda rows: torch.randn(bt, HEADS, rows, DIM_HEAD, generator=g).to(device, dtype).requires_grad_(backward)  # noqa: E731
    q, km, vm, kl, vl = mk(latents), mk(m), mk(m), mk(latents), mk(latents)
    tensors = (q, km, vm, kl, vl)
    contenders = [("fmkit perceiver_attention",
                   _timed_call(lambda: perceiver_attention(q, km, vm, kl, vl), tensors, backward), False)]
    sdpa = lambda: F.scaled_dot_product_attention(q, torch.cat([km, kl], 2), torch.cat([vm, vl], 2))  # noqa: E731
    contenders += _sdpa_contenders(sdpa, tensors, backward, device)
    flops = 4.0 * bt * HEADS * latents * (m + latents) * DIM_HEAD * (3.5 if backward else 1.0)
    reference = lambda *t: perceiver_attention_reference(*t, DIM_HEAD**-0.5)  # noqa: E731
    extra = {"accuracy": _accuracy(contenders, tensors, backward, reference),
             "settings": {name: "K/V concatenated" for name, _, anchor in contenders if anchor}}
    return contenders, flops, f"perceiver BT={bt} keys={m}+{latents}", extra


def _media_case(b, t, n_images, device, dtype, backward):
    g = torch.Generator().manual_seed(0)
    keys = n_images * LATENTS_PER_MEDIA
    q = torch.randn(b, HEADS, t, DIM_HEAD, generator=g).to(device, dtype).requires_grad_(backward)
    k = torch.randn(b, HEADS, keys, DIM_HEAD, generator=g).to(device, dtype).requires_grad_(backward)
    v = torch.randn(b, HEADS, keys, DIM_HEAD, generator=g).to(device, dtype).requires_grad_(backward)
    # A realistic index: images spread evenly over the text; decode steps (t = 1) see the last one.
    index = (torch.arange(t) * n_images // max(t, 1) + 1).clamp(max=n_images) if t > 1 else torch.full((1,), n_images)
    index = index.expand(b, t).contiguous().to(device)
    mask = (index[:, None, :, None] == (torch.arange(keys, device=device) // LATENTS_PER_MEDIA + 1))
    tensors = (q, k, v)
    contenders = [("fmkit media_cross_attention",
                   _timed_call(lambda: media_cross_attention(q, k, v, index, check_index=False), tensors, backward),
                   False)]
    sdpa = lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # noqa: E731
    masked = _sdpa_contenders(sdpa, tensors, backward, device, suffix=" + dense mask")
    runs = _image_runs(index)
    grouped = _sdpa_contenders(lambda: sdpa_per_image(q, k, v, runs), tensors, backward, device, suffix=" per image")
    contenders += masked + grouped
    useful = 4.0 * b * HEADS * t * LATENTS_PER_MEDIA * DIM_HEAD * (3.5 if backward else 1.0)
    reference = lambda q_, k_, v_: media_cross_attention_reference(q_, k_, v_, index, LATENTS_PER_MEDIA,  # noqa: E731
                                                                     DIM_HEAD**-0.5)
    settings = {name: "dense bool mask [B, 1, T, keys]" for name, _, _ in masked}
    settings.update({name: "tokens of each image sliced, its 64 latents as K/V, no mask" for name, _, _ in grouped})
    extra = {"accuracy": _accuracy(contenders, tensors, backward, reference), "settings": settings}
    return contenders, useful, f"media B={b} T={t} images={n_images}", extra


def _image_runs(index):
    """[(image, first token, end token)] of the runs of equal media_index; every batch row must
    share the index (true of these cases), the layout a user slicing per image relies on."""
    if not bool((index == index[:1]).all()):
        raise ValueError("media_index: the per-image anchor needs the same index in every batch row")
    row = index[0].tolist()
    runs, start = [], 0
    for pos in range(1, len(row) + 1):
        if pos == len(row) or row[pos] != row[start]:
            runs.append((row[start], start, pos))
            start = pos
    return runs


def sdpa_per_image(q, k, v, runs):
    """What a strong user writes for media-masked cross-attention without a dense mask: each run
    of tokens that sees image i attends, by SDPA, to image i's latents only; tokens before the
    first image (index 0) get 0."""
    parts = []
    for image, t0, t1 in runs:
        if image == 0:
            parts.append(q.new_zeros(q.shape[0], q.shape[1], t1 - t0, v.shape[-1]))
            continue
        keys = slice((image - 1) * LATENTS_PER_MEDIA, image * LATENTS_PER_MEDIA)
        parts.append(F.scaled_dot_product_attention(q[:, :, t0:t1], k[:, :, keys], v[:, :, keys]))
    return torch.cat(parts, dim=2)


def _block_case(bt, m, latents, device, dtype, backward):
    """A whole PerceiverAttention block (2 LN, projections, core, out-projection) at d_vis 1024:
    fmkit's module against the eager reference math and torch.compile of it."""
    from fmkit.flamingo import PerceiverAttention
    from fmkit.reference.perceiver_attention import perceiver_block_reference

    torch.manual_seed(0)
    block = PerceiverAttention(dim=1024).to(device, dtype)
    x = torch.randn(bt, 1, m, 1024, device=device, dtype=dtype)
    lat = torch.randn(bt, 1, latents, 1024, device=device, dtype=dtype).requires_grad_(backward)
    eager = lambda: perceiver_block_reference(block, x, lat)  # noqa: E731
    compiled_fn = torch.compile(perceiver_block_reference)
    contenders = [("fmkit PerceiverAttention", _timed_call(lambda: block(x, lat), (lat,), backward), False),
                  ("eager reference block", _timed_call(eager, (lat,), backward), True),
                  ("torch.compile(reference)", _timed_call(lambda: compiled_fn(block, x, lat), (lat,), backward), True)]
    core = 4.0 * bt * HEADS * latents * (m + latents) * DIM_HEAD
    proj = 2.0 * bt * ((m + latents) * 1024 * 1024 + latents * 1024 * 512 * 2)
    block64 = copy.deepcopy(block).double()
    reference = lambda lat64: perceiver_block_reference(block64, x.double(), lat64)  # noqa: E731
    extra = {"accuracy": _accuracy(contenders, (lat,), backward, reference),
             "settings": {"torch.compile(reference)": "torch.compile mode=default"}}
    return contenders, (core + proj) * (3.0 if backward else 1.0), f"perceiver block BT={bt} d=1024", extra


def cases(device: torch.device, quick: bool, shapes=None):
    on_cuda = device.type == "cuda"
    embedded = not shapes
    shapes = embedded_shapes(SHAPES, device, quick, shapes)
    dtype = torch.bfloat16 if on_cuda else torch.float32
    out = []
    for kind, *dims in shapes:
        for backward in (False, True):
            make = {"perceiver": _perceiver_case, "media": _media_case, "block": _block_case}[kind]
            contenders, flops, label, extra = make(*dims, device, dtype, backward)
            out.append({"shape": f"{label} {'fwd+bwd' if backward else 'fwd'} {str(dtype)[6:]}", "flops": flops,
                        "contenders": contenders, "peak_dtype": dtype, "repeats": 5, **extra})
    if device.type == "cpu" and embedded:  # the GPU row belongs to the GPU issue
        out.append(_eval_case(quick))
    return out


# ---- few-shot evaluation throughput (issue 21): fmkit's evaluator vs the reference's loop ----

EVAL_SHAPES = {"quick": (1, 32, 3, 8), "full": (8, 32, 3, 20)}  # (queries, shots, beams, new tokens)


def _eval_setup(n_queries, shots, seed=0):
    """A small Flamingo (GPT-2 2 x 64, a conv patch encoder with 16 tokens of width 64, the
    released perceiver and block shapes) and an evaluator over in-memory images."""
    import tokenizers
    import transformers

    from fmkit.flamingo import create_flamingo
    from fmkit.flamingo.evaluate import FewShotEvaluator

    torch.manual_seed(seed)
    words = "a an red green blue yellow circle square triangle cross big small photo of Output".split()
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.train_from_iterator([" ".join(words)], tokenizers.trainers.WordLevelTrainer(special_tokens=["[UNK]", "<eos>"]))
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="<eos>")
    config = transformers.GPT2Config(vocab_size=len(tokenizer) + 3, n_positions=1024, n_embd=64, n_layer=2, n_head=2)
    vision = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 4, 4), torch.nn.Flatten(2), _Transpose())
    model = create_flamingo(vision, transformers.GPT2LMHeadModel(config), tokenizer, vis_dim=64).eval()
    with torch.no_grad():  # open gates: the images change the outputs
        for block in model.lang_encoder.gated_cross_attn_layers:
            block.attn_gate.fill_(1.0)
            block.ff_gate.fill_(0.5)
    g = torch.Generator().manual_seed(seed)
    rng = torch.Generator().manual_seed(seed + 1)
    demos = [{"image": f"demo{i}", "caption": " ".join(words[j] for j in torch.randint(0, 12, (4,), generator=rng))}
             for i in range(shots + 8)]
    queries = [{"image": f"query{i}"} for i in range(n_queries)]
    ev = FewShotEvaluator(model, tokenizer, lambda img: img, task="coco", demos=demos, queries=queries,
                          batch_size=n_queries, seed=seed)
    for item in demos + queries:  # in-memory pixels: the comparison is about the model, not image decoding
        ev._pixels[item["image"]] = torch.rand(3, 16, 16, generator=g)
    return ev, queries


class _Transpose(torch.nn.Module):
    def forward(self, x):
        return x.transpose(1, 2)


def _eval_case(quick):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the setup too: encoding the demonstrations is many small ops
    try:
        return _eval_case_setup(quick)
    finally:
        torch.set_num_threads(threads)


def _eval_case_setup(quick):
    n_queries, shots, beams, new_tokens = EVAL_SHAPES["quick" if quick else "full"]
    ev, queries = _eval_setup(n_queries, shots)
    ev.num_beams = beams
    prompts, images = ev.batch_inputs(queries, shots, rices=False)
    query_paths = [q["image"] for q in queries]
    ev.latents([p for paths in images for p in paths if p not in query_paths])  # the demo cache, built once

    outputs = {}

    def one_thread(fn):
        # A model this small is hundreds of tiny ops per token: extra threads only add
        # synchronisation (and stall on busy cores), for both contenders alike.
        def run():
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                fn()
            finally:
                torch.set_num_threads(threads)
        return run

    def fast():
        for p in query_paths:  # each query is a new image: encoded inside the timed call
            ev._latents.pop(p, None)
        outputs[FAST] = ev.generate(prompts, images, max_new_tokens=new_tokens, min_new_tokens=new_tokens)

    def reference():
        outputs[REFERENCE] = ev.generate(prompts, images, reference_style=True, max_new_tokens=new_tokens,
                                         min_new_tokens=new_tokens)

    label = f"few-shot eval {n_queries} queries x {shots}-shot, {beams} beams, {new_tokens} tokens, 1 thread"
    # "flops" counts generated sequences: the GFLOP/s column then reads as 10^9 sequences/s.
    return {"shape": label, "flops": float(n_queries), "repeats": 1 if quick else 3,
            "contenders": [(FAST, one_thread(fast), False), (REFERENCE, one_thread(reference), True)],
            "exact": _SameOutputs(outputs)}


FAST = "fmkit FewShotEvaluator (latents + media K/V cached)"
REFERENCE = "reference-style loop (re-encode per beam, K/V per step)"


class _SameOutputs(dict):
    """The 'exact' column, read after both contenders ran: both decode to the same text."""

    def __init__(self, outputs):
        super().__init__()
        self.outputs = outputs

    def get(self, name, default=None):
        if len(self.outputs) < 2:
            return default
        return self.outputs[FAST] == self.outputs[REFERENCE]
