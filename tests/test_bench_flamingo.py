"""The flamingo bench (fmkit.bench.flamingo): the grouped-per-image SDPA anchor against fmkit's op
and the float64 reference (any index layout: text before the first image, unused images, rows
with different indices), and the "accuracy" / "settings" columns of every case and contender."""
import math

import pytest
import torch

from fmkit.bench import flamingo as fb
from fmkit.ops import media_cross_attention
from fmkit.reference.media_cross_attention import media_cross_attention_reference

P = fb.LATENTS_PER_MEDIA
CPU = torch.device("cpu")


def inputs(B, H, T, n_images, D, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, D, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    k = torch.randn(B, H, n_images * P, D, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    v = torch.randn(B, H, n_images * P, D, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    return q, k, v


# Row 0: text before the first image, image 2 unused; row 1: image 2 only, then 4; row 2: not
# monotone and ends with text. Image 3 has no token in any row.
INDEX = torch.tensor([[0, 0, 1, 1, 1, 4, 4, 4, 4, 4, 4, 4, 4],
                      [2, 2, 2, 2, 2, 2, 2, 2, 4, 4, 4, 4, 4],
                      [0, 4, 1, 4, 1, 0, 1, 1, 1, 4, 2, 0, 0]])


def grads(out, tensors, dout):
    return torch.autograd.grad(out, tensors, dout)


def test_grouped_anchor_plan():
    groups = fb.image_groups(INDEX, 4)
    assert groups.n_groups == 3 and groups.images.tolist() == [0, 1, 3]  # image 3 (index 3) gets no group
    assert groups.longest == 8  # row 1's eight tokens of image 2
    assert groups.zero is not None and groups.zero[:, 0, :, 0].equal(INDEX == 0)
    # Every token with an image sits in exactly one slot, in order, and its slot points back at it.
    for b in range(3):
        for t in range(13):
            if INDEX[b, t] > 0:
                assert groups.src[b, groups.pos[b, t]] == t
    every = fb.image_groups(torch.tensor([[1, 1, 2, 3]]), 3)
    assert every.images is None and every.zero is None and every.longest == 2


def test_grouped_anchor_equals_the_reference_in_float64():
    q, k, v = inputs(3, 2, 13, 4, 8, torch.float64)
    groups = fb.image_groups(INDEX, 4)
    out = fb.sdpa_grouped(q, k, v, groups)
    ref = media_cross_attention_reference(q, k, v, INDEX, P, 8 ** -0.5)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    assert (out[(INDEX == 0)[:, None, :].expand_as(out[..., 0])] == 0).all()  # index 0: exactly 0
    dout = torch.randn_like(out)
    for a, b in zip(grads(out, (q, k, v), dout), grads(ref, (q, k, v), dout)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_grouped_anchor_equals_fmkit_op_in_float32():
    q, k, v = inputs(3, 2, 13, 4, 16, torch.float32, seed=1)
    out = fb.sdpa_grouped(q, k, v, fb.image_groups(INDEX, 4))
    ours = media_cross_attention(q, k, v, INDEX)
    torch.testing.assert_close(out, ours, rtol=1e-5, atol=1e-6)
    dout = torch.randn_like(out)
    g_anchor, g_ours = grads(out, (q, k, v), dout), grads(ours, (q, k, v), dout)
    for a, b in zip(g_anchor, g_ours):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    unused = slice(2 * P, 3 * P)  # image 3: no token anywhere, no gradient
    assert (g_anchor[1][:, :, unused] == 0).all() and (g_anchor[2][:, :, unused] == 0).all()


def test_grouped_anchor_decode_step_and_text_only():
    q, k, v = inputs(2, 2, 1, 5, 8, torch.float64, seed=2)
    last = torch.full((2, 1), 5)  # a decode step sees the last image only: one group of one token
    groups = fb.image_groups(last, 5)
    assert groups.n_groups == 1 and groups.longest == 1 and groups.images.tolist() == [4]
    torch.testing.assert_close(fb.sdpa_grouped(q, k, v, groups),
                               media_cross_attention_reference(q, k, v, last, P, 8 ** -0.5), rtol=1e-12, atol=1e-12)
    q, k, v = inputs(2, 2, 6, 2, 8, torch.float64, seed=3)
    none = torch.zeros(2, 6, dtype=torch.long)  # no image seen yet
    out = fb.sdpa_grouped(q, k, v, fb.image_groups(none, 2))
    assert out.shape == q.shape and (out == 0).all()


def test_per_run_and_grouped_anchors_agree_on_the_bench_layout():
    index = (torch.arange(50) * 3 // 50 + 1).expand(2, 50)
    q, k, v = inputs(2, 2, 50, 3, 8, torch.float64, seed=4)
    torch.testing.assert_close(fb.sdpa_grouped(q, k, v, fb.image_groups(index, 3)),
                               fb.sdpa_per_image(q, k, v, fb._image_runs(index)), rtol=1e-12, atol=1e-12)


SMALL = [("perceiver", 3, 16, 8), ("media", 3, 40, 3), ("media", 2, 1, 3)]


def test_every_contender_has_an_error_and_a_setting():
    cases = list(fb.cases(CPU, True, shapes=SMALL))
    assert len(cases) == 2 * len(SMALL)
    names = set()
    for case in cases:
        assert case["shape"].endswith(("fwd float32", "fwd+bwd float32"))
        for name, _, _ in case["contenders"]:
            err = case["accuracy"][name]
            assert math.isfinite(err) and err < 1e-5, (case["shape"], name, err)
            assert case["settings"][name], (case["shape"], name)
            names.add(name)
    assert {"fmkit media_cross_attention", "SDPA (default) + dense mask", "SDPA (default) per image",
            "SDPA (default) grouped per image", "fmkit perceiver_attention", "SDPA (default)"} <= names


def test_the_error_column_flags_a_wrong_contender():
    """fwd+bwd errors are those of the input gradients: 1% too large gradients read about 1e-2."""
    index = (torch.arange(30) * 2 // 30 + 1).expand(2, 30)

    def ref(q_, k_, v_, rows=None):
        return media_cross_attention_reference(q_, k_, v_, index[rows], P, 64 ** -0.5)

    g = torch.Generator().manual_seed(0)
    x = [torch.randn(2, 8, n, 64, generator=g).requires_grad_() for n in (30, 2 * P, 2 * P)]
    good = fb._timed_call(lambda: media_cross_attention(*x, index), x, True)
    bad = fb._timed_call(lambda: 1.01 * media_cross_attention(*x, index), x, True)
    acc = fb._accuracy([("good", good, False), ("bad", bad, True)], x, True, ref, fb._batch_chunks(2, 8 * 30 * 2 * P))
    assert acc["good"] < 1e-5 and 5e-3 < acc["bad"] < 2e-2


def test_chunked_reference_gives_the_same_errors(monkeypatch):
    shapes = [("perceiver", 3, 16, 8), ("media", 3, 40, 3)]
    whole = list(fb.cases(CPU, True, shapes=shapes))
    monkeypatch.setattr(fb, "REFERENCE_CHUNK_SCORES", 1)  # one batch row per reference call
    assert fb._batch_chunks(3, 10) == [slice(0, 1), slice(1, 2), slice(2, 3)]
    chunked = list(fb.cases(CPU, True, shapes=shapes))
    for a, b in zip(whole, chunked):
        assert a["accuracy"].keys() == b["accuracy"].keys()
        for name in a["accuracy"]:
            assert b["accuracy"][name] == pytest.approx(a["accuracy"][name], rel=1e-6, abs=1e-12)


def test_cases_are_built_lazily_and_the_issue_cases_run_first(monkeypatch):
    built = []
    monkeypatch.setattr(fb, "_case", lambda kind, dims, device, dtype, backward: built.append(kind) or {})
    cases = fb.cases(CPU, True, shapes=SMALL)
    assert len(cases) == 2 * len(SMALL) and built == []
    next(iter(cases))
    assert built == ["perceiver"]
    assert fb.SHAPES[("cuda", "full")][:3] == [("perceiver", 64, 256, 64), ("perceiver", 512, 256, 64),
                                               ("media", 16, 2048, 5)]


def test_forced_backend_contenders_name_their_setting():
    """The CUDA branch of _sdpa_contenders (one contender per backend that accepts the call, each
    run inside sdpa_kernel), exercised with CPU tensors: the CPU has the flash and math kernels."""
    q, k, v = inputs(2, 2, 13, 4, 16, torch.float32, seed=5)
    groups = fb.image_groups(INDEX[:2], 4)
    anchors, settings = fb._sdpa_contenders(lambda: fb.sdpa_grouped(q, k, v, groups), (q, k, v), True,
                                            torch.device("cuda"), suffix=" grouped per image", setting="S")
    names = [name for name, _, _ in anchors]
    assert "SDPA math grouped per image" in names and set(names) <= {
        f"SDPA {b} grouped per image" for b in ("cudnn", "flash", "efficient", "math")}
    assert settings == {name: f"sdpa_kernel({name.split()[1]}) forced; S" for name in names}
    ref = media_cross_attention_reference(q.double(), k.double(), v.double(), INDEX[:2], P, 16 ** -0.5)
    for _, fn, is_anchor in anchors:
        out = fn()
        assert is_anchor and q.grad is not None
        torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)
