"""The op contract shared by every public op (issue 11, "One op contract"): backend resolution,
the CUDA architecture check, the `validate` switch and its deprecated names, error types."""
import types
import warnings

import numpy as np
import pytest
import torch

from fmkit.ops import _backend, media_cross_attention, perceiver_attention


@pytest.mark.parametrize("entry, capability, runs", [
    ("90", (9, 0), True), ("90", (10, 0), True), ("90", (8, 6), False),  # SASS + PTX: JIT forward
    ("80-real", (8, 6), True), ("80-real", (9, 0), False),  # SASS only: same major, minor >=
    ("90-virtual", (12, 0), True), ("90a", (9, 0), True), ("90a", (10, 0), False),  # arch-specific
])
def test_arch_runs_on(entry, capability, runs):
    assert _backend.arch_runs_on(entry, capability) is runs


@pytest.fixture
def fake_card(monkeypatch):
    """A CUDA build for sm_80 on a (pretend) sm_120 card: no GPU needed."""
    monkeypatch.setattr(_backend, "_C", types.SimpleNamespace(with_cuda=True, cuda_archs="80-real"))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (12, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake RTX 5090")
    monkeypatch.setattr(_backend, "_warned_cuda_fallback", set())
    monkeypatch.setattr(_backend, "triton_available", lambda: True)
    return torch.device("cuda", 0)


def test_cuda_backend_on_an_unbuilt_arch_names_the_card_and_the_archs(fake_card):
    with pytest.raises(ValueError, match=r"backend='cuda' is not available for knn on cuda tensors: fmkit's CUDA "
                                         r"kernels were built for sm_80-real, which cannot run on Fake RTX 5090 \(sm_120\)"):
        _backend.resolve_backend("cuda", fake_card, "knn", ("cuda", "triton"))


def test_auto_falls_back_to_triton_and_says_so_once(fake_card):
    with pytest.warns(RuntimeWarning, match=r"Fake RTX 5090 \(sm_120\).*backend='auto' runs the Triton kernels"):
        assert _backend.resolve_backend("auto", fake_card, "knn", ("cuda", "triton")) == "triton"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _backend.resolve_backend("auto", fake_card, "pgd_step_", ("cuda", "triton")) == "triton"


def test_auto_uses_cuda_when_the_arch_was_built(fake_card, monkeypatch):
    monkeypatch.setattr(_backend, "_C", types.SimpleNamespace(with_cuda=True, cuda_archs="90,120"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _backend.resolve_backend("auto", fake_card, "knn", ("cuda", "triton")) == "cuda"


@pytest.mark.parametrize("op", ["gaussian_kde", "clip_loss", "perceiver_attention", "media_cross_attention"])
def test_cuda_on_an_op_without_a_cuda_kernel_says_so(op):
    with pytest.raises(ValueError, match=rf"backend='cuda': {op} has no cuda kernel; its backends are 'auto', 'triton'"):
        _backend.resolve_backend("cuda", torch.device("cpu"), op, ("triton",))


def _attention_inputs(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(1, 2, n, 8, generator=g).to(dtype) for n in (4, 6, 6, 3, 3)]


def test_perceiver_message_matches_what_it_accepts():
    out = perceiver_attention(*_attention_inputs(torch.float64))  # float64: the torch reference
    assert out.dtype == torch.float64
    with pytest.raises(TypeError, match="q: expected dtype float32, float16, bfloat16 or float64, got int64"):
        perceiver_attention(*[t.long() for t in _attention_inputs()])


def test_attention_ops_take_numpy_and_return_numpy():
    ts = _attention_inputs()
    out = perceiver_attention(*[t.numpy() for t in ts])
    assert isinstance(out, np.ndarray)
    np.testing.assert_allclose(out, perceiver_attention(*ts).numpy(), rtol=1e-6, atol=1e-6)
    q, k, v = ts[0], ts[1], ts[2]
    mi = torch.tensor([[0, 1, 1, 1]])
    out = media_cross_attention(q.numpy(), k.numpy(), v.numpy(), mi.numpy(), latents_per_media=6)
    assert isinstance(out, np.ndarray)


def test_media_validate_switch_and_old_name():
    q, k, v = _attention_inputs()[:3]
    bad = torch.tensor([[0, 1, 5, 1]])
    with pytest.raises(ValueError, match="media_index: sample 0 refers to image 5"):
        media_cross_attention(q, k, v, bad, latents_per_media=6)
    with pytest.warns(DeprecationWarning, match="media_cross_attention: check_index= is deprecated"):
        media_cross_attention(q, k, v, torch.tensor([[0, 1, 1, 1]]), latents_per_media=6, check_index=False)
    with pytest.raises(TypeError, match="media_index: expected an integer dtype, got float32"):
        media_cross_attention(q, k, v, bad.float(), latents_per_media=6)
