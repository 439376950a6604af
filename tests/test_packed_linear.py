"""fmkit.packed_linear: float32 CPU linear layers from oneDNN-reordered weights, against F.linear."""
import pytest
import torch
import torch.nn.functional as F

from fmkit.packed_linear import available, packed_linears

needs_onednn = pytest.mark.skipif(not available(), reason="this torch build has no oneDNN linear ops")


@pytest.fixture(autouse=True)
def every_product(monkeypatch):
    """The tests' layers are small: pack every product, however few its multiply-adds."""
    import fmkit.packed_linear

    monkeypatch.setattr(fmkit.packed_linear, "MIN_MACS", 0)


def _net(seed=0, bias=True, d_in=37, hidden=129, d_out=5):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(d_in, hidden, bias=bias), torch.nn.GELU(),
                               torch.nn.Linear(hidden, d_out, bias=bias))


def _patched(model):
    return [m for m in model.modules() if "forward" in vars(m)]


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 37), (7, 37), (3, 1, 37), (2, 65, 37), (513, 37)])
def test_matches_linear(bias, shape):
    net = _net(bias=bias)
    x = torch.randn(shape)
    with torch.no_grad():
        want = net(x)
        with packed_linears(net) as n:
            assert n == 2 and len(_patched(net)) == 2
            got = net(x)
    assert _patched(net) == []
    assert got.shape == want.shape and got.dtype == torch.float32
    # float32 products summed in another order: rounding-level differences only
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_non_contiguous_and_single_feature_inputs():
    lin = torch.nn.Linear(1, 3)
    wide = torch.nn.Linear(64, 11)
    x1 = torch.randn(5, 1)
    xt = torch.randn(64, 9).t()  # transposed view
    xs = torch.randn(9, 128)[:, ::2]  # strided columns
    with torch.no_grad():
        want = (lin(x1), wide(xt), wide(xs))
        with packed_linears(lin), packed_linears(wide):
            got = (lin(x1), wide(xt), wide(xs))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_falls_back_with_grad_and_autocast():
    net = _net()
    x = torch.randn(4, 37, requires_grad=True)
    with packed_linears(net):
        y = net(x)  # grad mode with trainable weights: the original F.linear, differentiable
        y.sum().backward()
        assert x.grad is not None and net[0].weight.grad is not None
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            assert net[0](x.detach()).dtype == torch.bfloat16  # autocast still casts the product
    ref = x.grad.clone()
    x.grad = None
    net.zero_grad()
    net(x).sum().backward()
    torch.testing.assert_close(x.grad, ref)


@needs_onednn
def test_weight_changed_inside_block_is_repacked():
    lin = torch.nn.Linear(16, 8)
    x = torch.randn(3, 16)
    with torch.no_grad(), packed_linears(lin):
        before = lin(x)
        lin.weight.mul_(2.0)  # in place: bumps the version counter
        after = lin(x)
        torch.testing.assert_close(after, F.linear(x, lin.weight, lin.bias), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(before, after)


@needs_onednn
def test_tied_weights_and_untouched_modules():
    emb = torch.nn.Embedding(50, 24)
    head = torch.nn.Linear(24, 50, bias=False)
    head.weight = emb.weight  # tied, as in a language model
    wide = torch.nn.Linear(24, 24).double()  # float64: left alone

    class Sub(torch.nn.Linear):
        pass

    sub = Sub(24, 24)
    hooked = torch.nn.Linear(24, 24)
    hooked.forward = lambda x: torch.zeros(1)  # an instance-level forward (e.g. an offload hook)
    model = torch.nn.ModuleDict(dict(emb=emb, head=head, wide=wide, sub=sub, hooked=hooked))
    x = torch.randn(6, 24)
    with torch.no_grad():
        want = head(x)
        with packed_linears(model) as n:
            assert n == 1 and _patched(model) == [head, hooked]
            torch.testing.assert_close(head(x), want, rtol=1e-5, atol=1e-5)
        assert _patched(model) == [hooked]  # its own forward is kept


def test_disabled_or_over_budget_changes_nothing():
    net = _net()
    with packed_linears(net, enabled=False) as n:
        assert n == 0 and _patched(net) == []
    with packed_linears(net, max_bytes=0) as n:
        assert n == 0 and _patched(net) == []


@needs_onednn
def test_small_products_stay_with_linear(monkeypatch):
    import fmkit.packed_linear

    monkeypatch.setattr(fmkit.packed_linear, "MIN_MACS", 1 << 21)
    lin = torch.nn.Linear(64, 64)
    seen = []
    reorder = fmkit.packed_linear._reorder
    monkeypatch.setattr(fmkit.packed_linear, "_reorder", lambda w, hint: seen.append(w) or reorder(w, hint))
    with torch.no_grad(), packed_linears(lin):
        lin(torch.randn(8, 64))  # 32K multiply-adds: F.linear, nothing reordered
        assert seen == []
        lin(torch.randn(1024, 64))  # 4M: oneDNN
        assert len(seen) == 1


def test_bad_input():
    with pytest.raises(TypeError, match="model: expected a torch.nn.Module"):
        with packed_linears(object()):
            pass
    with pytest.raises(ValueError, match="max_bytes: expected an int >= 0"):
        with packed_linears(_net(), max_bytes=-1):
            pass


@needs_onednn
def test_block_restores_on_error():
    net = _net()
    with pytest.raises(RuntimeError, match="boom"):
        with packed_linears(net):
            raise RuntimeError("boom")
    assert _patched(net) == []
